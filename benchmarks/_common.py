"""Shared helpers for the benchmark scripts: machine description, result files, tables."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import socket
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(nodes: int, gpus_per_node: int, cpus_per_node: int):
    """A private multi-node Ray cluster on this machine (Ray's own ``ray.cluster_utils.Cluster``), connected.

    The head has no GPUs, like a cluster whose head runs only the control plane;
    each of ``nodes`` worker nodes is its own raylet with ``gpus_per_node``
    logical GPUs. Each node's agent gets a port of its own (the default one is
    shared by every node of a machine). Call ``cluster.shutdown()`` after
    ``ray.shutdown()``.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0, "include_dashboard": False,
                                                            "dashboard_agent_listen_port": free_port()})
    try:
        added = [cluster.add_node(num_cpus=cpus_per_node, num_gpus=gpus_per_node,
                                  dashboard_agent_listen_port=free_port()) for _ in range(nodes)]
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    except BaseException:
        cluster.shutdown()
        raise
    return cluster, added


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
