"""Online serving of the paper-scale pool: throughput and latency under an open-loop Poisson stream.

The pool is ``deployments/paper-scale-sim.yaml`` (the paper's 16 models of
7-9B as simulated experts, k=3 plus the LLM aggregator), fitted to the paper's
Table 6 exactly as ``benchmarks/latency.py`` fits it (its ``setup`` and
``calibrate``), served over HTTP through the project's real Serve path
(:func:`skillmoe_ray.serving.local.start_serving`: ingress, scheduler, worker
and aggregator actors) on a private local Ray cluster: 4 workers, one logical
GPU and one model each, a simulated GPU server's host memory for parked models
(``SIM_HOST_GB_PER_WORKER``). The experts sleep the cost model's time scaled by
``--scale`` (wall s = simulated s x scale); every figure below is in simulated
seconds (wall / scale).

1. **Idle latency.** ``--idle`` questions (default 9; the last of the seeded
   order, the same whatever ``--questions`` is) one at a time on the idle
   pool: the first warms the server up (the ingress's skill model, the first cold
   loads) and is reported on its own; "idle latency" is the median of the others.
2. **Open-loop streams.** For each rate of ``--rates`` (percent of the batch
   capacity ``--capacity``, default 1 / the planner's predicted seconds per
   question at W=4 in ``benchmarks/results/latency-sim.json``, else 0.15 q/s),
   ``--questions`` GPQA test questions (default 300; one seeded random order, the
   same for every rate, repeated past the 198 of the set) are POSTed to ``/v1/solve`` at Poisson arrival times
   (seeded exponential gaps, the same unit draws for every rate, scaled so that
   the last arrives at (n-1) / rate: a Poisson stream conditioned on offering
   exactly its nominal rate, so that the draws' noise does not move the offered
   rate), with no cap on concurrency: a request is sent at its time
   whether or not earlier ones are answered. All answers are awaited before the
   next rate.

Per rate: offered rate (nominal; the realized (n-1) / first-to-last arrival
is in the JSON); throughput three ways -- *window*: answers returned a second
between the arrival of the first question past the warm-up (the first 20% of
the stream, while the empty pool fills) and the last arrival, against the
questions offered a second over the same window; *steady*: (answers - 1) /
(last answer - first answer); *span*: answers / (last answer - first arrival);
how latency moved (median of the last third of the window's arrivals over the
middle third's); latency p50/p90/p99, the mean queue / experts / aggregate
times the responses report, errors (non-200) and lost requests (no HTTP
answer). A rate is **kept up with** when every request is answered with 200
and the window's answers are at least 95% of its arrivals: a pool that keeps
up answers as fast as it is asked once it is loaded, whatever its latency,
and one that does not falls behind by a growing queue. The steady and span
estimators mix the first question's idle-pool latency with the last one's
loaded latency, so on a few hundred questions they read several per cent low
for a pool whose latency is flat (on 150 questions at 80 and 100%, latency by
25-question window was flat while "steady" read 94.9% and 91%). The **highest
sustained rate** is the largest rate tested that is kept up with; p90 / idle
latency says how much waiting the load adds.

The aggregator (LlamaR1 on GPQA) runs in its own actor (``serving.aggregator_gpus``
is 0: no logical GPU and no CPU of its own) and holds its model from start.

Scale: at 0.01 a simulated second is 10 ms of wall time. The server's
batching window (``serving.batch_window_s``, 50 ms: the ingress's skill
tagging batch; the scheduler had a micro-batch window too when these figures
were taken) is a timer, not work: on the wall clock it would read as 5
simulated seconds a question, so it is set to the config's value in *simulated* seconds (0.05 x scale on the wall
clock; ``--wall-window`` keeps 50 ms of wall). Measured with ``--quick
--idle 5`` (median idle latency of the same 4 questions): 53.5 s at scale
0.005, 50.7 s at 0.01, 49.6 s at 0.02; latency = L0 + c / scale fits L0 = 48 s
and c = 28 ms of wall a question for the serving path's own cost (HTTP, skill
tagging, Ray calls), so at 0.01 about 3 s (5%) of the idle latency, and
negligible beside the hundreds of seconds a loaded pool takes. With the
windows on the wall clock (``--wall-window``) idle latency was 60.6 s at 0.01. The default run (300
questions a rate) takes about 5 minutes of wall time on 2 cores. Past the capacity
the queue, and so latency, grows with the stream's length: compare rates at
the same ``--questions``.

    python benchmarks/online.py --quick                      # smoke test: 12 questions at 50% and 100%
    python benchmarks/online.py                              # 300 questions at 20, 40, 60, 80, 100%
    python benchmarks/online.py --name online-sim-before     # the same, saved under another name
    python benchmarks/online.py --rates 10,50 --questions 100 --scale 0.02

Writes benchmarks/results/<--name>.{json,md} (default online-sim; ``--quick``: online-sim-quick).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, free_port, markdown_table, sim_state_dir, write_results  # noqa: E402
from latency import SIM_HOST_GB_PER_WORKER, calibrate, setup  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TASK = "GPQA"
#: kept up with: steady throughput at least this share of the realized offered rate
KEEP_UP = 0.95
#: arrivals before the pool is loaded: left out of the steady window
WARMUP_SHARE = 0.2
DEFAULT_CAPACITY = 0.15


def planner_capacity(workers: int = 4) -> float | None:
    """Questions per simulated second the planner predicts for the batch at ``workers`` (latency-sim.json)."""
    try:
        rows = json.loads((RESULTS / "latency-sim.json").read_text())["rows"]
        per_q = next(r["predicted"] for r in rows if r["strategy"] == "planner" and r["workers"] == workers)
        return 1.0 / per_q
    except (OSError, ValueError, KeyError, StopIteration, ZeroDivisionError):
        return None


def sim_deployment(config: str, fitted, scale: float, workers: int, cpus_per_worker: float, path: Path,
                   wall_window: bool = False, overrides: dict | None = None) -> dict:
    """The deployment file served: ``config`` with real-clock scaled experts fitted to Table 6, one worker per
    logical GPU holding one model, and a simulated GPU server's host memory; written to ``path``. The batching
    window is the config's in simulated seconds (x ``scale`` in wall seconds) unless ``wall_window``."""
    import yaml

    from skillmoe_ray.config import ServingConfig

    raw = yaml.safe_load(Path(config).read_text())
    window = raw.get("serving", {}).get("batch_window_s", ServingConfig().batch_window_s)
    for e in raw["pool"]["experts"]:
        c = fitted.pool[e["name"]].constants
        e["engine_args"] = {**e.get("engine_args", {}), "clock": "real", "time_scale": scale,
                            "load_fixed_s": c.load_fixed_s, "step_fixed_s": c.step_fixed_s, "release_s": 0.0,
                            "tensor_parallel_size": 1}
    raw.setdefault("serving", {}).update(workers=workers, gpus_per_worker=1, models_per_worker=1,
                                         host_budget_gb=SIM_HOST_GB_PER_WORKER, cpus_per_worker=cpus_per_worker,
                                         tasks=[TASK], batch_window_s=window if wall_window else window * scale)
    if "max_wait_s" in ServingConfig.model_fields:  # continuous scheduling's aging bound, in simulated seconds
        raw["serving"]["max_wait_s"] = raw["serving"].get("max_wait_s", ServingConfig().max_wait_s) * scale
    for key, value in (overrides or {}).items():  # --serving key=value (seconds in simulated seconds)
        raw["serving"][key] = value * scale if key.endswith("_s") and key != "batch_window_s" else value
    raw["state_dir"] = sim_state_dir()  # absolute: the profiles latency.py builds and uses
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return raw


def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); nan for no values."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


async def send_stream(url: str, questions: Sequence[str], arrivals: Sequence[float], timeout_s: float) -> list[dict]:
    """POST each question at its arrival time (wall seconds from the start), open loop; one record each."""
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s),
                                     connector=aiohttp.TCPConnector(limit=0)) as session:
        t0 = time.perf_counter()

        async def one(i: int, text: str, at: float) -> dict:
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - t0)))
            rec: dict[str, Any] = {"i": i, "sent": time.perf_counter() - t0}
            try:
                async with session.post(f"{url}/v1/solve", json={"question": text, "task": TASK}) as r:
                    raw = await r.read()
                    rec["status"] = r.status
                    if r.status == 200:
                        body = json.loads(raw)
                        rec.update(timings=body.get("timings", {}), aggregator=body.get("aggregator"),
                                   experts=body.get("experts"))
                    else:
                        rec["error"] = raw.decode("utf-8", "replace")[:300]
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                rec.update(status=None, error=f"{type(exc).__name__}: {exc}"[:300])
            rec["done"] = time.perf_counter() - t0
            return rec

        return list(await asyncio.gather(*(one(i, q, at) for i, (q, at) in enumerate(zip(questions, arrivals)))))


def summarize(recs: list[dict], scale: float) -> dict:
    """One stream's figures, in simulated seconds."""
    ok = [r for r in recs if r["status"] == 200]
    lat = [(r["done"] - r["sent"]) / scale for r in ok]
    sent = sorted(r["sent"] for r in recs)
    done_ok = sorted(r["done"] for r in ok)
    n = len(recs)
    out: dict[str, Any] = {
        "questions": n, "ok": len(ok),
        "errors": dict(sorted(_count(str(r["status"]) for r in recs if r["status"] not in (200, None)).items())),
        "lost": sum(1 for r in recs if r["status"] is None),
        "offered_realized": (n - 1) / ((sent[-1] - sent[0]) / scale) if n > 1 and sent[-1] > sent[0] else None,
        "throughput_span": len(ok) / ((done_ok[-1] - sent[0]) / scale) if ok else 0.0,
        "throughput_steady": ((len(ok) - 1) / ((done_ok[-1] - done_ok[0]) / scale)
                              if len(ok) > 1 and done_ok[-1] > done_ok[0] else None),
        **steady_window(recs, scale),
        "p50_s": percentile(lat, 50), "p90_s": percentile(lat, 90), "p99_s": percentile(lat, 99),
        "mean_s": statistics.fmean(lat) if lat else float("nan"), "max_s": max(lat) if lat else float("nan"),
        "wall_s": (max(r["done"] for r in recs) - sent[0]) if recs else 0.0,
        "fallbacks": sum(1 for r in ok if str(r.get("aggregator") or "").startswith("vote")),
    }
    for key in ("queue", "experts", "aggregate"):
        vals = [r["timings"][key] / scale for r in ok if key in r.get("timings", {})]
        out[f"mean_{key}_s"] = statistics.fmean(vals) if vals else float("nan")
    sizes = [r["timings"]["batch_size"] for r in ok if "batch_size" in r.get("timings", {})]
    out["mean_batch_size"] = statistics.fmean(sizes) if sizes else float("nan")
    return out


def steady_window(recs: list[dict], scale: float, warmup: float = WARMUP_SHARE) -> dict[str, Any]:
    """Answers against arrivals once the pool is loaded: from the arrival of the first question past the
    warm-up share to the last arrival, how many answers came back a second, how many questions were
    offered a second, and how latency moved from the middle of the stream to its end.

    A pool that keeps up answers as fast as it is asked once it is loaded, whatever its latency; one that
    does not falls behind by a growing queue, so its answers in the window lag the arrivals and its
    latency grows. "n-1 over first to last answer" (steady) mixes the first question's idle-pool latency
    with the last one's loaded latency, which on a stream of a few hundred questions reads several per
    cent low even when latency is flat."""
    sent = sorted(r["sent"] for r in recs)
    n = len(sent)
    i0 = int(n * warmup)
    if n - i0 < 3 or sent[-1] <= sent[i0]:
        return {"throughput_window": None, "offered_window": None, "latency_growth": None}
    t0, t1 = sent[i0], sent[-1]
    answered = sum(1 for r in recs if r["status"] == 200 and t0 <= r["done"] <= t1)
    by_arrival = sorted((r["sent"], (r["done"] - r["sent"]) / scale) for r in recs if r["status"] == 200)
    rest = [lat for at, lat in by_arrival if at >= t0]
    third = len(rest) // 3
    growth = (statistics.median(rest[-third:]) / statistics.median(rest[third:2 * third])
              if third >= 2 else None)
    return {"throughput_window": answered / ((t1 - t0) / scale),
            "offered_window": (n - 1 - i0) / ((t1 - t0) / scale), "latency_growth": growth}


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


def pool_counts(url: str) -> dict[str, Any]:
    """Cold loads, wakes and batches so far, from GET /v1/pool."""
    with urllib.request.urlopen(f"{url}/v1/pool", timeout=60) as r:
        pool = json.loads(r.read())
    ws = [w for w in pool["workers"] if "loads" in w]
    return {"loads": sum(w["loads"] for w in ws), "wakes": sum(w["wakes"] for w in ws),
            "batches": pool.get("batches"), "served": pool.get("served"), "aggregators": pool.get("aggregators"),
            "events": pool.get("events") or []}


def fmt(x: Any, nd: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and x != x) else f"{x:.{nd}f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: 12 questions at 50 and 100%%, 3 idle questions")
    ap.add_argument("--config", default=str(ROOT / "deployments" / "paper-scale-sim.yaml"))
    ap.add_argument("--scale", type=float, default=0.01, help="wall seconds per simulated second (default 0.01)")
    ap.add_argument("--rates", default=None, help="percent of the capacity (default 20,40,60,80,100; quick 50,100)")
    ap.add_argument("--capacity", type=float, default=None, help="batch capacity in questions per simulated second "
                    "(default: 1 / the planner's predicted s/q at W=4 in results/latency-sim.json, else 0.15)")
    ap.add_argument("--questions", type=int, default=None, help="questions per rate (default 300; quick 12)")
    ap.add_argument("--idle", type=int, default=None, help="questions one at a time on the idle pool, the first a "
                    "warm-up (default 9; quick 3)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--cpus-per-worker", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=None, help="client timeout per request, wall seconds "
                    "(default: the server's serving.request_timeout_s + 60)")
    ap.add_argument("--serving", action="append", default=[], metavar="KEY=VALUE",
                    help="a serving setting of the deployment, e.g. join_limit=8 (a *_s one in simulated seconds)")
    ap.add_argument("--wall-window", action="store_true", help="keep the config's batching window "
                    "(serving.batch_window_s, 50 ms) in wall seconds; by default it is simulated seconds, "
                    "x --scale on the wall clock, as the server on a real pool would wait")
    ap.add_argument("--name", default=None, help="result file name (default online-sim; quick online-sim-quick)")
    args = ap.parse_args(argv)
    name = args.name or ("online-sim-quick" if args.quick else "online-sim")
    rates_pct = [float(r) for r in (args.rates or ("50,100" if args.quick else "20,40,60,80,100")).split(",")]
    n_q = args.questions or (12 if args.quick else 300)
    n_idle = args.idle if args.idle is not None else (3 if args.quick else 9)
    capacity = args.capacity or planner_capacity(args.workers if args.workers in (1, 2, 4, 8) else 4) \
        or DEFAULT_CAPACITY
    scale = args.scale
    started = time.perf_counter()

    # the pool fitted as latency.py fits it (profiles built on first use, shared with it)
    s = setup(args.config, sim_state_dir())
    fitted, constants, _ = calibrate(s)
    print("calibration:", {k: round(v, 4) for k, v in constants.items()}, flush=True)
    rng = random.Random(args.seed)
    order = list(s["questions"])
    rng.shuffle(order)
    stream_q = [order[i % len(order)].text for i in range(n_q)]
    # the idle questions are the same whatever --questions is: the last of the seeded order
    idle_q = [order[(len(order) - n_idle + i) % len(order)].text for i in range(n_idle)]
    # Poisson arrivals at rate 1, the first at once, conditioned on the n-th arriving at n-1 (uniform order
    # statistics): the stream offers exactly its nominal rate; each rate divides the same times by it
    gaps = [rng.expovariate(1.0) for _ in range(n_q - 1)]
    unit_arrivals = [0.0] + [sum(gaps[:i + 1]) for i in range(n_q - 1)]
    if n_q > 1:
        unit_arrivals = [a * (n_q - 1) / unit_arrivals[-1] for a in unit_arrivals]

    from skillmoe_ray.config import load_config
    from skillmoe_ray.serving.local import init_ray, start_serving, stop_serving

    import yaml

    rows: list[dict] = []
    idle: dict[str, Any] = {}
    pool_info: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "paper-scale-sim-online.yaml"
        sim_deployment(args.config, fitted, scale, args.workers, args.cpus_per_worker, cfg_path,
                             args.wall_window, {k: yaml.safe_load(v) for k, v in
                                                (kv.split("=", 1) for kv in args.serving)})
        cfg = load_config(cfg_path)
        sv = cfg.serving
        timeout_s = args.timeout or sv.request_timeout_s + 60
        gpus = int(sv.workers * sv.gpus_per_worker + sv.aggregator_gpus + 0.999)
        cpus = int(sv.workers * sv.cpus_per_worker + 0.999) + 2
        init_ray(cfg, num_cpus=cpus, num_gpus=gpus)
        try:
            port = free_port()
            t_start = time.perf_counter()
            url = start_serving(cfg_path, cfg, "127.0.0.1", port)
            print(f"serving {cfg.name} at {url} ({time.perf_counter() - t_start:.0f} s to start; {sv.workers} "
                  f"workers, {gpus} logical GPUs, {cpus} CPUs; scale {scale})", flush=True)
            pool_info = pool_counts(url)

            # 1. idle latency: one question at a time
            idle_recs = []
            for i, q in enumerate(idle_q):
                (rec,) = asyncio.run(send_stream(url, [q], [0.0], timeout_s))
                idle_recs.append(rec)
                lat = (rec["done"] - rec["sent"]) / scale
                print(f"  idle {i + 1}/{n_idle}: status {rec['status']}, {lat:.1f} s "
                      f"(timings {({k: round(v / scale, 1) for k, v in rec.get('timings', {}).items() if k != 'batch_size'})})",
                      flush=True)
            lats = [(r["done"] - r["sent"]) / scale for r in idle_recs if r["status"] == 200]
            idle = {"first_s": lats[0] if idle_recs and idle_recs[0]["status"] == 200 else None,
                    "median_s": statistics.median(lats[1:]) if len(lats) > 1 else None,
                    "latencies_s": lats, "records": idle_recs,
                    "ok": len(lats), "questions": len(idle_recs)}
            idle_ref = idle["median_s"] or idle["first_s"]

            # 2. open-loop Poisson streams
            for pct in rates_pct:
                rate = capacity * pct / 100  # questions per simulated second
                arrivals = [a / rate * scale for a in unit_arrivals]  # wall seconds
                before = pool_counts(url)
                t_rate = time.time()
                print(f"rate {pct:g}% = {rate:.4f} q/s: {n_q} questions over ~{arrivals[-1] / scale:.0f} s "
                      f"({arrivals[-1]:.1f} s wall) ...", flush=True)
                recs = asyncio.run(send_stream(url, stream_q, arrivals, timeout_s))
                after = pool_counts(url)
                row = {"rate_pct": pct, "offered": rate, **summarize(recs, scale),
                       "loads": after["loads"] - before["loads"], "wakes": after["wakes"] - before["wakes"],
                       "batches": (after["batches"] or 0) - (before["batches"] or 0)}
                row["keeps_up"] = (row["ok"] == n_q and row["throughput_window"] is not None
                                   and row["throughput_window"] >= KEEP_UP * row["offered_window"])
                row["p90_over_idle"] = row["p90_s"] / idle_ref if idle_ref else None
                # what the scheduler did meanwhile (brings, drains, losses; the pool view keeps the latest 200)
                row["events"] = [e for e in after["events"] if e.get("at", 0) >= t_rate]
                row["records"] = recs
                rows.append(row)
                print(f"  achieved {fmt(row['throughput_window'], 4)} q/s in the steady window (offered "
                      f"{fmt(row['offered_window'], 4)}; latency x{fmt(row['latency_growth'], 2)} from the middle to "
                      f"the end), {fmt(row['throughput_steady'], 4)} steady, {fmt(row['throughput_span'], 4)} "
                      f"span (offered {fmt(row['offered_realized'], 4)} realized); p50 {fmt(row['p50_s'])} s, p90 "
                      f"{fmt(row['p90_s'])} s; {row['ok']} ok, errors {row['errors'] or 0}, lost {row['lost']}; "
                      f"{row['batches']} batches, {row['loads']} loads, {row['wakes']} wakes; "
                      f"{row['wall_s']:.1f} s wall", flush=True)
            pool_info = pool_counts(url)
        finally:
            stop_serving()

    kept = [r["rate_pct"] for r in rows if r["keeps_up"]]
    best = max(kept) if kept else None
    best_rate = capacity * best / 100 if best is not None else None
    table_rows = [[f"{r['rate_pct']:g}%", fmt(r["offered"], 4),
                   f"{fmt(r.get('throughput_window'), 4)} / {fmt(r.get('offered_window'), 4)}",
                   fmt(r.get("latency_growth"), 2),
                   fmt(r["throughput_steady"], 4), fmt(r["throughput_span"], 4), "yes" if r["keeps_up"] else "no",
                   fmt(r["p50_s"]), fmt(r["p90_s"]), fmt(r["p99_s"]), fmt(r["mean_queue_s"]),
                   fmt(r["mean_experts_s"]), fmt(r["mean_aggregate_s"]), fmt(r["mean_batch_size"]),
                   fmt(r["p90_over_idle"], 2), f"{sum(r['errors'].values())}/{r['lost']}"] for r in rows]
    table = markdown_table(["rate (% cap.)", "offered q/s", "answered / offered q/s (window)",
                            "latency end / middle", "throughput q/s (steady)",
                            "throughput q/s (span)", "keeps up", "p50 s", "p90 s", "p99 s", "queue s", "experts s",
                            "aggregate s", "batch size", "p90 / idle", "errors/lost"], table_rows)
    agg = next(iter((pool_info.get("aggregators") or {}).values()), {})
    summary = (f"Idle latency: {fmt(idle.get('median_s'))} s (median of {max(0, idle.get('ok', 0) - 1)} after a "
               f"warm-up question of {fmt(idle.get('first_s'))} s). Highest sustained rate (answers at least "
               f"{KEEP_UP:.0%} of the arrivals in the steady window, every request answered): "
               + (f"{best:g}% of capacity = {best_rate:.4f} q/s" if best is not None else "none of the rates tested")
               + f". Highest throughput reached: {fmt(max((r['throughput_steady'] or 0) for r in rows), 4)} q/s "
               f"(steady), {fmt(max(r['throughput_span'] for r in rows), 4)} q/s (span)." if rows else "")
    wall = time.perf_counter() - started
    setting = (f"GPQA test questions ({n_q} a rate, one seeded order; Poisson arrivals, seed {args.seed}) sent "
               f"open-loop to /v1/solve of the paper-scale pool (`{os.path.relpath(args.config, ROOT)}`, "
               f"{len(s['rt'].experts)} simulated experts fitted to Table 6: load_fixed_s "
               f"{constants['load_fixed_s']:.2f}, step_fixed_s {1000 * constants['step_fixed_s']:.2f} ms) served "
               f"through Ray Serve: {args.workers} workers x 1 logical GPU x 1 model, host memory "
               f"{SIM_HOST_GB_PER_WORKER:g} GB a worker for parked models, k={s['cfg'].routing.k}, LLM aggregator "
               f"{agg.get('model', s['aggregator'])} in its own actor (no GPU of its own; model resident from start). "
               f"Capacity {capacity:.4f} q/s (1 / the planner's predicted s/q at W={args.workers}, latency-sim). "
               f"Time scale {scale}; all seconds simulated (wall / scale); the server's batching window "
               f"{sv.batch_window_s / scale:g} s simulated ({1000 * sv.batch_window_s:g} ms wall). Window: from the arrival of question {int(n_q * WARMUP_SHARE) + 1} "
               f"(the first {WARMUP_SHARE:.0%} fill the pool) to the last arrival, answers returned a second / "
               f"questions offered a second; latency end / middle: median latency of the last third of those "
               f"arrivals over the middle third's (1: flat). Throughput (steady) = (answers - 1) / "
               f"(last - first answer); (span) = answers / (last answer - first arrival). Queue / experts / "
               f"aggregate: means of the responses' timings. Total wall time {wall / 60:.1f} min.")
    md = f"{setting}\n\n{table}\n\n{summary}\n"
    print("\n" + md)
    payload = {
        "setting": setting, "summary": summary, "scale": scale, "capacity": capacity, "rates_pct": rates_pct,
        "questions": n_q, "idle_questions": n_idle, "seed": args.seed, "quick": args.quick,
        "workers": args.workers, "cpus_per_worker": args.cpus_per_worker, "host_budget_gb": SIM_HOST_GB_PER_WORKER,
        "fitted": constants, "aggregator": s["aggregator"], "aggregator_actor": agg,
        "serving": {k: getattr(sv, k) for k in ("batch_window_s", "max_batch_size", "max_concurrent_batches",
                                                "join_limit", "max_wait_s", "max_pending", "request_timeout_s",
                                                "aggregator_timeout_s", "aggregator_gpus", "prefetch")
                    if hasattr(sv, k)},
        "batch_window_wall_s": sv.batch_window_s, "client_timeout_s": timeout_s, "keep_up_share": KEEP_UP,
        "highest_sustained_pct": best, "highest_sustained_rate": best_rate,
        "idle": idle, "rows": rows, "pool": {k: v for k, v in pool_info.items() if k != "aggregators"},
        "wall_s": wall,
    }
    jpath, mpath = write_results(name, payload, md)
    print(f"wrote {jpath}, {mpath} ({wall / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
