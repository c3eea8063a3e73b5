"""A real model run by Hugging Face transformers: wherever torch runs, GPU or CPU, no vLLM needed.

Batched generation with left padding. On a GPU, parking keeps the weights in
*pinned* host memory and points every parameter at its host copy, so bringing
the model back is one host-to-device copy per tensor at full PCIe bandwidth
(no file I/O, no re-initialisation); the pinned copy is made once, at the first
load. On a CPU the weights already live in host memory: parking keeps them
there, releasing frees them.

``engine_args``: ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:1``),
``dtype`` (default bfloat16), ``threads`` (CPU), ``prompt_format`` and
``chat_template`` as for the vLLM engine (see :mod:`.chat`).
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

from ..errors import EngineError
from .base import Engine, GenerationRequest, SamplingSettings
from .chat import PLAIN_STOP, encode_messages, use_chat


class TransformersEngine(Engine):
    can_park = True
    can_prefetch = True

    def __init__(self, name: str, model: str, engine_args: dict[str, Any] | None = None):
        super().__init__(name)
        self.spec = model
        self.args = dict(engine_args or {})
        self.model: Any = None
        self.tokenizer: Any = None
        self.device: str = "cpu"
        self._host: dict[str, Any] | None = None  # pinned host copies (GPU only)
        self._prefetch: threading.Thread | None = None
        self.last_load_s = 0.0

    # ------------------------------------------------------------------ life cycle

    def _pick_device(self, torch: Any) -> str:
        want = str(self.args.get("device", "auto"))
        if want == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if want.startswith("cuda") and not torch.cuda.is_available():
            raise EngineError(f"expert {self.name!r}: engine_args.device={want!r} but no CUDA device is visible")
        return want

    def load(self) -> None:
        if self._loaded:
            return
        import torch

        t0 = time.perf_counter()
        self._join_prefetch()
        if self.model is None:
            self._read_to_host(torch)
        if self._host is not None:  # on a GPU box: one host-to-device copy of the pinned weights
            for pname, p in self.model.named_parameters():
                p.data = self._host[pname].to(self.device, non_blocking=True)
            torch.cuda.synchronize()
        self.last_load_s = time.perf_counter() - t0
        super().load()

    def _read_to_host(self, torch: Any) -> None:
        """Disk to host memory (pinned on a GPU box): the part of a load a prefetch can overlap."""
        from ..models import resolve_model

        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:  # pragma: no cover - transformers comes with sentence-transformers
            raise EngineError(f"the transformers engine needs the transformers package ({exc})") from None
        self.device = self._pick_device(torch)
        if self.device == "cpu" and self.args.get("threads"):
            torch.set_num_threads(int(self.args["threads"]))
        path = resolve_model(self.spec)
        dtype = getattr(torch, str(self.args.get("dtype", "bfloat16")))
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        except Exception as exc:
            raise EngineError(f"expert {self.name!r}: cannot load {self.spec!r} with transformers ({exc})") from None
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.eval()
        if self.device.startswith("cuda"):
            self._host = {n: p.data.pin_memory() for n, p in model.named_parameters()}
            for n, p in model.named_parameters():
                p.data = self._host[n]
        self.tokenizer, self.model = tokenizer, model

    def prefetch(self) -> bool:
        """Read the weights into host memory on a background thread while another model generates."""
        if self.model is not None or self._prefetch is not None:
            return False
        import torch

        def read() -> None:
            try:
                self._read_to_host(torch)
            except EngineError as exc:
                self._prefetch_error = exc

        self._prefetch_error: EngineError | None = None
        self._prefetch = threading.Thread(target=read, name=f"prefetch-{self.name}", daemon=True)
        self._prefetch.start()
        return True

    def _join_prefetch(self) -> None:
        if self._prefetch is None:
            return
        self._prefetch.join()
        self._prefetch = None
        if self._prefetch_error is not None:
            raise self._prefetch_error

    @property
    def parked(self) -> bool:
        return self.model is not None and not self._loaded

    def host_bytes(self) -> int:
        """Bytes of a parked model (in pinned host memory on a GPU box, in RAM on a CPU one)."""
        if not self.parked:
            return 0
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def park(self) -> None:
        if not self._loaded:
            return
        if self._host is not None:
            import torch

            for n, p in self.model.named_parameters():
                p.data = self._host[n]
            torch.cuda.empty_cache()
        # on a CPU the weights stay in host memory, which is what parking means there
        self._loaded = False

    def release(self) -> None:
        self._join_prefetch()
        self.model = None
        self.tokenizer = None
        self._host = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
        super().release()

    def resident_bytes(self) -> int:
        """Bytes on the device (on a CPU box device and host are the same memory)."""
        if self.model is None or not self._loaded:
            return 0
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    # ------------------------------------------------------------------ generation

    def generate(self, requests: list[GenerationRequest], sampling: SamplingSettings) -> list[str]:
        import torch

        self.ensure_loaded()
        fmt = self.args.get("prompt_format", "auto")
        template = self.args.get("chat_template")
        ids = [encode_messages(self.tokenizer, r.messages, fmt, template) for r in requests]
        max_ctx = int(self.args.get("max_model_len", getattr(self.model.config, "max_position_embeddings", 4096)))
        max_new = max(1, min(sampling.max_tokens, max_ctx - 16))
        ids = [x[-(max_ctx - max_new):] for x in ids]  # keep the end: question and instruction sit there
        width = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=self.device)
        attention = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=self.device)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        kwargs: dict[str, Any] = {"max_new_tokens": max_new, "pad_token_id": pad}
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        else:
            kwargs.update(do_sample=False)
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)
        texts = self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        new = out[:, width:]
        eos = self.tokenizer.eos_token_id
        done = (new == pad) | (new == eos) if eos is not None else (new == pad)
        self._last_usage = [(len(x), int((~done[i]).sum())) for i, x in enumerate(ids)]
        if not use_chat(self.tokenizer, fmt) and not template:
            texts = [_cut(t, PLAIN_STOP) for t in texts]
        return texts


def _cut(text: str, stops: tuple[str, ...]) -> str:
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return text[:cut] if cut >= 0 else text
