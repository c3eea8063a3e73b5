"""What every process of the node holds on each physical GPU, and in pinned host memory.

One JSON file per physical GPU (``gpu-<id>.json``) and one for the node's pinned host
memory (``host.json``) in :func:`hw.ledger_dir`, changed only under one ``fcntl`` lock, so
every process of the node (Ray actors, engine cores, the test itself) sees one truth, as
``cudaMemGetInfo`` gives every process the same free memory of a device.

An entry is one live allocation: the OS pid that owns it (entries of dead pids are dropped
on every access: a killed process frees its GPU memory, and vLLM's engine-core process
dies with its parent), the (simulated) process that made it -- an engine core running in
its own process has its own id --, the engine, the kind (``context``, ``weights``, ``kv``,
``activation``, ``graphs``) and the bytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from typing import Any, Callable, Iterator

from . import hw

KINDS = ("context", "weights", "kv", "activation", "graphs")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child waits as a zombie until reaped: its memory is gone already
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


@contextlib.contextmanager
def _locked() -> Iterator[str]:
    d = hw.ledger_dir()
    with open(os.path.join(d, "ledger.lock"), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield d
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read(path: str) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as fh:
            entries = json.load(fh).get("allocations", [])
    except (OSError, ValueError):
        entries = []
    return [e for e in entries if pid_alive(int(e["pid"]))]


def _peak(path: str) -> int:
    try:
        with open(path, encoding="utf-8") as fh:
            return int(json.load(fh).get("peak", 0))
    except (OSError, ValueError):
        return 0


def _write(path: str, entries: list[dict[str, Any]], **extra: Any) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({**extra, "allocations": entries}, fh, indent=1)
    os.replace(tmp, path)


def _gpu_path(d: str, gpu: int) -> str:
    return os.path.join(d, f"gpu-{gpu}.json")


def _host_path(d: str) -> str:
    return os.path.join(d, "host.json")


# ------------------------------------------------------------------ device


def gpu_used(gpu: int) -> int:
    with _locked() as d:
        return sum(int(e["bytes"]) for e in _read(_gpu_path(d, gpu)))


def gpu_free(gpu: int) -> int:
    """What ``cudaMemGetInfo`` would say is free on this GPU now."""
    return hw.gpu_total_bytes(gpu) - gpu_used(gpu)


def gpu_entries(gpu: int) -> list[dict[str, Any]]:
    with _locked() as d:
        return _read(_gpu_path(d, gpu))


def allocate(gpu: int, *, proc: str, engine: str, kind: str, nbytes: int,
             on_oom: Callable[[int, int, int], BaseException], cumem: bool = False) -> None:
    """Take ``nbytes`` on ``gpu`` or raise ``on_oom(requested, free, total)`` (nothing taken).

    The driver gives physical memory while there is some, to anyone: this is the only check a
    GPU makes. vLLM's own budget checks are made by the engine before it allocates.
    """
    assert kind in KINDS, kind
    nbytes = int(nbytes)
    if nbytes <= 0:
        return
    total = hw.gpu_total_bytes(gpu)
    with _locked() as d:
        path = _gpu_path(d, gpu)
        entries = _read(path)
        free = total - sum(int(e["bytes"]) for e in entries)
        if nbytes > free:
            raise on_oom(nbytes, free, total)
        entries.append({"pid": os.getpid(), "proc": proc, "engine": engine, "kind": kind, "bytes": nbytes,
                        "cumem": cumem})
        _write(path, entries, gpu=gpu, total=total)


def free(gpu: int, *, proc: str, engine: str | None = None, kinds: tuple[str, ...] | None = None) -> int:
    """Drop this process's entries (of one engine, of some kinds); returns the bytes freed."""
    with _locked() as d:
        path = _gpu_path(d, gpu)
        entries = _read(path)
        keep, gone = [], 0
        for e in entries:
            if (e["proc"] == proc and (engine is None or e["engine"] == engine)
                    and (kinds is None or e["kind"] in kinds)):
                gone += int(e["bytes"])
            else:
                keep.append(e)
        _write(path, keep, gpu=gpu, total=hw.gpu_total_bytes(gpu))
        return gone


def held(gpu: int, *, proc: str, engine: str | None = None) -> dict[str, int]:
    """Bytes by kind that this process (engine) holds on ``gpu``."""
    out: dict[str, int] = {}
    for e in gpu_entries(gpu):
        if e["proc"] == proc and (engine is None or e["engine"] == engine):
            out[e["kind"]] = out.get(e["kind"], 0) + int(e["bytes"])
    return out


# ------------------------------------------------------------------ pinned host memory


def host_used() -> int:
    with _locked() as d:
        return sum(int(e["bytes"]) for e in _read(_host_path(d)))


def host_entries() -> list[dict[str, Any]]:
    with _locked() as d:
        return _read(_host_path(d))


def host_allocate(*, proc: str, engine: str, nbytes: int, on_oom: Callable[[int, int], BaseException]) -> None:
    nbytes = int(nbytes)
    if nbytes <= 0:
        return
    limit = hw.host_limit_bytes()
    with _locked() as d:
        path = _host_path(d)
        entries = _read(path)
        used = sum(int(e["bytes"]) for e in entries)
        if limit is not None and used + nbytes > limit:
            raise on_oom(nbytes, limit - used)
        entries.append({"pid": os.getpid(), "proc": proc, "engine": engine, "kind": "pinned", "bytes": nbytes})
        _write(path, entries, peak=max(_peak(path), used + nbytes))


def host_free(*, proc: str, engine: str | None = None) -> int:
    with _locked() as d:
        path = _host_path(d)
        keep, gone = [], 0
        for e in _read(path):
            if e["proc"] == proc and (engine is None or e["engine"] == engine):
                gone += int(e["bytes"])
            else:
                keep.append(e)
        _write(path, keep, peak=_peak(path))
        return gone


def host_peak() -> int:
    """The most pinned host memory held at once so far."""
    with _locked() as d:
        return _peak(_host_path(d))


def reset() -> None:
    """Forget everything (tests start from an empty node)."""
    with _locked() as d:
        for name in os.listdir(d):
            if name.endswith(".json"):
                os.unlink(os.path.join(d, name))
