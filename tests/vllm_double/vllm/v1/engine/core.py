"""vllm 0.33.0 v1/engine/core.py, v1/worker/gpu_worker.py: an engine core on a fake GPU.

Start-up follows Worker.init_device -> load_model -> determine_available_memory ->
KV-cache planning -> initialize_from_config -> compile_or_warm_up_model, each step taking
its memory on the shared ledger and refusing what vLLM refuses, with vLLM's messages:

1. device (gpu_worker.py:484-495): the process's first visible GPU; none visible ->
   AssertionError "DP adjusted local rank 0 is out of bounds for 0 devices.";
2. CUDA context, cuBLAS handles, persistent buffers, before the memory snapshot
   (gpu_worker.py:484-540), one per process and GPU;
3. start-up memory check (v1/worker/utils.py:716-773, request_memory): requested =
   ceil(gpu_memory_utilization x total); free memory below it -> ValueError "Free memory on
   device cuda:0 (F/T GiB) on startup is less than desired GPU memory utilization (u, R GiB).
   ..." -- free memory is the whole GPU's, so another process's allocations count;
4. weights (gpu_worker.py:594-617): with sleep mode in the CuMem pool tagged "weights",
   after the one-allocator-per-process assertion (gpu_worker.py:410-416);
5. KV budget (gpu_worker.py:641-820): kv_cache_memory_bytes if given (the free-memory
   check of 3. still applies), else requested - (weights + non-torch) - peak activation -
   CUDA-graph estimate (the last since v0.21, VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS);
6. KV check (v1/core/kv_cache_planning.py:50-85 and 1527-1561): after reserving the null
   block, nothing left -> "No available memory for the cache blocks. ..."; less than one
   max_model_len sequence -> "To serve at least one request with the model's max seq len
   (L), (X GiB KV cache is needed, which is larger than the available KV cache memory
   (Y GiB). Based on the available memory, the estimated maximum model length is M. ...";
7. KV cache allocated (all of the budget, whole blocks), CUDA graphs captured outside the
   CuMem pool (sleep_mode_offload_cudagraph defaults off, config/model.py:384), the
   activation reserve taken by warm-up.

Sleep level 1 (sleep_mode_backend.py:137-147 -> cumem.py:233-298): the CuMem allocations
tagged weights/runtime are copied to pinned host memory, the rest of the pool (KV cache,
workspace) is discarded, torch's cache is emptied (the activation reserve goes); the CUDA
context and the graph pool stay. Without enable_sleep_mode the pool is empty: only the
activation reserve goes. wake_up maps the pool back (and can run out of memory); the
activation reserve is taken again by the next step.

In an engine-core process of its own (the GPU default) a failure at start-up kills that
process: the caller gets "Engine core initialization failed. See root cause above. Failed
core proc(s): {'EngineCore': 1}" (v1/engine/utils.py:1472-1482) and the cause is only
logged; a failing utility call (sleep, wake_up) comes back as Exception("Call to wake_up
method failed: ...") (core.py:1835-1851, core_client.py:933-944); an error while stepping
kills the engine core (EngineDeadError). In-process (VLLM_ENABLE_V1_MULTIPROCESSING=0) the
original exception propagates.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any

from ...config import VllmConfig, cdiv
from ...device_allocator.cumem import CuMemAllocator
from ...exceptions import EngineDeadError
from ...utils.mem_utils import format_gib
from ..._double import hw, ledger, textgen
from ... import envs

_core_ids = itertools.count()
SLEEP_TAGS = {"weights", "kv_cache"}


def torch_oom(gpu: int) -> Any:
    def make(requested: int, free: int, total: int) -> BaseException:
        msg = (f"CUDA out of memory. Tried to allocate {requested / hw.GiB:.2f} GiB. GPU 0 has a total capacity of "
               f"{total / hw.GiB:.2f} GiB of which {max(free, 0) / hw.GiB:.2f} GiB is free. (fake GPU {gpu})")
        try:
            import torch

            return torch.OutOfMemoryError(msg)
        except (ImportError, AttributeError):
            return RuntimeError(msg)
    return make


def context_oom(requested: int, free: int, total: int) -> BaseException:
    return RuntimeError("CUDA error: out of memory")


class _Proc:
    """A process that talks to the GPUs: this one (engine core in-process) or an engine-core child."""

    def __init__(self, own_process: bool) -> None:
        self.pid = os.getpid()
        self.own_process = own_process
        self.id = f"{self.pid}/EngineCore_{next(_core_ids)}" if own_process else str(self.pid)
        # a child process has its own CuMemAllocator singleton; this process shares one
        self.allocator = CuMemAllocator(self.id) if own_process else CuMemAllocator.get_instance()
        self.contexts: set[int] = set()

    def ensure_context(self, gpu: int) -> None:
        """The process's CUDA context on ``gpu``: created by its first engine there, kept until the process ends."""
        if "context" not in ledger.held(gpu, proc=self.id):
            ledger.allocate(gpu, proc=self.id, engine="(process)", kind="context", nbytes=hw.context_bytes(),
                            on_oom=context_oom)
        self.contexts.add(gpu)


_THIS_PROCESS: dict[int, _Proc] = {}


def this_process() -> _Proc:
    pid = os.getpid()
    if pid not in _THIS_PROCESS:  # a forked child is a new process
        _THIS_PROCESS.clear()
        CuMemAllocator.instance = None
        _THIS_PROCESS[pid] = _Proc(own_process=False)
    return _THIS_PROCESS[pid]


# ------------------------------------------------------------------ requests


@dataclass
class EngineCoreRequest:
    request_id: str
    external_req_id: str
    prompt_token_ids: list[int]
    params: Any
    arrival: int = 0


@dataclass
class EngineCoreOutput:
    request_id: str
    new_token_ids: list[int]
    finish_reason: str | None = None
    stop_reason: Any = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class _Running:
    req: EngineCoreRequest
    target: list[int]
    natural_end: bool
    out: list[int] = field(default_factory=list)
    prefilled: bool = False
    blocks: int = 0


class EngineCore:
    """One model on one fake GPU: start-up, scheduling, sleep and wake, shutdown."""

    def __init__(self, vllm_config: VllmConfig, proc: _Proc, tokenizer: Any) -> None:
        self.vllm_config = vllm_config
        self.proc = proc
        self.tokenizer = tokenizer
        self.engine_id = uuid.uuid4().hex[:8]
        self.clock = hw.Clock()
        self.sleeping_tags: set[str] = set()
        self.paused = False
        self.dead = False
        self.gpu: int | None = None
        self.stats: dict[str, float] = {}
        self._waiting: list[_Running] = []
        self._running: list[_Running] = []
        self._activation_held = False
        self._startup()

    # ------------------------------------------------------------ start-up

    def _startup(self) -> None:
        vc = self.vllm_config
        mc, cc, sc = vc.model_config, vc.cache_config, vc.scheduler_config
        visible = hw.visible_gpus()
        # gpu_worker.py:491-495 (no assigned physical ids): local rank 0 must be a visible device
        assert 0 < len(visible), f"DP adjusted local rank 0 is out of bounds for {len(visible)} devices."
        gpu = self.gpu = visible[0]
        proc = self.proc
        t0 = self.clock.modelled_s
        try:
            proc.ensure_context(gpu)
            total = hw.gpu_total_bytes(gpu)
            free = ledger.gpu_free(gpu)
            # v1/worker/utils.py:716-773 (request_memory, no externally held weights)
            requested = math.ceil(total * cc.gpu_memory_utilization)
            if free < requested:
                raise ValueError(
                    f"Free memory on device cuda:0 "
                    f"({format_gib(free)}/"
                    f"{format_gib(total)} GiB) on startup "
                    f"is less than desired GPU memory utilization "
                    f"({cc.gpu_memory_utilization}, "
                    f"{format_gib(requested)} GiB). Decrease GPU memory "
                    f"utilization or reduce GPU memory used by other processes."
                )
            self.requested_memory = requested
            # load_model (gpu_worker.py:594-617) in the "weights" pool (gpu_worker.py:396-417)
            shape, dtb = mc.shape, mc.dtype_bytes
            weights = shape.weight_bytes(dtb)
            if mc.enable_cumem_allocator:
                assert proc.allocator.get_current_usage() == 0, (
                    "CuMem allocator can only be used for one instance per process.")
                proc.allocator.allocate(proc=proc.id, gpu=gpu, engine=self.engine_id, tag="weights", nbytes=weights)
            else:
                ledger.allocate(gpu, proc=proc.id, engine=self.engine_id, kind="weights", nbytes=weights,
                                on_oom=torch_oom(gpu))
            self.clock.spend(weights / hw.disk_bps())
            self.weight_bytes = weights
            # determine_available_memory (gpu_worker.py:641-820): a profile run at the batch limits
            act = self._activation_bytes()
            ledger.allocate(gpu, proc=proc.id, engine=self.engine_id, kind="activation", nbytes=act,
                            on_oom=torch_oom(gpu))
            ledger.free(gpu, proc=proc.id, engine=self.engine_id, kinds=("activation",))  # empty_cache
            graphs = 0 if mc.enforce_eager else hw.graph_bytes()
            if cc.kv_cache_memory_bytes:
                available = int(cc.kv_cache_memory_bytes)
            else:
                applied = graphs if envs.VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS else 0
                available = requested - weights - act - applied
            self.activation_bytes, self.graph_bytes = act, graphs
            # kv_cache_planning.py: one page holds block_size tokens of every layer; the null block is held back
            block = cc.block_size
            page = block * shape.kv_bytes_per_token(dtb)
            check = available - page
            _check_enough_kv_cache_memory(check, cdiv(mc.max_model_len, block) * page, mc.max_model_len, page, block)
            num_blocks = available // page
            kv = num_blocks * page
            if mc.enable_cumem_allocator:
                proc.allocator.allocate(proc=proc.id, gpu=gpu, engine=self.engine_id, tag="kv_cache", nbytes=kv)
            else:
                ledger.allocate(gpu, proc=proc.id, engine=self.engine_id, kind="kv", nbytes=kv, on_oom=torch_oom(gpu))
            self.kv_bytes, self.num_blocks, self.block_size = kv, num_blocks, block
            # compile_or_warm_up_model (gpu_worker.py:933-1124): CUDA graphs go to torch's graph pool, outside the
            # CuMem pool, unless sleep_mode_offload_cudagraph puts them in it (config/vllm.py:716-728,
            # compilation/cudagraph_pool.py:33-47) so that sleep backs them up too; then the warm-up reserve
            if graphs and mc.enable_sleep_mode and mc.sleep_mode_offload_cudagraph:
                proc.allocator.allocate(proc=proc.id, gpu=gpu, engine=self.engine_id, tag="cudagraph", nbytes=graphs)
            else:
                ledger.allocate(gpu, proc=proc.id, engine=self.engine_id, kind="graphs", nbytes=graphs,
                                on_oom=torch_oom(gpu))
            self._take_activation()
            self.clock.spend(hw.engine_start_s())
        except BaseException:
            self._free_all()
            raise
        self.stats["load_s"] = self.clock.modelled_s - t0
        self.max_num_seqs = sc.max_num_seqs
        self.max_num_batched_tokens = sc.max_num_batched_tokens

    def _activation_bytes(self) -> int:
        """Peak activation of the profile run: ``max_num_batched_tokens`` through one layer's MLP
        (gate/up/down), the residual stream, and the sampler's float32 logits for ``max_num_seqs``.
        An estimate in proportion, close to the 1.0-1.2 GiB vLLM logs for an 8B model at 8192 tokens."""
        vc = self.vllm_config
        s, t = vc.model_config.shape, vc.scheduler_config.max_num_batched_tokens
        seqs = min(vc.scheduler_config.max_num_seqs, t)
        return t * (3 * s.intermediate + 4 * s.hidden) * vc.model_config.dtype_bytes + seqs * s.vocab * 4

    def _take_activation(self) -> None:
        if not self._activation_held and self.gpu is not None:
            ledger.allocate(self.gpu, proc=self.proc.id, engine=self.engine_id, kind="activation",
                            nbytes=self.activation_bytes, on_oom=torch_oom(self.gpu))
            self._activation_held = True

    def _free_all(self) -> None:
        if self.gpu is None:
            return
        self.proc.allocator.release_engine(self.engine_id)
        ledger.free(self.gpu, proc=self.proc.id, engine=self.engine_id)
        ledger.host_free(proc=self.proc.id, engine=self.engine_id)
        self._activation_held = False
        if self.proc.own_process:  # the engine-core process exits: its context goes with it
            ledger.free(self.gpu, proc=self.proc.id)
            self.proc.contexts.clear()

    # ------------------------------------------------------------ requests

    def add_request(self, request: EngineCoreRequest) -> None:
        sp = request.params
        prompt_text = self.tokenizer.decode(request.prompt_token_ids)
        reply = textgen.respond(self.vllm_config.model_config.model, prompt_text, sp.seed)
        target = self.tokenizer.encode(reply, add_special_tokens=False)
        self._waiting.append(_Running(request, target, natural_end=True))

    def abort_requests(self, request_ids: list[str]) -> None:
        ids = set(request_ids)
        self._waiting = [r for r in self._waiting if r.req.request_id not in ids]
        self._running = [r for r in self._running if r.req.request_id not in ids]

    def has_requests(self) -> bool:
        return bool(self._waiting or self._running)

    def step(self) -> list[EngineCoreOutput]:
        if not self.has_requests():
            return []
        if self.paused or self.sleeping_tags:
            raise RuntimeError(
                "[vllm double] the engine is asleep (its scheduler paused, core.py:993-1029) and a request waits: "
                "vLLM 0.33 would wait here forever. Call wake_up() first.")
        self._take_activation()  # torch's cache refills on the first forward after a wake
        mc = self.vllm_config.model_config
        # admit waiting requests while sequences and KV blocks allow (scheduler: no preemption modelled)
        used = sum(r.blocks for r in self._running)
        budget = self.max_num_batched_tokens
        prefill_tokens = 0
        while self._waiting and len(self._running) < self.max_num_seqs:
            r = self._waiting[0]
            need = cdiv(len(r.req.prompt_token_ids) + 1, self.block_size)
            if used + need > self.num_blocks:
                break
            self._waiting.pop(0)
            r.blocks = need
            used += need
            self._running.append(r)
        outputs: list[EngineCoreOutput] = []
        for r in list(self._running):
            if not r.prefilled:
                n = len(r.req.prompt_token_ids)
                if prefill_tokens and prefill_tokens + n > budget:
                    continue  # next step (chunked prefill not modelled finer)
                prefill_tokens += n
                r.prefilled = True
            sp = r.req.params
            pos = len(r.out)
            finish, stop_reason, new = None, None, []
            if pos < len(r.target):
                new = [r.target[pos]]
            elif r.natural_end and self.tokenizer.eos_token_id is not None:
                new = [self.tokenizer.eos_token_id]
                finish = "stop"
            else:
                finish = "stop"
            r.out.extend(new)
            total = len(r.req.prompt_token_ids) + len(r.out)
            if finish is None:
                if sp.max_tokens is not None and len(r.out) >= sp.max_tokens:
                    finish = "length"
                elif total >= mc.max_model_len:
                    finish = "length"
            r.blocks = cdiv(total + 1, self.block_size)
            outputs.append(EngineCoreOutput(r.req.request_id, new, finish, stop_reason))
            if finish is not None:
                self._running.remove(r)
        # one decode step reads every weight once; prefill is compute-bound
        step_s = self.weight_bytes / hw.hbm_bps() + prefill_tokens * 2 * mc.shape.params / 4e14
        self.clock.spend(step_s)
        return outputs

    # ------------------------------------------------------------ sleep mode

    def sleep(self, level: int = 1, mode: str = "abort") -> None:
        """core.py:993-1029 -> executor abstract.py:400-410 -> Worker.sleep -> CuMemBackend.suspend."""
        if level not in (0, 1):
            raise NotImplementedError(f"[vllm double] sleep level {level} is not modelled")
        if mode == "abort":
            self._waiting, self._running = [], []
        self.paused = True
        if level < 1:
            return
        if "weights" in self.sleeping_tags:
            return  # "Executor is already sleeping."
        offload = ("weights", "runtime", "cudagraph")  # sleep_mode_backend.py:137-147, level 1
        self.proc.allocator.sleep(offload_tags=offload, engine=self.engine_id)
        # cumem.py:297-298: gc.collect(); torch.accelerator.empty_cache() -- torch's cached activations go
        if self.gpu is not None:
            ledger.free(self.gpu, proc=self.proc.id, engine=self.engine_id, kinds=("activation",))
        self._activation_held = False
        self.sleeping_tags |= SLEEP_TAGS
        if self.vllm_config.model_config.enable_cumem_allocator:
            self.clock.spend(self.weight_bytes / hw.h2d_bps())

    def wake_up(self, tags: list[str] | None = None) -> bool:
        """core.py:1031-1054 -> executor abstract.py:412-436 -> CuMemAllocator.wake_up."""
        if tags is not None and "scheduling" in tags:
            tags = [t for t in tags if t != "scheduling"]
        if tags is None or tags:
            if not self.sleeping_tags:
                pass  # "Executor is not sleeping."
            elif tags and any(t not in self.sleeping_tags for t in tags):
                pass  # "Tag %s is not in sleeping tags %s"
            else:
                woke_weights = tags is None or "weights" in tags
                self.proc.allocator.wake_up(tags, engine=self.engine_id)
                if tags:
                    self.sleeping_tags -= set(tags)
                else:
                    self.sleeping_tags.clear()
                if woke_weights and self.vllm_config.model_config.enable_cumem_allocator:
                    self.clock.spend(self.weight_bytes / hw.h2d_bps())
        fully_awake = not self.sleeping_tags
        if fully_awake:
            self.paused = False
        return fully_awake

    def is_sleeping(self) -> bool:
        return self.paused or bool(self.sleeping_tags)

    def shutdown(self) -> None:
        self._waiting, self._running = [], []
        self._free_all()
        self.gpu = None

    # ------------------------------------------------------------ the double's view

    def memory(self) -> dict[str, Any]:
        """What this engine holds now: bytes on its GPU by kind, pinned host bytes, modelled seconds."""
        held = ledger.held(self.gpu, proc=self.proc.id) if self.gpu is not None else {}
        mine = {}
        for e in (ledger.gpu_entries(self.gpu) if self.gpu is not None else []):
            if e["proc"] == self.proc.id and (e["engine"].split("#")[0] == self.engine_id or e["kind"] == "context"):
                mine[e["kind"]] = mine.get(e["kind"], 0) + int(e["bytes"])
        host = sum(int(e["bytes"]) for e in ledger.host_entries()
                   if e["proc"] == self.proc.id and e["engine"].split("#")[0] == self.engine_id)
        return {"gpu": self.gpu, "proc": self.proc.id, "device": mine, "process_device": held, "host_pinned": host,
                "modelled_s": self.clock.modelled_s}


def _check_enough_kv_cache_memory(available_memory: int, needed_memory: int, max_model_len: int, page: int,
                                  block: int) -> None:
    """kv_cache_planning.py:50-85 (estimate_max_model_len's binary search in closed form)."""
    if available_memory <= 0:
        raise ValueError(
            "No available memory for the cache blocks. "
            "Try increasing `gpu_memory_utilization` when initializing the engine "
            "(this flag also controls CPU memory reservation on the CPU "
            "backend, despite its name). "
            "See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ "
            "for more details."
        )
    if needed_memory > available_memory:
        estimated_max_len = min(max_model_len, (available_memory // page) * block)
        estimated_msg = ""
        if estimated_max_len > 0:
            estimated_msg = (
                "Based on the available memory, "
                f"the estimated maximum model length is {estimated_max_len}. "
            )
        raise ValueError(
            f"To serve at least one request with the model's max seq len "
            f"({max_model_len}), ({format_gib(needed_memory)} GiB KV "
            f"cache is needed, which is larger than the available KV cache "
            f"memory ({format_gib(available_memory)} GiB). {estimated_msg}"
            f"Try increasing `gpu_memory_utilization` (which also controls "
            f"CPU memory on the CPU backend) or decreasing `max_model_len` "
            f"when initializing the engine. "
            f"See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ "
            f"for more details."
        )


# ------------------------------------------------------------------ clients (core_client.py)


class InprocClient:
    """core_client.py: the engine core in this process; its exceptions propagate unchanged."""

    def __init__(self, vllm_config: VllmConfig, tokenizer: Any) -> None:
        self.engine_core = EngineCore(vllm_config, this_process(), tokenizer)

    def get_output(self) -> list[EngineCoreOutput]:
        return self.engine_core.step()

    def add_request(self, request: EngineCoreRequest) -> None:
        self.engine_core.add_request(request)

    def abort_requests(self, request_ids: list[str]) -> None:
        if request_ids:
            self.engine_core.abort_requests(request_ids)

    def has_requests(self) -> bool:
        return self.engine_core.has_requests()

    def dp_engines_running(self) -> bool:
        return False

    def get_supported_tasks(self) -> tuple[str, ...]:
        return ("generate",)

    def sleep(self, level: int = 1, mode: str = "abort") -> None:
        if mode == "wait":
            raise ValueError("'wait' pause mode is not supported in inproc-engine mode")
        self.engine_core.sleep(level, mode)

    def wake_up(self, tags: list[str] | None = None) -> bool:
        return self.engine_core.wake_up(tags)

    def is_sleeping(self) -> bool:
        return self.engine_core.is_sleeping()

    def shutdown(self) -> None:
        self.engine_core.shutdown()


class SyncMPClient(InprocClient):
    """The engine core in a process of its own (simulated: same Python process, its own process id on
    the ledger, its own CuMem allocator, its own CUDA context). Failures reach the caller as they do
    through vLLM's ZMQ boundary."""

    def __init__(self, vllm_config: VllmConfig, tokenizer: Any) -> None:
        try:
            self.engine_core = EngineCore(vllm_config, _Proc(own_process=True), tokenizer)
        except Exception:
            # core.py:1584: the child logs the cause and exits 1; the client sees only that it died
            sys.stderr.write("(EngineCore pid=%d) ERROR EngineCore failed to start.\n%s" % (
                os.getpid(), traceback.format_exc()))
            raise RuntimeError("Engine core initialization failed. See root cause above. "
                               "Failed core proc(s): {'EngineCore': 1}") from None
        self.resources_dead = False

    def _utility(self, name: str, fn: Any, *args: Any) -> Any:
        if self.resources_dead:
            raise EngineDeadError()
        try:
            return fn(*args)
        except Exception as e:  # core.py:1846-1851 then core_client.py:940-941
            sys.stderr.write(f"(EngineCore pid={os.getpid()}) ERROR Invocation of {name} method failed\n"
                             f"{traceback.format_exc()}")
            raise Exception(f"Call to {name} method failed: {str(e)}") from None

    def get_output(self) -> list[EngineCoreOutput]:
        if self.resources_dead:
            raise EngineDeadError()
        try:
            return self.engine_core.step()
        except Exception:
            sys.stderr.write(f"(EngineCore pid={os.getpid()}) ERROR EngineCore encountered a fatal error.\n"
                             f"{traceback.format_exc()}")
            self.resources_dead = True
            self.engine_core.shutdown()  # the process is gone, and its memory with it
            raise EngineDeadError() from None

    def sleep(self, level: int = 1, mode: str = "abort") -> None:
        self._utility("sleep", self.engine_core.sleep, level, mode)

    def wake_up(self, tags: list[str] | None = None) -> bool:
        return self._utility("wake_up", self.engine_core.wake_up, tags)

    def is_sleeping(self) -> bool:
        return self._utility("is_sleeping", self.engine_core.is_sleeping)

    def shutdown(self) -> None:
        self.engine_core.shutdown()


def make_client(multiprocess_mode: bool, vllm_config: VllmConfig, tokenizer: Any) -> InprocClient:
    """core_client.py EngineCoreClient.make_client (asyncio_mode False)."""
    return (SyncMPClient if multiprocess_mode else InprocClient)(vllm_config, tokenizer)
