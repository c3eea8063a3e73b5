"""Shared helpers for the benchmark scripts: machine description, result files, tables."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "host_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
        info["memory_gib"] = round(int(mem) / 2**20, 1)
    except OSError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        info["gpus"] = [l.strip() for l in out.stdout.splitlines() if l.strip()] if out.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired):
        info["gpus"] = []
    return info


def sim_state_dir() -> str:
    """Profiles of the simulated paper-scale pool, shared by the latency and residency benchmarks."""
    from skillmoe_ray.skills.embeddings import default_cache_dir

    return str(default_cache_dir() / "latency-state")


def command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, payload: dict[str, Any], table_md: str) -> tuple[Path, Path]:
    """benchmarks/results/<name>.json and .md, each naming the command, the machine and the date."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"command": command(), "machine": machine(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    payload = {**meta, **payload}
    jpath, mpath = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    jpath.write_text(json.dumps(payload, indent=2))
    mpath.write_text(f"# {name}\n\nCommand: `{meta['command']}`  \nDate: {meta['date']}  \n"
                     f"Machine: {json.dumps(meta['machine'])}\n\n{table_md}\n")
    return jpath, mpath
