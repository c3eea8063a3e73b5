"""Seconds per question by worker count and scheduling strategy, at the paper's scale (Table 6).

The pool is ``deployments/paper-scale-sim.yaml``: the paper's 16 models of
7-9B as simulated experts, GPQA's 198 test questions, k=3 plus an aggregator.

1. **Calibration.** The cost model's two free constants (the fixed part of a
   cold load and the decode step) are fitted to the paper's naive (196.92 s)
   and expert-grouped one-GPU (25.76 s) figures under the reference's shape
   (tensor parallel over all GPUs, a cold vLLM start per expert, a 10 s sleep
   after each). The fitted model then predicts the three figures it was not
   fitted to: grouped on four GPUs (10.85 s), MoA on one (45.98 s) and on four
   (21.66 s).
2. **Predicted** seconds per question for every strategy and worker count,
   from the pure functions in :mod:`skillmoe_ray.scheduling.makespan`.
3. **Measured**: each strategy runs through the real serving path (the
   pipeline, RayExecutor, planner and ExpertWorker actors on a private Ray
   cluster) with simulated experts that sleep the cost model's time, scaled by
   ``--scale``. Measured seconds are wall seconds / scale; the gap to the
   prediction is the system's own overhead (Ray calls, queues, Python).

Strategies: ``naive`` (per question, the reference's way: one engine over all
W GPUs, each expert cold-started for each question), ``grouped`` (the paper:
the same engine, each expert cold-started once per batch), ``planner`` (this
system: one worker per GPU, grouped, load-balanced, long jobs split, no sleep),
``moa`` (3 fixed proposers, 2 layers, the aggregator; reference shape),
``single`` (the best model answers everything; reference shape).

    python benchmarks/latency.py --quick     # < 5 minutes: W = 1 and 4 measured
    python benchmarks/latency.py             # all figures: W = 1, 2, 4, 8 measured
    python benchmarks/latency.py --real      # real models: the CPU pool on vLLM CPU, 4 questions
    python benchmarks/latency.py --nodes 2   # the planner on 1 node x 8 GPUs and on 2 nodes x 4 (multi-node)
    python benchmarks/latency.py --memory 80,141  # memory in bytes on H100s and H200s vs one model a GPU
    python benchmarks/latency.py --quick --constants benchmarks/results/gpu-proof-h200-constants.json
        # measured cost constants (JSON, CostConstants fields) for every expert; those it gives are not fitted

With ``--constants FILE`` the file's constants replace the config's for every
expert, and calibration fits only the free constants the file does not give
(``load_fixed_s`` alone to naive@1 when it gives ``step_fixed_s``); the result
files get the file's name appended (latency-sim-quick-<file stem>.*).

With ``--real`` the pool is ``deployments/local-cpu.yaml`` (four small
packaged models on vLLM's CPU build) on the first few GPQA test questions:
the strategies through the same serving path, in wall seconds, with shorter
generations than the config's (``--real-max-tokens``). It needs the pool's
GPQA profiles (built on first use, or by ``benchmarks/accuracy.py --real``),
and takes about 20 minutes on 2 cores.

Writes benchmarks/results/latency-sim.{json,md,png} (``--quick``: latency-sim-quick.*; ``--real``:
latency-real-cpu.{json,md}; ``--nodes``: latency-sim-nodes.{json,md}).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, markdown_table, sim_state_dir, start_cluster, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PAPER = {"naive@1": 196.92, "grouped@1": 25.76, "grouped@4": 10.85, "moa@1": 45.98, "moa@4": 21.66}
STRATEGIES = ("naive", "grouped", "planner", "moa", "single")
REFERENCE_RELEASE_S = 10.0  # the reference sleeps 10 s after each expert


def setup(config: str, state_dir: str | None, task_name: str = "GPQA", limit: int | None = None):
    """The pool, its profiles for the task, the test batch (the first ``limit`` questions), skills and routes."""
    from skillmoe_ray.config import load_config
    from skillmoe_ray.scheduling.makespan import expert_work, pool_costs
    from skillmoe_ray.runtime import Runtime
    from skillmoe_ray.routing.routers import make_router
    from skillmoe_ray.tasks.catalogue import get_task

    cfg = load_config(config)
    if state_dir:
        cfg.state_dir = state_dir
    rt = Runtime.from_config(cfg, progress=True)
    task = get_task(task_name)
    prof = rt.profiles(task)
    questions = rt.questions(task, "test")[:limit]
    skills = rt.skill_stage(prof).skills(questions)
    selections = make_router(cfg.routing, prof).route(questions, skills, 0)
    costs = None
    if all(e.engine == "simulated" for e in rt.experts):
        costs = pool_costs(rt.experts, cfg.generation.max_tokens).with_constants(release_s=REFERENCE_RELEASE_S)
    return {
        "cfg": cfg, "rt": rt, "task": task, "profiles": prof, "questions": questions, "skills": skills,
        "selections": selections, "work": expert_work(selections), "costs": costs,
        "aggregator": prof.aggregator["name"], "top3": prof.ranking()[:3], "best": prof.ranking()[0],
        "agg_tokens": cfg.aggregation.max_tokens,
    }


def predict(s: dict, costs, strategy: str, workers: int, n_naive: int | None = None) -> float:
    """Predicted seconds per question."""
    from skillmoe_ray.scheduling.makespan import (planner_s, reference_grouped_s, reference_moa_s, reference_naive_s,
                                       single_s)

    n = len(s["questions"])
    tp = replace(costs, tp=workers)
    if strategy == "naive":
        sel = s["selections"][:n_naive] if n_naive else s["selections"]
        return reference_naive_s(sel, s["aggregator"], tp, s["agg_tokens"]) / len(sel)
    if strategy == "grouped":
        return reference_grouped_s(s["selections"], s["aggregator"], tp, s["agg_tokens"]) / n
    if strategy == "moa":
        return reference_moa_s(n, s["top3"], s["aggregator"], tp, 2, s["agg_tokens"]) / n
    if strategy == "single":
        return single_s(n, s["best"], tp) / n
    return planner_s(s["selections"], s["aggregator"], costs, workers, s["agg_tokens"]) / n


def load_constants(path: str) -> dict:
    """``--constants``: a JSON object of :class:`CostConstants` fields (keys starting ``_`` are notes)."""
    import json

    from skillmoe_ray.engines.simulated import CostConstants

    raw = json.loads(Path(path).read_text())
    got = {k: v for k, v in raw.items() if not k.startswith("_")}
    unknown = sorted(set(got) - set(CostConstants.__dataclass_fields__))
    if unknown:
        raise SystemExit(f"--constants {path}: not CostConstants fields: {', '.join(unknown)}")
    return got


def apply_constants(s: dict, constants: dict | None) -> None:
    """The file's constants for every expert, in the predictions and in the simulated engines (``measure``)."""
    s["given"] = dict(constants or {})
    if constants:
        s["costs"] = s["costs"].with_constants(**constants)


def fitted_figures(given: dict) -> list[str]:
    """The paper's figures the calibration fits, given the constants a ``--constants`` file fixes."""
    if not {"load_fixed_s", "step_fixed_s"} & set(given):
        return ["naive@1", "grouped@1"]
    return [k for k, c in (("naive@1", "load_fixed_s"), ("grouped@1", "step_fixed_s")) if c not in given]


def calibrate(s: dict):
    from skillmoe_ray.scheduling.makespan import fit_two

    given = s.get("given", {})
    naive = lambda c: predict(s, c, "naive", 1)  # noqa: E731
    grouped = lambda c: predict(s, c, "grouped", 1)  # noqa: E731
    if "load_fixed_s" in given or "step_fixed_s" in given:
        # fit what the file leaves free, to one figure (each figure is affine in each constant)
        load_fixed = given.get("load_fixed_s")
        step_fixed = given.get("step_fixed_s")
        free, fn, target = (("load_fixed_s", naive, PAPER["naive@1"]) if load_fixed is None else
                            ("step_fixed_s", grouped, PAPER["grouped@1"]))
        if load_fixed is None or step_fixed is None:
            base = fn(s["costs"].with_constants(**{free: 0.0}))
            slope = fn(s["costs"].with_constants(**{free: 1.0})) - base
            value = (target - base) / slope
            load_fixed, step_fixed = (value, step_fixed) if free == "load_fixed_s" else (load_fixed, value)
    else:
        load_fixed, step_fixed = fit_two(naive, grouped, PAPER["naive@1"], PAPER["grouped@1"], s["costs"])
    fitted = s["costs"].with_constants(load_fixed_s=load_fixed, step_fixed_s=step_fixed)
    checks = {}
    for key, published in PAPER.items():
        strategy, w = key.split("@")
        checks[key] = (predict(s, fitted, strategy, int(w)), published)
    return fitted, {"load_fixed_s": load_fixed, "step_fixed_s": step_fixed}, checks


def sensitivity(s: dict, efficiencies=(0.25, 0.33, 0.5, 0.75)) -> list[dict]:
    """The check figures when the one assumed constant that matters most to them, TP efficiency, is changed.

    Each row refits the two free constants first, so it shows what the
    assumption does to the figures the fit does not touch.
    """
    out = []
    base = s["costs"]
    try:
        for eff in efficiencies:
            s["costs"] = base.with_constants(tp_efficiency=eff)
            _, constants, checks = calibrate(s)
            out.append({"tp_efficiency": eff, **constants,
                        **{k: p for k, (p, _) in checks.items() if k not in fitted_figures(s.get("given", {}))}})
    finally:
        s["costs"] = base
    return out


# ---------------------------------------------------------------- measured runs


def run_moa(executor, task, questions, proposers, aggregator, sampling, agg_tokens) -> None:
    """Mixture-of-Agents: layer 1, layer 2 (each proposer reads layer 1's answers), then the aggregator."""
    from skillmoe_ray.prompts import aggregation_prompt, expert_prompt
    from skillmoe_ray.engines.base import GenerationRequest, SamplingSettings

    reqs = [GenerationRequest.user(expert_prompt(task, q.text), key=q.qid, question=q.text) for q in questions]
    texts = executor.run({p: [(i, j, r) for i, r in enumerate(reqs)] for j, p in enumerate(proposers)}, sampling)
    layer2 = [GenerationRequest.user(aggregation_prompt(task, q.text, [texts[(i, j)] for j in range(len(proposers))]),
                                     key=q.qid, question=q.text) for i, q in enumerate(questions)]
    texts = executor.run({p: [(i, j, r) for i, r in enumerate(layer2)] for j, p in enumerate(proposers)}, sampling)
    final = [GenerationRequest.user(aggregation_prompt(task, q.text, [texts[(i, j)] for j in range(len(proposers))]),
                                    key=q.qid, role="aggregator", question=q.text) for i, q in enumerate(questions)]
    executor.run({aggregator: [(i, 0, r) for i, r in enumerate(final)]},
                 SamplingSettings(0.7, agg_tokens, seed=sampling.seed))


def run_strategy(s: dict, executor, strategy: str, n_naive: int) -> int:
    """One strategy over the batch through ``executor``; returns how many questions it answered."""
    from skillmoe_ray.engines.base import SamplingSettings
    from skillmoe_ray.pipeline import Pipeline
    from skillmoe_ray.aggregation.aggregators import LLMAggregator
    from skillmoe_ray.routing.routers import make_router

    cfg, task = s["cfg"], s["task"]
    sampling = SamplingSettings(cfg.generation.temperature, cfg.generation.max_tokens, seed=0)
    questions, skills = s["questions"], s["skills"]
    router = make_router(cfg.routing, s["profiles"])
    aggregator = LLMAggregator(s["aggregator"], s["agg_tokens"])
    if strategy == "naive":
        pipe = Pipeline(task, None, router, aggregator, executor, sampling)
        # the paper's router draws per question from its text: one question alone routes as in the batch
        for q, sk in zip(questions[:n_naive], skills[:n_naive]):
            pipe.solve([q], seed=0, skills=[sk])
        return min(n_naive, len(questions))
    if strategy in ("grouped", "planner"):
        Pipeline(task, None, router, aggregator, executor, sampling).solve(questions, seed=0, skills=skills)
    elif strategy == "moa":
        run_moa(executor, task, questions, s["top3"], s["aggregator"], sampling, s["agg_tokens"])
    else:
        from skillmoe_ray.prompts import expert_prompt
        from skillmoe_ray.engines.base import GenerationRequest

        reqs = [GenerationRequest.user(expert_prompt(task, q.text), key=q.qid) for q in questions]
        executor.run({s["best"]: [(i, 0, r) for i, r in enumerate(reqs)]}, sampling)
    return len(questions)


#: host memory of one simulated GPU worker for parked models: an 8-GPU server with 2 TB
SIM_HOST_GB_PER_WORKER = 256.0


def timed(s: dict, experts, strategy: str, n_actors: int, gpus: float, cpus: float, plan_costs,
          n_naive: int, reference: bool, prefetch: bool = False, placement: str = "PACK",
          gpu_memory_gb: float | None = None, batches: int = 1) -> dict:
    """Start worker actors for ``experts``, run one strategy, and stop them; wall seconds and load counts."""
    import ray

    from skillmoe_ray.serving.actors import start_workers, stop_actors
    from skillmoe_ray.serving.scheduler import RayExecutor, Scheduler, limits_for

    # a GPU server's host memory for parked weights: 2 TB over its 8 GPUs (the worker's default, what this
    # machine's node can give, would be this 2-core machine's, not the simulated server's)
    host_budget = 0.0 if reference else SIM_HOST_GB_PER_WORKER
    fetch = prefetch and not reference
    # one model a GPU (today's figures), or as many as fit a GPU of gpu_memory_gb, counted in bytes
    handles, pg, _ = start_workers(experts, n_actors, gpus_per_worker=gpus, cpus_per_worker=cpus,
                                   capacity=None if gpu_memory_gb else 1, host_budget_gb=host_budget, prefetch=fetch,
                                   release_after=reference, timeout_s=600, strategy=placement,
                                   gpu_memory_gb=gpu_memory_gb)
    executor = None
    try:
        ray.get([h.info.remote() for h in handles])  # actors up before the clock starts
        budgets = ray.get([h.budgets.remote() for h in handles])
        limits = limits_for(ray.get(handles[0].traits.remote()), budgets, fetch, reference)
        # the scheduler the server runs: planning, residency prediction and per-job dispatch
        executor = RayExecutor(Scheduler(handles, limits, plan_costs))
        t0 = time.perf_counter()
        n = sum(run_strategy(s, executor, strategy, n_naive) for _ in range(batches))
        wall = time.perf_counter() - t0
        infos = ray.get([h.info.remote() for h in handles])
    finally:
        if executor is not None:
            executor.close()
        stop_actors(handles, pg)
    return {"wall_s": wall, "questions": n, "loads": sum(i["loads"] for i in infos),
            "load_seconds": sum(i["load_seconds"] for i in infos), "nodes": len({i["node_id"] for i in infos})}


def measure(s: dict, fitted, strategy: str, workers: int, scale: float, n_naive: int,
            placement: str = "PACK", gpu_memory_gb: float | None = None, batches: int = 1,
            kv_gb: float | None = None) -> dict:
    """Wall seconds of one strategy through the serving path, converted to simulated seconds per question.

    With ``gpu_memory_gb`` (the planner only), workers hold as many experts as fit a GPU of that size,
    counted in bytes, and each expert's KV cache is its footprint's (``fitted`` from :func:`byte_costs`)."""
    reference = strategy != "planner"
    experts = []
    for e in s["rt"].experts:
        m = fitted.pool[e.name]
        args = dict({**e.engine_args, **s.get("given", {})}, clock="real", time_scale=scale,
                    load_fixed_s=m.constants.load_fixed_s,
                    step_fixed_s=m.constants.step_fixed_s,
                    release_s=REFERENCE_RELEASE_S if reference else 0.0,
                    tensor_parallel_size=workers if reference else 1)
        if gpu_memory_gb:
            args["kv_tokens"] = m.constants.kv_tokens
            if kv_gb:
                args["kv_cache_gb"] = kv_gb
        experts.append(e.model_copy(update={"engine_args": args}))
    n_actors, gpus = (1, workers) if reference else (workers, 1)
    plan_costs = replace(fitted.with_constants(release_s=REFERENCE_RELEASE_S if reference else 0.0),
                         tp=workers if reference else 1)
    m = timed(s, experts, strategy, n_actors, gpus, 0.5, plan_costs, n_naive, reference, placement=placement,
              gpu_memory_gb=gpu_memory_gb, batches=batches)
    return {**m, "per_question_s": m["wall_s"] / scale / m["questions"]}


#: KV bytes of one token of an 8B model of the pool (Llama 3 8B: 32 layers x 8 KV heads x 128 x 2 x bf16)
KV_BYTES_PER_TOKEN = 128 * 1024
GPU_MEMORY_FRACTION = 0.92


def byte_costs(s: dict, fitted, gpu_gb: float, kv_gb: float | None = None):
    """The planner's limits for workers with a GPU of ``gpu_gb`` counted in bytes, and the fitted costs with each
    expert's KV cache cut to its footprint's (several share a GPU, so none has the whole GPU's KV room):
    ``kv_gb`` GiB each, or the footprint's default (half the weights, at most 8 GiB)."""
    from skillmoe_ray.memory import GB, footprint
    from skillmoe_ray.scheduling.residency import Limits, ModelTraits

    traits, pool = {}, dict(fitted.pool)
    for e in s["rt"].experts:
        # as the simulated engine counts itself (SimulatedEngine.footprint): no CUDA graphs
        fp = footprint({"enforce_eager": True, **({"kv_cache_gb": kv_gb} if kv_gb else {})}, None, int(e.size_gb * GB))
        traits[e.name] = ModelTraits(fp.pinned / GB, fp.device / GB, fp.asleep / GB, True, True, False)
        m = pool[e.name]
        pool[e.name] = replace(m, constants=replace(m.constants, kv_tokens=int(fp.kv // KV_BYTES_PER_TOKEN)))
    limits = Limits(capacity=1000, host_budget_gb=SIM_HOST_GB_PER_WORKER, traits=traits,
                    device_gb=gpu_gb * GPU_MEMORY_FRACTION)
    return limits, replace(fitted, pool=pool)


def main_memory(args) -> int:
    """The planner with memory counted in bytes on GPUs of each size, beside one model per GPU, in one run."""
    from skillmoe_ray.scheduling.makespan import planner_plan

    sizes = [float(g) for g in args.memory.split(",")]
    measured_w = sorted(int(w) for w in (args.workers or "1,4").split(","))
    scale = args.scale or 0.004
    s = setup(args.config, sim_state_dir())
    apply_constants(s, load_constants(args.constants) if args.constants else None)
    fitted, _, _ = calibrate(s)
    kvs = [float(k) or None for k in args.kv_gb.split(",")]
    layouts: list[tuple[str, float | None, float | None]] = [("one model a GPU", None, None)] + [
        (f"{g:g} GB, in bytes, KV {f'{k:g} GiB' if k else 'default'}", g, k) for g in sizes for k in kvs]
    rows: dict = {}
    for label, gb, kv in layouts:
        limits, costs = byte_costs(s, fitted, gb, kv) if gb else (None, fitted)
        for w in measured_w:
            pred, loads, wakes = planner_plan(s["selections"], s["aggregator"], costs, w, s["agg_tokens"], limits,
                                              batches=args.batches)
            per_gpu = None
            if limits is not None:  # of the pool's typical (median-sized) expert
                sizes = sorted(t.device_gb for t in limits.traits.values())
                per_gpu = int(limits.device_gb // sizes[len(sizes) // 2])
            rows[(label, w)] = {"predicted": pred / len(s["questions"]) / args.batches, "predicted_loads": loads,
                                "predicted_wakes": wakes, "fits": per_gpu, "gpu_gb": gb, "kv_gb": kv, "costs": costs}
    if not args.predict_only:
        from skillmoe_ray.serving.local import ensure_ray_env

        ensure_ray_env()
        import ray

        ray.init(address="local", include_dashboard=False, num_cpus=max(measured_w) + 4, num_gpus=max(measured_w),
                 log_to_driver=False, configure_logging=False)
        try:
            for (label, w), r in rows.items():
                m = measure(s, r["costs"], "planner", w, scale, 0, gpu_memory_gb=r["gpu_gb"], batches=args.batches,
                            kv_gb=r["kv_gb"])
                r.update(m)
                print(f"  {label}: W={w} {m['per_question_s']:7.2f} s/q, {m['loads']} loads "
                      f"(predicted {r['predicted']:.2f}, {r['predicted_loads']} loads)", flush=True)
        finally:
            ray.shutdown()
    table = []
    for (label, w), r in rows.items():
        base = rows[(layouts[0][0], w)]
        measured = f"{r['per_question_s']:.2f}" if "per_question_s" in r else "-"
        table.append([label, w, r["fits"] or 1, f"{r['predicted']:.2f}", measured, r["predicted_loads"],
                      r.get("loads", "-"), f"{base['predicted'] / r['predicted']:.2f}x"])
    md = markdown_table(["GPU memory", "workers", "8B experts a GPU holds", "predicted s/q", "measured s/q",
                         "predicted loads", "measured loads", "speed-up (predicted)"], table)
    print("\n" + md)
    setting = (f"The planner on GPQA test ({len(s['questions'])} questions), the paper-scale pool of "
               f"{len(s['rt'].experts)} simulated experts (fitted to Table 6), through the serving path, one worker "
               f"per logical GPU. 'One model a GPU' is today's figure: each worker holds one expert, with the whole "
               f"GPU's KV room. 'In bytes': each expert's footprint (weights, a KV cache of half its weights up to "
               f"8 GiB, activations, CUDA context: memory.footprint) on GPUs of that size x {GPU_MEMORY_FRACTION} "
               f"(80 GB: H100, 141 GB: H200); as many stay resident as fit, parked ones keep 1 GiB of CUDA context "
               f"on the GPU, and each runs with its own smaller KV cache ({KV_BYTES_PER_TOKEN // 1024} KiB a "
               f"token). Host memory for parked weights {SIM_HOST_GB_PER_WORKER:g} GB a worker. The batch runs "
               f"{args.batches} time(s) back to back, each starting from what the one before left resident (as "
               f"the next batch of online traffic would); seconds per question and loads over all of them. "
               f"Time scale {scale}.")
    payload = {"setting": setting, "scale": scale, "rows": [
        {"layout": label, "workers": w, **{k: v for k, v in r.items() if k != "costs"}} for (label, w), r in rows.items()]}
    jpath, mpath = write_results(args.name or "latency-sim-memory", payload, f"{setting}\n\n{md}\n")
    print(f"\nwrote {jpath}, {mpath}")
    return 0


def measure_real(s: dict, strategy: str, workers: int, n_naive: int) -> dict:
    """Real models: the reference strategies on one worker (no tensor parallel on a CPU), the planner on W."""
    from skillmoe_ray.serving.actors import cost_model_for

    experts = list(s["rt"].experts)
    reference = strategy != "planner"
    m = timed(s, experts, strategy, 1 if reference else workers, 0, 1, cost_model_for(experts), n_naive,
              reference, prefetch=True)
    return {**m, "per_question_s": m["wall_s"] / m["questions"]}


def main_real(args) -> int:
    """``--real``: the CPU pool through real vLLM engines on a small batch; wall seconds per question."""
    from skillmoe_ray.serving.local import ensure_ray_env

    measured_w = [int(w) for w in (args.workers or "1,2").split(",")]
    s = setup(args.real_config, None, args.real_task, args.real_questions)
    if args.real_max_tokens:
        s["cfg"].generation.max_tokens = args.real_max_tokens
        s["agg_tokens"] = 2 * args.real_max_tokens
    print(f"\n{len(s['questions'])} {args.real_task} test questions; routes: "
          + "; ".join(", ".join(sel) for sel in s["selections"]), flush=True)
    ensure_ray_env()
    import ray

    ray.init(address="local", include_dashboard=False, num_cpus=max(2, max(measured_w)), log_to_driver=False,
             configure_logging=False)
    rows = []
    try:
        for strategy in args.real_strategies.split(","):
            for w in (measured_w if strategy == "planner" else [1]):
                m = measure_real(s, strategy, w, args.naive_questions or 2)
                rows.append({"strategy": strategy, "workers": w, **m})
                print(f"  W={w} {strategy:8s} {m['per_question_s']:7.1f} s/q over {m['questions']} questions "
                      f"({m['wall_s']:.0f} s wall; {m['loads']} cold loads, {m['load_seconds']:.0f} s loading)",
                      flush=True)
    finally:
        ray.shutdown()
    table = markdown_table(["strategy", "workers", "questions", "wall s", "s/question", "cold loads",
                            "loading s (share)"],
                           [[r["strategy"], r["workers"], r["questions"], f"{r['wall_s']:.0f}",
                             f"{r['per_question_s']:.1f}", r["loads"],
                             f"{r['load_seconds']:.0f} ({100 * r['load_seconds'] / r['wall_s']:.0f}%)"] for r in rows])
    setting = (f"Real CPU pool (`{os.path.relpath(args.real_config, ROOT)}`: {len(s['rt'].experts)} models on "
               f"vLLM CPU), the first {len(s['questions'])} {args.real_task} test questions (naive: the first "
               f"{args.naive_questions or 2}), k={s['cfg'].routing.k}, LLM aggregator {s['aggregator']}, MoA "
               f"proposers {', '.join(s['top3'])}, single model {s['best']}; max_tokens "
               f"{s['cfg'].generation.max_tokens} for experts and {s['agg_tokens']} for the aggregator. "
               "Wall seconds on this machine. "
               "The reference strategies run on one worker (a CPU has no tensor parallel); the planner on each "
               "worker count (one torch thread per worker).")
    md = f"{setting}\n\n{table}\n"
    print("\n" + md)
    jpath, mpath = write_results(args.name or "latency-real-cpu",
                                 {"setting": setting, "rows": rows,
                                  "routes": [list(sel) for sel in s["selections"]]}, md)
    print(f"wrote {jpath}, {mpath}")
    return 0


def main_nodes(args) -> int:
    """The planner across nodes: the same W workers on one node and spread over ``--nodes`` nodes, in one run.

    Both layouts are private ``ray.cluster_utils.Cluster`` clusters (a GPU-less
    head plus worker nodes, each its own raylet), so the only difference is
    whether a worker's node is shared: workers are placed with SPREAD, so at
    W >= nodes every node runs some. Efficiency at W is (B x s/q at B) / (W x s/q
    at W), B the fewest workers measured (1 by default), each layout against its
    own; the predicted column is the planner's own makespan, which knows nothing of
    nodes.
    """
    import ray

    measured_w = sorted(int(w) for w in (args.workers or "1,2,4,8").split(","))
    scale = args.scale or 0.004
    most = max(measured_w)
    per_node = -(-most // args.nodes)
    layouts = [("1 node", 1, most), (f"{args.nodes} nodes", args.nodes, per_node)]
    s = setup(args.config, sim_state_dir())
    apply_constants(s, load_constants(args.constants) if args.constants else None)
    fitted, _, _ = calibrate(s)
    predicted = {w: predict(s, fitted, "planner", w) for w in measured_w}
    rows: dict = {}
    for label, nodes, gpus in layouts:
        cluster, _ = start_cluster(nodes, gpus_per_node=gpus, cpus_per_node=-(-gpus // 2) + 1)
        try:
            for w in measured_w:
                m = measure(s, fitted, "planner", w, scale, 0, placement="SPREAD")
                rows[(label, w)] = m
                print(f"  {label}: W={w} planner {m['per_question_s']:7.2f} s/q on {m['nodes']} node(s) "
                      f"({m['wall_s']:.1f} s wall, predicted {predicted[w]:.2f})", flush=True)
        finally:
            ray.shutdown()
            cluster.shutdown()

    b = measured_w[0]

    def eff(base_sq: float, w: int, sq: float) -> str:
        return f"{100 * b * base_sq / (w * sq):.0f}%"

    table = []
    for w in measured_w:
        cells = [w, f"{predicted[w]:.2f}", eff(predicted[b], w, predicted[w])]
        for label, _, _ in layouts:
            m, base = rows[(label, w)], rows[(label, b)]
            cells += [f"{m['per_question_s']:.2f}", m["nodes"], eff(base["per_question_s"], w, m["per_question_s"])]
        table.append(cells)
    headers = ["workers", "predicted s/q", "predicted efficiency"]
    for label, _, _ in layouts:
        headers += [f"{label}: s/q", "nodes used", "efficiency"]
    md = markdown_table(headers, table)
    print("\n" + md)
    setting = (f"The planner on GPQA test ({len(s['questions'])} questions), the paper-scale pool of "
               f"{len(s['rt'].experts)} simulated experts, through the serving path (planner, scheduler, worker "
               f"actors), one worker per logical GPU placed with SPREAD. Layouts: one node with {most} GPUs, and "
               f"{args.nodes} nodes with {per_node} GPUs each, each behind a GPU-less head. Time scale {scale}. "
               f"Efficiency at W = ({measured_w[0]} x s/q at W={measured_w[0]}) / (W x s/q at W).")
    payload = {"setting": setting, "scale": scale, "nodes": args.nodes, "gpus_per_node": per_node,
               "rows": [{"layout": label, "workers": w, "predicted": predicted[w], **m}
                        for (label, w), m in rows.items()]}
    jpath, mpath = write_results(args.name or "latency-sim-nodes", payload, f"{setting}\n\n{md}\n")
    print(f"\nwrote {jpath}, {mpath}")
    return 0


def plot(rows: dict, worker_counts: list[int], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plot", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for strategy in STRATEGIES:
        pts = [(w, rows[(strategy, w)]["predicted"]) for w in worker_counts]
        line, = ax.plot([w for w, _ in pts], [v for _, v in pts], marker="o", label=f"{strategy} (predicted)")
        meas = [(w, rows[(strategy, w)]["measured"]) for w in worker_counts if rows[(strategy, w)].get("measured")]
        if meas:
            ax.plot([w for w, _ in meas], [v for _, v in meas], marker="x", linestyle="none", color=line.get_color(),
                    markersize=9, label=f"{strategy} (measured)")
    for key, value in PAPER.items():
        strategy, w = key.split("@")
        ax.plot(int(w), value, marker="*", color="black", linestyle="none", markersize=10,
                label="paper, Table 6" if key == "naive@1" else None)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(worker_counts, [str(w) for w in worker_counts])
    ax.set_xlabel("GPUs (workers)")
    ax.set_ylabel("seconds per question (simulated)")
    ax.set_title("GPQA, 198 questions, 16 simulated 7-9B experts, k=3 + aggregator")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="measure W = 1 and 4 only, at a smaller time scale")
    ap.add_argument("--config", default=str(ROOT / "deployments" / "paper-scale-sim.yaml"))
    ap.add_argument("--workers", default=None, help="worker counts to measure (default 1,2,4,8; quick 1,4)")
    ap.add_argument("--scale", type=float, default=None, help="real seconds per simulated second "
                    "(default 0.004; quick 0.001)")
    ap.add_argument("--naive-questions", type=int, default=None, help="questions run naively (default 16; quick 4)")
    ap.add_argument("--predict-only", action="store_true", help="no Ray runs: calibration and predictions only")
    ap.add_argument("--constants", default=None, help="JSON of cost constants (CostConstants fields) for every expert, "
                    "e.g. benchmarks/results/gpu-proof-h200-constants.json; the ones it gives are not fitted")
    ap.add_argument("--name", default=None, help="result file name (default latency-sim, latency-sim-quick with "
                    "--quick, latency-real-cpu with --real)")
    ap.add_argument("--real", action="store_true", help="measure real models instead: the CPU pool through vLLM CPU "
                    "on a small batch (--workers then defaults to 1,2)")
    ap.add_argument("--real-config", default=str(ROOT / "deployments" / "local-cpu.yaml"))
    ap.add_argument("--real-task", default="GPQA")
    ap.add_argument("--real-questions", type=int, default=4, help="test questions in the real batch (default 4)")
    ap.add_argument("--real-strategies", default="naive,grouped,planner,single",
                    help="strategies for --real (default naive,grouped,planner,single; moa runs 7 model calls)")
    ap.add_argument("--real-max-tokens", type=int, default=128,
                    help="max_tokens of the experts for --real (the aggregator gets twice this; default 128, so a "
                         "run fits in ~20 minutes on 2 cores; 0 keeps the config's)")
    ap.add_argument("--nodes", type=int, default=None,
                    help="measure the planner only, on one node and spread over this many nodes (a local multi-node "
                         "ray.cluster_utils.Cluster), W = 1,2,4,8 unless --workers; writes latency-sim-nodes.*")
    ap.add_argument("--kv-gb", default="0,24", help="--memory: each expert's KV cache in GiB, one layout each "
                    "(0: the footprint's default, half the weights up to 8 GiB; default 0,24)")
    ap.add_argument("--batches", type=int, default=2, help="--memory: times the batch runs back to back (default 2)")
    ap.add_argument("--memory", default=None,
                    help="GPU sizes in GB (e.g. 80,141): the planner with memory counted in bytes on such GPUs beside "
                         "one model a GPU, W = 1,4 unless --workers; writes latency-sim-memory.*")
    args = ap.parse_args(argv)
    if args.real:
        return main_real(args)
    if args.memory:
        return main_memory(args)
    if args.nodes:
        return main_nodes(args)
    args.name = args.name or ("latency-sim-quick" if args.quick else "latency-sim") + (
        f"-{Path(args.constants).stem}" if args.constants else "")
    measured_w = [int(w) for w in (args.workers or ("1,4" if args.quick else "1,2,4,8")).split(",")]
    scale = args.scale or (0.001 if args.quick else 0.004)
    n_naive = args.naive_questions or (4 if args.quick else 16)
    worker_counts = sorted(set([1, 2, 4, 8] + measured_w))

    s = setup(args.config, sim_state_dir())
    apply_constants(s, load_constants(args.constants) if args.constants else None)
    given = s["given"]
    fitted_to = fitted_figures(given)
    fitted, constants, checks = calibrate(s)
    print(f"\nCalibration (fitted to {', '.join(fitted_to) or 'nothing'}):",
          {k: round(v, 4) for k, v in constants.items()})
    cal_rows = [[k, f"{p:.2f}", f"{ref:.2f}", f"{100 * (p - ref) / ref:+.1f}%", "fitted" if k in fitted_to
                 else "predicted"] for k, (p, ref) in checks.items()]
    cal_md = markdown_table(["figure", "model s/question", "paper s/question", "error", ""], cal_rows)
    sens = sensitivity(s)
    checked = [k for k in PAPER if k not in fitted_to]
    sens_md = markdown_table(["TP efficiency", "fitted step (ms)", *checked], [
        [r["tp_efficiency"], f"{1000 * r['step_fixed_s']:.2f}",
         *(f"{r[k]:.2f} ({100 * (r[k] - PAPER[k]) / PAPER[k]:+.0f}%)" for k in checked)] for r in sens])
    print(cal_md + "\n\nSensitivity to the assumed TP efficiency (refitted each time):\n" + sens_md)

    rows: dict = {}
    for strategy in STRATEGIES:
        for w in worker_counts:
            rows[(strategy, w)] = {"predicted": predict(s, fitted, strategy, w)}
    if not args.predict_only:
        from skillmoe_ray.serving.local import ensure_ray_env

        ensure_ray_env()
        import ray

        ray.init(address="local", include_dashboard=False, num_cpus=max(measured_w) + 4,
                 num_gpus=max(measured_w), log_to_driver=False, configure_logging=False)
        try:
            for w in measured_w:
                for strategy in STRATEGIES:
                    m = measure(s, fitted, strategy, w, scale, n_naive)
                    pred = predict(s, fitted, strategy, w, n_naive if strategy == "naive" else None)
                    rows[(strategy, w)].update(measured=m["per_question_s"], measured_questions=m["questions"],
                                               wall_s=m["wall_s"], predicted_same_questions=pred)
                    print(f"  W={w} {strategy:8s} measured {m['per_question_s']:8.2f} s/q "
                          f"predicted {pred:8.2f} ({m['wall_s']:.1f} s wall)", flush=True)
        finally:
            ray.shutdown()

    table = []
    for strategy in STRATEGIES:
        for w in worker_counts:
            r = rows[(strategy, w)]
            meas = r.get("measured")
            same = r.get("predicted_same_questions", r["predicted"])
            table.append([strategy, w, f"{r['predicted']:.2f}", f"{meas:.2f}" if meas else "",
                          f"{100 * (meas - same) / same:+.1f}%" if meas else "",
                          r.get("measured_questions", "")])
    md = markdown_table(["strategy", "GPUs", "predicted s/q", "measured s/q", "overhead", "questions run"], table)
    p = {k: v["predicted"] for k, v in rows.items()}
    goals = {
        "grouped_vs_naive_1gpu": p[("naive", 1)] / p[("grouped", 1)],
        "planner_vs_grouped": {w: p[("grouped", w)] / p[("planner", w)] for w in worker_counts},
        "planner_scaling_1_to_4": p[("planner", 1)] / p[("planner", 4)],
        "planner_efficiency_1_to_4": p[("planner", 1)] / p[("planner", 4)] / 4,
        "grouped_scaling_1_to_4": p[("grouped", 1)] / p[("grouped", 4)],
    }
    goals_md = markdown_table(["goal", "target", "predicted"], [
        ["expert-grouped ahead of naive (1 GPU)", ">= 7.6x", f"{goals['grouped_vs_naive_1gpu']:.2f}x"],
        ["planner ahead of expert-grouped", "> 1x at each W",
         ", ".join(f"W={w}: {v:.2f}x" for w, v in goals["planner_vs_grouped"].items())],
        ["planner scaling 1 -> 4 workers", ">= 90% (paper 59%)",
         f"{goals['planner_scaling_1_to_4']:.2f}x = {100 * goals['planner_efficiency_1_to_4']:.0f}%"],
        ["reference grouped scaling 1 -> 4 GPUs (TP)", "paper 2.37x", f"{goals['grouped_scaling_1_to_4']:.2f}x"],
    ])
    print("\n" + md + "\n\n" + goals_md)
    setting = (f"GPQA test ({len(s['questions'])} questions), pool of {len(s['rt'].experts)} simulated experts "
               f"(`{os.path.relpath(args.config, ROOT)}`), k=3, aggregator {s['aggregator']}, MoA proposers "
               f"{', '.join(s['top3'])}, single model {s['best']}. Expert prompts per model: "
               + ", ".join(f"{e} {n}" for e, n in sorted(s["work"].items(), key=lambda x: -x[1]))
               + f". Measured at time scale {scale} (wall s = simulated s x scale); naive measured on the first "
               f"{n_naive} questions.")
    if given:
        setting += (f" Constants from `{os.path.relpath(args.constants, ROOT)}` for every expert: "
                    + ", ".join(f"`{k}` = {v:.6g}" for k, v in given.items()) + ".")
    full_md = (f"{setting}\n\n## Calibration\n\n{'Fitted' if fitted_to else 'Given'}: "
               f"`load_fixed_s` = {constants['load_fixed_s']:.2f} s, "
               f"`step_fixed_s` = {1000 * constants['step_fixed_s']:.2f} ms "
               f"(fitted to: {', '.join(fitted_to) or 'nothing'}).\n\n{cal_md}\n\n"
               f"The one assumed constant the check figures depend on most is the TP efficiency "
               f"(the config's {s['costs'].pool[s['best']].constants.tp_efficiency}). With it changed and the two "
               f"constants refitted:\n\n{sens_md}\n\n"
               f"## Seconds per question\n\n{md}\n\n## Goals\n\n{goals_md}\n")
    png = RESULTS / f"{args.name}.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    if plot(rows, worker_counts, png):
        full_md += f"\n![seconds per question]({png.name})\n"
    payload = {
        "setting": setting, "fitted": constants, "sensitivity": sens,
        "calibration": {k: {"model": p_, "paper": ref} for k, (p_, ref) in checks.items()},
        "rows": [{"strategy": st, "workers": w, **r} for (st, w), r in rows.items()],
        "goals": {k: ({str(a): b for a, b in v.items()} if isinstance(v, dict) else v) for k, v in goals.items()},
        "scale": scale, "quick": args.quick, "constants_file": args.constants, "given": given, "fitted_to": fitted_to,
    }
    jpath, mpath = write_results(args.name, payload, full_md)
    print(f"\nwrote {jpath}, {mpath}" + (f", {png}" if png.exists() else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
