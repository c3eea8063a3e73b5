"""Losing a Ray node under load: nothing hangs, the pool shrinks, then grows back.

A real multi-node Ray cluster on this machine (Ray's own ``ray.cluster_utils.Cluster``:
a head node without GPUs and two nodes of 2 logical GPUs each) serves the recorded
pool with 4 one-GPU workers spread over both GPU nodes. 32 clients send
requests; after ``--remove-after`` answers, one GPU node is killed
(``remove_node(..., allow_graceful=False)``), the one that holds workers but not the
scheduler. Every request gets an answer or a 503/504 within the client's
timeout. Then a new GPU node joins and the pool grows back to 4 workers.

    python benchmarks/node_loss.py                 # 600 requests
    python benchmarks/node_loss.py --requests 200  # quicker (the test runs this)

Figures: per-status counts, the slowest request, the time from the node's
removal to the first answer of a request sent after it, the window in which
requests failed, and the time for the pool to grow back.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import free_port, markdown_table, start_cluster, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _post(url: str, body: dict, timeout: float) -> int:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except Exception:  # noqa: BLE001 - no HTTP answer at all: lost (or timed out)
        return 0


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--remove-after", type=int, default=None, help="answers before the node is removed (default: 1/4)")
    ap.add_argument("--timeout", type=float, default=60.0, help="client timeout per request (s)")
    ap.add_argument("--name", default="node-loss")
    ap.add_argument("--no-write", action="store_true", help="print only (the test)")
    args = ap.parse_args()
    remove_after = args.remove_after or args.requests // 4

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import serve

    from skillmoe_ray.config import load_config
    from skillmoe_ray.serving.builders import build_application
    from skillmoe_ray.tasks.catalogue import load_questions

    tmp = Path(tempfile.mkdtemp(prefix="skillmoe-nodeloss-"))
    cluster, gpu_nodes = start_cluster(2, gpus_per_node=2, cpus_per_node=2)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    rows: list[tuple[float, float, int]] = []
    out: dict = {}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        cfg = load_config(ROOT / "deployments" / "recorded-mmlu-pro.yaml")
        cfg.state_dir = str(tmp / "state")
        sv = cfg.serving
        sv.workers, sv.gpus_per_worker, sv.cpus_per_worker, sv.placement_strategy = 4, 1, 0.25, "SPREAD"
        sv.job_timeout_min_s, sv.health_probe_s, sv.request_timeout_s = 10.0, 1.0, 50.0
        serve.run(build_application(cfg), name="skillmoe", route_prefix="/")
        pool = _get(f"{url}/v1/pool")
        worker_nodes = {w["node_id"] for w in pool["workers"]}
        node_ids = {n.node_id: n for n in gpu_nodes}
        sched_node = pool.get("scheduler_node")
        candidates = [n for n in node_ids if n in worker_nodes and n != sched_node]
        victim = node_ids[candidates[0]]
        print(f"workers on {len(worker_nodes)} node(s); removing {victim.node_id[:8]} after {remove_after} answers",
              flush=True)
        texts = [q.text for q in load_questions("MMLU_Pro", "test")]
        done = Counter()
        removed_at: list[float] = []
        lock = threading.Lock()
        t_start = time.perf_counter()

        def client(i: int) -> None:
            t0 = time.perf_counter() - t_start
            status = _post(f"{url}/v1/solve", {"question": texts[i % len(texts)]}, args.timeout)
            t1 = time.perf_counter() - t_start
            with lock:
                rows.append((t0, t1, status))
                done[status] += 1

        def remover() -> None:
            while sum(done.values()) < remove_after:
                time.sleep(0.01)
            cluster.remove_node(victim, allow_graceful=False)
            removed_at.append(time.perf_counter() - t_start)

        with ThreadPoolExecutor(args.clients + 1) as pool_ex:
            rm = pool_ex.submit(remover)
            list(pool_ex.map(client, range(args.requests)))
            rm.result(timeout=30)
        t_removed = removed_at[0]
        print(f"load done: {dict(Counter(r[2] for r in rows))}; node removed at {t_removed:.1f} s", flush=True)
        after = [r for r in rows if r[0] > t_removed]
        first_ok_after = min((r[1] for r in after if r[2] == 200), default=float("nan"))
        failed = [r for r in rows if r[2] != 200]
        pool_after = _get(f"{url}/v1/pool")
        # capacity returns: a new GPU node; the lost workers' bundles are placed there and they rejoin
        t_add = time.perf_counter()
        cluster.add_node(num_cpus=2, num_gpus=2, dashboard_agent_listen_port=free_port())
        grown = float("nan")
        while time.perf_counter() - t_add < 120:
            if _get(f"{url}/v1/pool")["workers_alive"] == 4:
                grown = time.perf_counter() - t_add
                break
            time.sleep(0.5)
        later = [_post(f"{url}/v1/solve", {"question": texts[-1 - i]}, args.timeout) for i in range(20)]
        out = {
            "requests": args.requests, "clients": args.clients, "removed_after_answers": remove_after,
            "statuses": {str(k): v for k, v in sorted(Counter(r[2] for r in rows).items())},
            "slowest_request_s": round(max(r[1] - r[0] for r in rows), 3),
            "failed_window_s": round(max((r[1] for r in failed), default=t_removed) -
                                     min((r[1] for r in failed), default=t_removed), 3),
            "removed_at_s": round(t_removed, 3),
            "first_answer_of_a_request_sent_after_removal_s": round(first_ok_after - t_removed, 3),
            "workers_alive_after_removal": pool_after["workers_alive"],
            "events": pool_after["events"],
            "grow_back_s": round(grown, 3),
            "later_requests": dict(Counter(later)),
        }
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()
    print("RESULT " + json.dumps({k: v for k, v in out.items() if k != "events"}), flush=True)
    if not args.no_write and out:
        table = markdown_table(
            ["requests", "clients", "statuses", "slowest request s", "failures within s",
             "first answer after removal s", "workers left", "grow back s"],
            [[out["requests"], out["clients"], out["statuses"], out["slowest_request_s"], out["failed_window_s"],
              out["first_answer_of_a_request_sent_after_removal_s"], out["workers_alive_after_removal"],
              out["grow_back_s"]]])
        print(table)
        jpath, _ = write_results(args.name, out, table)
        print(f"results: {jpath}")
    ok = out and set(out["statuses"]) <= {"200", "503", "504"} and out["slowest_request_s"] < args.timeout \
        and out["later_requests"] == {200: 20}
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
