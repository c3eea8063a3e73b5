"""What each residency choice buys: host tier, host budget, prefetch, device budget.

A stream of GPQA micro-batches (the paper router's real choices on the
16-model simulated pool of ``deployments/paper-scale-sim.yaml``) runs on one
:class:`ExpertWorker` -- the worker code a served deployment runs -- with a
real clock scaled down, so a prefetch on its own thread truly overlaps
generation. Loads follow the cost model: a cold start (``--cold-start-s`` plus
the weights from disk at 2 GB/s), or a wake from host memory (0.2 s plus the
weights over PCIe at 25 GB/s).

    python benchmarks/residency.py

Writes benchmarks/results/residency-sim.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, sim_state_dir, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

SETTINGS = [  # name, device models, host budget GB (None: no limit), prefetch
    ("no host tier (every swap is a cold start)", 1, 0.0, False),
    ("host tier, 32 GB (two parked models)", 1, 32.0, False),
    ("host tier, no limit", 1, None, False),
    ("host tier 32 GB + prefetch", 1, 32.0, True),
    ("host tier, no limit + prefetch", 1, None, True),
    ("2 models on the device + host tier, no limit + prefetch", 2, None, True),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=33)
    ap.add_argument("--cold-start-s", type=float, default=30.0, help="engine start-up of a cold load")
    ap.add_argument("--scale", type=float, default=0.002)
    args = ap.parse_args(argv)

    from skillmoe_ray.config import load_config
    from skillmoe_ray.engines.base import GenerationRequest, SamplingSettings
    from skillmoe_ray.execution import group_by_expert
    from skillmoe_ray.runtime import Runtime
    from skillmoe_ray.serving.workers import ExpertWorker
    from skillmoe_ray.routing.routers import make_router
    from skillmoe_ray.tasks.catalogue import get_task

    cfg = load_config(ROOT / "deployments" / "paper-scale-sim.yaml")
    cfg.state_dir = sim_state_dir()
    rt = Runtime.from_config(cfg, progress=False)
    task = get_task("GPQA")
    prof = rt.profiles(task)
    questions = rt.questions(task, "test")[: args.batches * args.batch_size]
    skills = rt.skill_stage(prof).skills(questions)
    router = make_router(cfg.routing, prof)
    batches = []
    for b in range(args.batches):
        qs = questions[b * args.batch_size:(b + 1) * args.batch_size]
        sk = skills[b * args.batch_size:(b + 1) * args.batch_size]
        sel = router.route(qs, sk, 0)
        reqs = [GenerationRequest.user(q.text, key=q.qid, meta={"skills": s}) for q, s in zip(qs, sk)]
        plan = group_by_expert(sel, reqs)
        # the aggregator's batch follows the experts, as in the pipeline
        plan_jobs = list(plan.items()) + [(prof.aggregator["name"], [(i, 0, r) for i, r in enumerate(reqs)])]
        batches.append(plan_jobs)
    experts = []
    for e in rt.experts:
        args_ = dict(e.engine_args, clock="real", time_scale=args.scale, load_fixed_s=args.cold_start_s,
                     step_fixed_s=0.0038)  # the decode step benchmarks/latency.py fits to Table 6
        experts.append(e.model_copy(update={"engine_args": args_}).model_dump())
    sampling = SamplingSettings(0.7, cfg.generation.max_tokens, seed=0)

    rows, results = [], []
    for name, capacity, host, prefetch in SETTINGS:
        w = ExpertWorker(0, experts, capacity=capacity, host_budget_gb=host, prefetch=prefetch)
        t0 = time.perf_counter()
        for jobs in batches:
            w.run(jobs, sampling)
        sim_s = (time.perf_counter() - t0) / args.scale
        load_sim = w.load_seconds / args.scale
        results.append({"setting": name, "device_models": capacity, "host_budget_gb": host, "prefetch": prefetch,
                        "simulated_s": sim_s, "load_wait_s": load_sim, "cold_loads": w.loads, "wakes": w.wakes,
                        "prefetches": w.prefetches})
        rows.append([name, f"{sim_s:.0f}", f"{load_sim:.0f}", w.loads, w.wakes, w.prefetches])
        print(rows[-1], flush=True)
        for e in w.engines.values():
            e.release()
    base = results[0]["simulated_s"]
    for r, row in zip(results, rows):
        row.insert(2, f"{base / r['simulated_s']:.2f}x")
    md = (f"{args.batches} GPQA micro-batches of {args.batch_size} questions (paper router, 16 simulated 7-9B "
          f"experts, then the aggregator's batch), one worker. Cold start {args.cold_start_s:.0f} s + weights at "
          f"2 GB/s; wake 0.2 s + weights at 25 GB/s. Time scale {args.scale}.\n\n"
          + markdown_table(["setting", "simulated s", "speed-up", "waiting on loads (s)", "cold loads", "wakes",
                            "prefetches"], rows) + "\n")
    print(md)
    write_results("residency-sim", {"results": results, "batches": args.batches, "batch_size": args.batch_size},
                  md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
