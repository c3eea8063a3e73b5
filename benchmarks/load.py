"""Bounded load test of the server on loopback: successes, errors by status, latency, lost requests.

Starts a private local Ray cluster serving a deployment (default: the recorded
pool), then for each concurrency level sends a fixed number of /v1/solve
requests with real MMLU-Pro test questions, and in a last run kills an expert
worker (SIGKILL) in the middle. A request is *lost* if it got no HTTP answer
at all (connection error or client timeout); the goal is zero.

    python benchmarks/load.py                  # 2,000 requests at 32 and at 128 clients, plus a fault run
    python benchmarks/load.py --requests 300   # quicker
    python benchmarks/load.py --replicas 1,2 --concurrency 64 --no-fault --name load-replicas
                                               # 1 vs 2 stateless ingress replicas in one run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


async def run_load(url: str, questions: list[str], n: int, concurrency: int, timeout_s: float,
                   kill_after: float | None = None, kill_pid: int | None = None) -> dict:
    import aiohttp

    sem = asyncio.Semaphore(concurrency)
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    lost = 0
    rng = random.Random(0)
    picks = [rng.choice(questions) for _ in range(n)]
    killed = False

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s),
                                     connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def one(q: str) -> None:
            nonlocal lost
            async with sem:
                t0 = time.perf_counter()
                try:
                    async with session.post(f"{url}/v1/solve", json={"question": q, "task": "MMLU_Pro"}) as r:
                        await r.read()
                        statuses[str(r.status)] += 1
                        if r.status == 200:
                            latencies.append(time.perf_counter() - t0)
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    lost += 1

        async def killer() -> None:
            nonlocal killed
            if kill_after is None or kill_pid is None:
                return
            await asyncio.sleep(kill_after)
            os.kill(kill_pid, signal.SIGKILL)
            killed = True

        t0 = time.perf_counter()
        await asyncio.gather(killer(), *(one(q) for q in picks))
        wall = time.perf_counter() - t0

    lat = sorted(latencies)
    pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")  # noqa: E731
    return {
        "requests": n, "concurrency": concurrency, "ok": statuses.get("200", 0),
        "errors_by_status": {k: v for k, v in statuses.items() if k != "200"}, "lost": lost,
        "p50_s": pct(0.50), "p99_s": pct(0.99), "mean_s": statistics.fmean(lat) if lat else float("nan"),
        "throughput_rps": n / wall, "wall_s": wall, "worker_killed": killed,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "deployments" / "recorded-mmlu-pro.yaml"))
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", default="32,128")
    p.add_argument("--timeout", type=float, default=120.0, help="client timeout per request (s)")
    p.add_argument("--no-fault", action="store_true", help="skip the run that kills a worker")
    p.add_argument("--workers", type=int, default=2, help="expert workers (overrides the config)")
    p.add_argument("--replicas", default="1", help="ingress replica counts to compare, e.g. 1,2 (one run each)")
    p.add_argument("--name", default="load-recorded")
    args = p.parse_args()

    from skillmoe_ray.config import load_config
    from skillmoe_ray.serving.local import init_ray, start_serving, stop_serving
    from skillmoe_ray.tasks.catalogue import load_questions

    import socket
    import tempfile
    import json
    import urllib.request

    import yaml

    cfg = load_config(args.config)
    cfg.serving.workers = args.workers
    cfg.serving.cpus_per_worker = 0.5
    with tempfile.TemporaryDirectory() as tmp:
        raw = yaml.safe_load(Path(args.config).read_text())
        raw.setdefault("serving", {}).update(workers=args.workers, cpus_per_worker=0.5)
        if raw.get("pool", {}).get("recorded_dir", "").startswith("builtin:") is False:
            pass
        cfg_path = Path(tmp) / "load.yaml"
        cfg_path.write_text(yaml.safe_dump(raw))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        init_ray(cfg, num_cpus=4)
        runs = []
        try:
            from ray import serve

            for replicas in [int(x) for x in args.replicas.split(",")]:
                cfg.serving.ingress_replicas = replicas
                url = start_serving(cfg_path, cfg, "127.0.0.1", port)
                tag = f"{replicas} ingress, " if "," in args.replicas else ""
                questions = [q.text for q in load_questions("MMLU_Pro", "test")]
                asyncio.run(run_load(url, questions, 64, 16, args.timeout))  # warm: recordings loaded
                for c in [int(x) for x in args.concurrency.split(",")]:
                    print(f"load: {args.requests} requests at {c} concurrent clients, {replicas} ingress "
                          f"replica(s) ...", flush=True)
                    runs.append({"run": f"{tag}{c} clients", "ingress_replicas": replicas,
                                 **asyncio.run(run_load(url, questions, args.requests, c, args.timeout))})
                if not args.no_fault:
                    with urllib.request.urlopen(f"{url}/v1/pool", timeout=30) as r:
                        pid = json.loads(r.read())["workers"][0]["pid"]
                    c = max(int(x) for x in args.concurrency.split(","))
                    print(f"load: {args.requests} requests at {c} clients, killing worker pid {pid} after 2 s ...",
                          flush=True)
                    runs.append({"run": f"{tag}{c} clients, worker killed", "ingress_replicas": replicas,
                                 **asyncio.run(run_load(url, questions, args.requests, c, args.timeout,
                                                        kill_after=2.0, kill_pid=pid))})
                serve.delete("skillmoe")
        finally:
            stop_serving()

    rows = [[r["run"], r["requests"], r["ok"], r["errors_by_status"] or "-", r["lost"], f"{r['p50_s'] * 1000:.0f}",
             f"{r['p99_s'] * 1000:.0f}", f"{r['throughput_rps']:.1f}"] for r in runs]
    table = markdown_table(["run", "requests", "200 OK", "errors by status", "lost", "p50 ms", "p99 ms", "req/s"], rows)
    print(table)
    jpath, _ = write_results(args.name, {"config": args.config, "workers": args.workers, "runs": runs}, table)
    print(f"results: {jpath}")
    return 0 if all(r["lost"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
