"""vllm 0.33.0 device_allocator/cumem.py: the CuMem allocator behind sleep mode, on the fake GPUs.

What carries over from vLLM:

* one allocator per process: ``CuMemAllocator.get_instance()`` is a singleton
  (cumem.py:88-131, "Why it needs to be a singleton?") and the worker refuses a second
  model's weights while the allocator holds anything -- asleep allocations included, since
  ``get_current_usage`` sums every handle (cumem.py:454-459, gpu_worker.py:396-417:
  "CuMem allocator can only be used for one instance per process."). An engine core in its
  own process (VLLM_ENABLE_V1_MULTIPROCESSING=1, the GPU default) has its own allocator;
* ``sleep(offload_tags)`` unmaps every allocation; those with an offload tag are first
  copied to pinned host memory, the others are discarded (cumem.py:233-298);
* ``wake_up(tags)`` maps them again -- physical memory must be free then, or the driver's
  out-of-memory comes back as ``RuntimeError("CUDA Error: out of memory at ...")`` (the
  C extension's "CUDA Error: %s at %s:%d", cumem_allocator.abi3.so) -- and copies the backups
  back, freeing them (cumem.py:331-365). Tags outside DEFERRABLE_TAGS are always woken.
"""

from __future__ import annotations

import dataclasses
import itertools

from .._double import ledger

# device_allocator/__init__.py:17: selective wake may defer only these
DEFERRABLE_TAGS: tuple[str, ...] = ("weights", "kv_cache")
_KIND = {"weights": "weights", "kv_cache": "kv", "runtime": "weights", "workspace": "activation",
         "cudagraph": "graphs"}
_ids = itertools.count()


def cuda_oom(requested: int, free: int, total: int) -> RuntimeError:
    # as users see it (vllm-project/vllm#47654, vLLM 0.11: "CUDA Error: out of memory at
    # /workspace/csrc/cumem_allocator.cpp:163"); the line in 0.33's build is not known
    return RuntimeError("CUDA Error: out of memory at /workspace/csrc/cumem_allocator.cpp:163")


def pinned_oom(requested: int, free: int) -> RuntimeError:
    # torch.empty(..., pin_memory=True) when cudaHostAlloc fails (cumem.py:268-275)
    return RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported at some "
                        "other API call, so the stacktrace below might be incorrect.")


@dataclasses.dataclass
class AllocationData:
    """device_allocator/__init__.py:21-26, on the ledger: (gpu, size, ptr, owner) is the handle."""

    handle: tuple[int, int, int, str]
    tag: str
    engine: str
    cpu_backup: bool = False
    is_asleep: bool = False


class CuMemAllocator:
    instance: "CuMemAllocator | None" = None
    default_tag: str = "default"

    @staticmethod
    def get_instance() -> "CuMemAllocator":
        if CuMemAllocator.instance is None:
            CuMemAllocator.instance = CuMemAllocator()
        return CuMemAllocator.instance

    def __init__(self, proc: str | None = None) -> None:
        self.pointer_to_data: dict[int, AllocationData] = {}
        self.proc = proc

    # ------------------------------------------------------------ double: allocation through the pool

    def allocate(self, *, proc: str, gpu: int, engine: str, tag: str, nbytes: int) -> None:
        """A tensor created inside ``use_memory_pool(tag)``: mapped now, or the driver's out-of-memory."""
        ledger.allocate(gpu, proc=proc, engine=f"{engine}#{tag}", kind=_KIND[tag], nbytes=nbytes,
                        on_oom=cuda_oom, cumem=True)
        ptr = next(_ids)
        self.pointer_to_data[ptr] = AllocationData((gpu, int(nbytes), ptr, proc), tag, engine)

    def release_engine(self, engine: str) -> None:
        """The engine's tensors are garbage: their handles are released, backups dropped (cumem.py:204-231)."""
        for ptr, data in list(self.pointer_to_data.items()):
            if data.engine != engine:
                continue
            gpu, _, _, proc = data.handle
            if not data.is_asleep:
                ledger.free(gpu, proc=proc, engine=f"{engine}#{data.tag}")
            if data.cpu_backup:
                ledger.host_free(proc=proc, engine=f"{engine}#{data.tag}")
            del self.pointer_to_data[ptr]

    # ------------------------------------------------------------ vLLM's interface

    def get_current_usage(self) -> int:
        return sum(d.handle[1] for d in self.pointer_to_data.values())

    def sleep(self, offload_tags: tuple[str, ...] | str | None = None, *, engine: str | None = None) -> None:
        if offload_tags is None:
            offload_tags = (CuMemAllocator.default_tag,)
        elif isinstance(offload_tags, str):
            offload_tags = (offload_tags,)
        for data in self.pointer_to_data.values():
            if data.is_asleep or (engine is not None and data.engine != engine):
                continue
            gpu, size, _, proc = data.handle
            if data.tag in offload_tags:
                ledger.host_allocate(proc=proc, engine=f"{data.engine}#{data.tag}", nbytes=size, on_oom=pinned_oom)
                data.cpu_backup = True
            ledger.free(gpu, proc=proc, engine=f"{data.engine}#{data.tag}")
            data.is_asleep = True

    def wake_up(self, tags: list[str] | None = None, *, engine: str | None = None) -> None:
        for data in self.pointer_to_data.values():
            if not data.is_asleep or (engine is not None and data.engine != engine):
                continue
            if tags is None or data.tag in tags or data.tag not in DEFERRABLE_TAGS:
                gpu, size, _, proc = data.handle
                ledger.allocate(gpu, proc=proc, engine=f"{data.engine}#{data.tag}", kind=_KIND[data.tag],
                                nbytes=size, on_oom=cuda_oom, cumem=True)
                data.is_asleep = False
                if data.cpu_backup:
                    ledger.host_free(proc=proc, engine=f"{data.engine}#{data.tag}")
                    data.cpu_backup = False

    def asleep_bytes(self, engine: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.pointer_to_data.values():
            if d.engine == engine and d.is_asleep:
                out[d.tag] = out.get(d.tag, 0) + d.handle[1]
        return out


__all__ = ["CuMemAllocator", "DEFERRABLE_TAGS"]
