"""A real model run by Hugging Face transformers: wherever torch runs, GPU or CPU, no vLLM needed.

Batched generation with left padding. On a GPU, parking keeps the weights in
*pinned* host memory (:class:`HostWeights`): every parameter is a view into one
pinned buffer per model, allocated once when the weights are read. Bringing the
model back is one device allocation and one asynchronous host-to-device copy of
that whole buffer on a stream of the model's own, at full PCIe bandwidth (no
file I/O, no re-initialisation, no per-tensor copies); the parameters then
become views into the device buffer. Parking points them back at the host
views and drops the device buffer, and by default gives the memory back to
the driver (``free_on_park``): a worker may hold vLLM engines beside this one,
and vLLM checks the driver's free memory when it starts, which a block kept in
torch's cache would take. A worker of transformers engines only can set
``free_on_park: false``: torch's caching allocator then keeps the block, and
the next load in this process (this model or another of no greater size)
reuses it. On an H200 an 8B load took 331 ms (1.14x the pinned copy floor)
with the memory given back and 293 ms (1.01x) with the block kept: a 16 GB
cudaFree followed at once by a cudaMalloc slows the next copy by ~35 ms
(``benchmarks/gpu_proof.py``). On a CPU the weights already live in host
memory: parking keeps them there, releasing frees them.

``engine_args``: ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:1``),
``dtype`` (default bfloat16), ``threads`` (CPU), ``prompt_format`` and
``chat_template`` as for the vLLM engine (see :mod:`.chat`), ``host_copy``
(park into a separate host copy; default: on a GPU only; on a CPU it exercises
the GPU path's code, not pinned), ``free_on_park`` (default true, see above).
"""

from __future__ import annotations

import gc
import queue
import threading
import time
from typing import Any, Iterator

from ..errors import EngineError
from .base import Engine, GenerationRequest, SamplingSettings
from .chat import PLAIN_STOP, Deltas, cut_at_stop, encode_messages, use_chat


#: byte alignment of each tensor in the flat buffers (views of any dtype, aligned vector loads)
ALIGN = 256


class HostWeights:
    """A model's parameters packed in one host buffer (pinned when ``pin``), made once per model.

    ``to_device`` allocates one device buffer, copies the host buffer into it in
    one asynchronous copy on a stream of its own, and points every parameter at
    its view there; ``to_host`` points them back at the host views and drops the
    device buffer. Shared (tied) parameters are one entry, as
    ``named_parameters`` lists them once. The views' offsets are computed once.
    """

    def __init__(self, model: Any, pin: bool):
        import torch

        self.params: list[tuple[Any, int]] = []  # (parameter, byte offset)
        offset = 0
        for _, p in model.named_parameters():
            offset = -(-offset // ALIGN) * ALIGN
            self.params.append((p, offset))
            offset += p.numel() * p.element_size()
        self.nbytes = offset
        self.pinned = pin
        self.buffer = torch.empty(offset, dtype=torch.uint8, pin_memory=pin)
        self.device_buffer: Any = None
        self._stream: Any = None
        self._host_views = [self._view(self.buffer, p, off) for p, off in self.params]
        for (p, _), view in zip(self.params, self._host_views):
            view.copy_(p.data)  # from wherever the weights were read or built (CPU or GPU)
            p.data = view

    @staticmethod
    def _view(buffer: Any, p: Any, offset: int) -> Any:
        return buffer[offset:offset + p.numel() * p.element_size()].view(p.dtype).view(p.shape)

    def to_device(self, device: str) -> None:
        import torch

        dev = torch.empty(self.nbytes, dtype=torch.uint8, device=device)
        if device.startswith("cuda"):
            if self._stream is None:
                self._stream = torch.cuda.Stream(device=device)
            # the buffer may reuse memory whose last users were queued on the current stream
            self._stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(self._stream):
                dev.copy_(self.buffer, non_blocking=self.pinned)
            self._stream.synchronize()
        else:
            dev.copy_(self.buffer)
        for p, off in self.params:
            p.data = self._view(dev, p, off)
        self.device_buffer = dev

    def to_host(self) -> None:
        for (p, _), view in zip(self.params, self._host_views):
            p.data = view
        self.device_buffer = None


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
        self._weights: HostWeights | None = None  # the host copy parking keeps (GPU only, unless host_copy)
        self._buffers_on_device = False
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
        if self._weights is not None:  # on a GPU box: one host-to-device copy of the pinned weights
            self._weights.to_device(self.device)
            if not self._buffers_on_device:  # non-parameter buffers (rotary tables): small, moved once, kept
                for module in self.model.modules():
                    for key, b in module._buffers.items():
                        if b is not None:
                            module._buffers[key] = b.to(self.device)
                self._buffers_on_device = True
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
        self._take(model, tokenizer)

    def _take(self, model: Any, tokenizer: Any) -> None:
        model.eval()
        if bool(self.args.get("host_copy", self.device.startswith("cuda"))):
            self._weights = HostWeights(model, pin=self.device.startswith("cuda"))
            self._buffers_on_device = self.device == "cpu"
        self.tokenizer, self.model = tokenizer, model

    def adopt(self, model: Any, tokenizer: Any = None) -> None:
        """Take a model built in this process (a benchmark's random weights) as if it had been read, and load it.

        Its weights go to host memory as a read's would (pinned on a GPU box: the
        same packing, parking and loading code as a model read from disk).
        """
        import torch

        self.device = self._pick_device(torch)
        self._take(model, tokenizer)
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()  # the built copy's device memory
        self.load()

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
        if self._weights is not None:
            self._weights.to_host()
            if self.device.startswith("cuda") and self.args.get("free_on_park", True):
                import torch

                torch.cuda.empty_cache()
        # on a CPU the weights stay in host memory, which is what parking means there
        self._loaded = False

    def release(self) -> None:
        self._join_prefetch()
        self.model = None
        self.tokenizer = None
        pinned = self._weights is not None and self._weights.pinned
        self._weights = None
        self._buffers_on_device = False
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
                if pinned and hasattr(torch._C, "_host_emptyCache"):  # pinned blocks stay cached until asked
                    torch._C._host_emptyCache()
        except ImportError:
            pass
        super().release()

    def resident_bytes(self) -> int:
        """Bytes on the device (on a CPU box device and host are the same memory)."""
        if self.model is None or not self._loaded:
            return 0
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    # ------------------------------------------------------------------ generation

    def _inputs(self, requests: list[GenerationRequest], sampling: SamplingSettings) -> tuple[list, int, dict]:
        """Prompt ids per request (cut to the context), the padded width, and ``model.generate``'s arguments."""
        import torch

        fmt = self.args.get("prompt_format", "auto")
        ids = [encode_messages(self.tokenizer, r.messages, fmt, self.args.get("chat_template")) for r in requests]
        max_ctx = int(self.args.get("max_model_len", getattr(self.model.config, "max_position_embeddings", 4096)))
        max_new = max(1, min(sampling.max_tokens, max_ctx - 16))
        ids = [x[-(max_ctx - max_new):] for x in ids]  # keep the end: question and instruction sit there
        width = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        kwargs: dict[str, Any] = {
            "input_ids": torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=self.device),
            "attention_mask": torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=self.device),
            "max_new_tokens": max_new, "pad_token_id": pad}
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        else:
            kwargs.update(do_sample=False)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        return ids, width, kwargs

    def _stops(self) -> tuple[str, ...]:
        """A plain transcript is cut where the model starts the next turn; a chat template needs no stop string."""
        chat = use_chat(self.tokenizer, self.args.get("prompt_format", "auto")) or self.args.get("chat_template")
        return () if chat else PLAIN_STOP

    def _completion_tokens(self, new: Any) -> list[int]:
        """Tokens generated per row (padding and end-of-sequence tokens not counted)."""
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        done = (new == pad) | (new == eos) if eos is not None else (new == pad)
        return [int(n) for n in (~done).sum(dim=1)]

    def generate(self, requests: list[GenerationRequest], sampling: SamplingSettings) -> list[str]:
        import torch

        self.ensure_loaded()
        ids, width, kwargs = self._inputs(requests, sampling)
        with torch.inference_mode():
            out = self.model.generate(**kwargs)
        new = out[:, width:]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        self._last_usage = list(zip(map(len, ids), self._completion_tokens(new)))
        return [cut_at_stop(t, self._stops())[0] for t in texts]

    def stream(self, request: GenerationRequest, sampling: SamplingSettings) -> Iterator[str]:
        """``model.generate`` on a thread of its own, its tokens handed over one by one as they come.

        The whole response so far is decoded anew at each token (as ``generate`` decodes it at the end)
        rather than piece by piece as ``TextIteratorStreamer`` does, so the deltas join to exactly the
        text ``generate`` returns, whatever the tokenizer. Generation stops at a plain transcript's stop
        string, or when the caller closes the iterator.
        """
        import torch
        from transformers.generation.streamers import BaseStreamer
        from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList

        self.ensure_loaded()
        self._last_usage = []
        ids, width, kwargs = self._inputs([request], sampling)
        tokens: queue.Queue = queue.Queue()
        halt = threading.Event()
        outcome: dict[str, Any] = {}

        class Feed(BaseStreamer):
            prompt_seen = False

            def put(self, value: Any) -> None:
                if not self.prompt_seen:  # generate hands over the prompt first
                    self.prompt_seen = True
                    return
                tokens.put(value.reshape(-1).tolist())

            def end(self) -> None:
                tokens.put(None)

        class Halt(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
                return torch.full((input_ids.shape[0],), halt.is_set(), dtype=torch.bool, device=input_ids.device)

        def run() -> None:
            try:
                with torch.inference_mode():
                    outcome["out"] = self.model.generate(**kwargs, streamer=Feed(),
                                                         stopping_criteria=StoppingCriteriaList([Halt()]))
            except BaseException as exc:  # noqa: BLE001 - raised again on the caller's thread
                outcome["error"] = exc
                tokens.put(None)

        thread = threading.Thread(target=run, name=f"stream-{self.name}", daemon=True)
        thread.start()
        deltas, new = Deltas(self._stops()), []
        try:
            while (got := tokens.get()) is not None:
                new += got
                piece = deltas.update(self.tokenizer.decode(new, skip_special_tokens=True))
                if piece:
                    yield piece
                if deltas.stopped:
                    break
            halt.set()
            thread.join()
            if "error" in outcome:
                raise EngineError(f"expert {self.name!r}: generation failed ({outcome['error']})")
            piece = deltas.update(self.tokenizer.decode(new, skip_special_tokens=True), final=True)
            if piece:
                yield piece
        finally:
            halt.set()  # closed early: the thread stops at its next token
            thread.join()
        self._last_usage = [(len(ids[0]), self._completion_tokens(torch.tensor([new]))[0] if new else 0)]
