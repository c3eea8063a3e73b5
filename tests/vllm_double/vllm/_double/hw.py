"""The fake node: its GPUs, its host memory and the speeds the double's times are made of.

Everything is read from the environment at the moment it is needed (a Ray actor inherits
the driver's settings, and a test may change them between engines):

==============================  ==========================================================
``SKILLMOE_FAKE_GPU_DIR``       the ledger directory (one JSON file per physical GPU, one
                                for the node's pinned host memory); shared by every process
                                of the node. Default: ``$TMPDIR/skillmoe-fake-gpus-<uid>``.
``SKILLMOE_FAKE_GPUS``          physical GPUs on the node (default 8). A process whose
                                ``CUDA_VISIBLE_DEVICES`` is unset sees all of them.
``SKILLMOE_FAKE_GPU_GB``        memory of each GPU in GiB (default 80);
                                ``SKILLMOE_FAKE_GPU_GB_<id>`` overrides one GPU.
``SKILLMOE_FAKE_GPU_NAME``      device name (default ``NVIDIA H100 80GB HBM3``; vLLM picks
                                batch defaults by it, engine/arg_utils.py:2940-3007).
``SKILLMOE_FAKE_HOST_GB``       pinned host memory the node can give, GiB (default: no
                                limit, but every pinned byte is still counted).
``SKILLMOE_FAKE_CONTEXT_MB``    what a process holds on a GPU before any model: CUDA
                                context, cuBLAS handles and workspace, the model runner's
                                persistent buffers (default 512).
``SKILLMOE_FAKE_GRAPH_MB``      the CUDA-graph pool of an engine that captures graphs
                                (``enforce_eager`` off; default 512).
``SKILLMOE_FAKE_TIME_SCALE``    real seconds slept per modelled second (default 0: nothing
                                sleeps, the modelled times are still kept).
``SKILLMOE_FAKE_ENGINE_START_S`` engine start before weights arrive (default 20: profiling,
                                torch.compile from its cache, graph capture of a 7-9B model).
``SKILLMOE_FAKE_DISK_GBPS``     weights from disk, GB/s (default 2).
``SKILLMOE_FAKE_H2D_GBPS``      pinned host <-> device copies, GB/s (default 25).
``SKILLMOE_FAKE_HBM_GBPS``      device memory bandwidth, GB/s (default 3350; a decode step
                                reads every weight once).
``SKILLMOE_FAKE_HUB_DIR``       a folder of ``<org>--<name>`` model folders that hub ids
                                resolve to, as a local hub mirror would.
==============================  ==========================================================
"""

from __future__ import annotations

import os
import tempfile
import time

GiB = 1 << 30
MiB = 1 << 20


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw not in (None, "") else default


def ledger_dir() -> str:
    d = os.environ.get("SKILLMOE_FAKE_GPU_DIR") or os.path.join(
        tempfile.gettempdir(), f"skillmoe-fake-gpus-{os.getuid()}")
    os.makedirs(d, exist_ok=True)
    return d


def num_gpus() -> int:
    return int(_float("SKILLMOE_FAKE_GPUS", 8))


def gpu_total_bytes(gpu: int) -> int:
    return int(_float(f"SKILLMOE_FAKE_GPU_GB_{gpu}", _float("SKILLMOE_FAKE_GPU_GB", 80.0)) * GiB)


def gpu_name() -> str:
    return os.environ.get("SKILLMOE_FAKE_GPU_NAME") or "NVIDIA H100 80GB HBM3"


def host_limit_bytes() -> int | None:
    raw = os.environ.get("SKILLMOE_FAKE_HOST_GB")
    return int(float(raw) * GiB) if raw not in (None, "") else None


def context_bytes() -> int:
    return int(_float("SKILLMOE_FAKE_CONTEXT_MB", 512) * MiB)


def graph_bytes() -> int:
    return int(_float("SKILLMOE_FAKE_GRAPH_MB", 512) * MiB)


def visible_gpus() -> list[int]:
    """Physical ids this process sees, in CUDA's order.

    CUDA_VISIBLE_DEVICES unset: every GPU of the node (what Ray >= 2.48 leaves for an actor
    with num_gpus=0, ray/_private/utils.py set_visible_accelerator_ids). Set to "": none.
    CUDA stops at the first id it cannot use, as the driver does.
    """
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    n = num_gpus()
    if raw is None:
        return list(range(n))
    out: list[int] = []
    for part in raw.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) >= n or int(part) in out:
            break
        out.append(int(part))
    return out


# ------------------------------------------------------------------ time


class Clock:
    """Modelled seconds, slept for real at SKILLMOE_FAKE_TIME_SCALE and added up either way."""

    def __init__(self) -> None:
        self.modelled_s = 0.0

    def spend(self, seconds: float) -> float:
        seconds = max(0.0, float(seconds))
        self.modelled_s += seconds
        scale = _float("SKILLMOE_FAKE_TIME_SCALE", 0.0)
        if scale > 0 and seconds > 0:
            time.sleep(seconds * scale)
        return seconds


def engine_start_s() -> float:
    return _float("SKILLMOE_FAKE_ENGINE_START_S", 20.0)


def disk_bps() -> float:
    return _float("SKILLMOE_FAKE_DISK_GBPS", 2.0) * 1e9


def h2d_bps() -> float:
    return _float("SKILLMOE_FAKE_H2D_GBPS", 25.0) * 1e9


def hbm_bps() -> float:
    return _float("SKILLMOE_FAKE_HBM_GBPS", 3350.0) * 1e9
