"""A test double of vLLM 0.33.0 for the API surface skillmoe-ray uses, with vLLM's rules on a fake GPU.

Not vLLM. Put ``tests/vllm_double`` first on ``sys.path`` (``PYTHONPATH`` for Ray workers)
and ``import vllm`` gets this package instead of the installed one. What it models, and
where in vLLM 0.33.0's source each rule comes from, is in tests/vllm_double/README.md; the
fake GPUs are files shared by every process of the node (``vllm._double.ledger``).
"""

# vllm 0.33.0 vllm/__init__.py: the version first, the public names resolved lazily
from .version import __version__, __version_tuple__  # isort:skip

import typing

#: marks this package as the double (tests assert they run on it, never on a real vLLM)
IS_SKILLMOE_DOUBLE = True

MODULE_ATTRS = {
    "EngineArgs": ".engine.arg_utils:EngineArgs",
    "LLMEngine": ".v1.engine.llm_engine:LLMEngine",
    "LLM": ".entrypoints.llm:LLM",
    "PromptType": ".inputs:PromptType",
    "TextPrompt": ".inputs:TextPrompt",
    "TokensPrompt": ".inputs:TokensPrompt",
    "SamplingParams": ".sampling_params:SamplingParams",
    "CompletionOutput": ".outputs:CompletionOutput",
    "RequestOutput": ".outputs:RequestOutput",
}


def __getattr__(name: str) -> typing.Any:
    from importlib import import_module

    if name in MODULE_ATTRS:
        module_name, attr_name = MODULE_ATTRS[name].split(":")
        module = import_module(module_name, __package__)
        return getattr(module, attr_name)
    raise AttributeError(f"module {__package__} has no attribute {name}")


__all__ = ["__version__", "__version_tuple__", *MODULE_ATTRS]
