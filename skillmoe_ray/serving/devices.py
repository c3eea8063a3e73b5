"""A worker's memory budgets: its GPU's bytes for models, and host bytes for parked ones.

A worker learns its device's size from the GPU it was given (NVML, which
creates no CUDA context in the worker's process; torch where NVML is missing),
or from ``serving.gpu_memory_gb`` where no GPU is visible (logical GPUs in tests
and benchmarks). It keeps ``gpu_memory_fraction`` of its share of that for
models (the rest is fragmentation headroom and the worker's own process). Its
host budget for parked (pinned) weights is ``serving.host_budget_gb``, else
what the node can give: 80% of the memory available when it starts, shared
among the workers placed on that node.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Any

from ..memory import GB

log = logging.getLogger(__name__)

#: of the host memory available when a worker starts, the share its node's workers may pin for parked models
HOST_SHARE = 0.8


@dataclass(frozen=True)
class Budget:
    """One worker's budgets, as the residency policy and the planner count them."""

    #: models on the device at once, at most (where no device size is known, the budget itself)
    capacity: int
    #: GB of the device for models; None: no device size known (CPU pools), count models instead
    device_gb: float | None
    #: GB of host memory for parked models; None: unlimited
    host_budget_gb: float | None
    #: bytes of one of its GPUs (vLLM's gpu_memory_utilization is a share of this)
    gpu_bytes: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def visible_gpu_bytes() -> int | None:
    """Memory of the first GPU this process sees, or None when it sees none."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not visible.strip():
        return None
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        try:
            first = (visible or "0").split(",")[0].strip()
            handle = (pynvml.nvmlDeviceGetHandleByUUID(first) if first.startswith(("GPU-", "MIG-"))
                      else pynvml.nvmlDeviceGetHandleByIndex(int(first)))
            return int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no NVML, no driver, or no such device
        pass
    try:
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.get_device_properties(0).total_memory)
    except Exception:  # noqa: BLE001
        pass
    return None


def available_host_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - no psutil: /proc, else nothing known
        try:
            with open("/proc/meminfo", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
    return 0


def gpu_bytes(gpus: float, gpu_memory_gb: float | None = None) -> int | None:
    """Bytes of one GPU of a holder of ``gpus`` GPUs: the setting, else the GPU it sees; None without GPUs."""
    if gpus <= 0:
        return None
    return int(gpu_memory_gb * GB) if gpu_memory_gb else visible_gpu_bytes()


def models_gb(gpus: float, per_gpu: int | None, gpu_memory_fraction: float) -> float | None:
    """GB its models may fill of a share of ``gpus`` GPUs of ``per_gpu`` bytes (a fraction: that much of one)."""
    return per_gpu * gpus * gpu_memory_fraction / GB if per_gpu else None


def worker_budget(gpus: float, gpu_memory_gb: float | None = None, gpu_memory_fraction: float = 0.92,
                  models_per_worker: int | None = None, host_budget_gb: float | None = None,
                  workers_on_node: int = 1) -> Budget:
    """A worker's budgets from its settings and what its node has."""
    per_gpu = gpu_bytes(gpus, gpu_memory_gb)
    device_gb = models_gb(gpus, per_gpu, gpu_memory_fraction)
    if host_budget_gb is None:
        host = available_host_bytes()
        host_budget_gb = HOST_SHARE * host / max(1, workers_on_node) / GB if host else None
    capacity = models_per_worker or (1 if device_gb is None else 1_000)
    return Budget(capacity, device_gb, host_budget_gb, per_gpu)
