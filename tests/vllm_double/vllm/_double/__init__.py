"""The double's own machinery (not part of vLLM's API): fake GPUs, model folders, tokenizer, replies."""
