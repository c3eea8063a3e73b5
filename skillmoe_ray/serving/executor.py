"""Runs expert-grouped plans on Ray worker actors.

Implements the same ``run(plan, sampling)`` as the in-process executor, so the
pipeline does not know whether its experts live in this process or on a GPU
cluster. Each batch's expert jobs are assigned with :func:`planner.plan_grouped`
using what every worker currently holds, then dispatched as one call per worker.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Sequence

from ..config import ExpertConfig
from ..engines.base import Engine, SamplingSettings
from ..errors import EngineError
from ..execution import ExpertPlan
from ..scheduling.planner import Assignment, CostModel, Costs, WorkerState, plan_grouped
from .workers import AggregatorWorker, ExpertWorker


#: seconds an engine takes to start before its weights arrive: a vLLM engine
#: builds its scheduler, KV cache and (on a GPU) CUDA graphs -- measured 6-23 s
#: for 0.1-1.5B models on vLLM CPU (benchmarks/swap.py), 30-60 s for an 8B on a GPU
ENGINE_START_S = {"recorded": 0.0, "simulated": 0.0, "transformers": 2.0, "vllm": 15.0}


def cost_model_for(experts: Sequence[ExpertConfig]) -> CostModel:
    """Planning costs: recordings load instantly; real models pay an engine start plus their weights.

    The constants are coarse (start by engine, weights at 2 GB/s, 50 ms a
    prompt): the planner needs relative sizes to balance workers, and the
    start so that it does not split a small job over workers when a second
    load costs more than the split saves (a vLLM start is seconds, not the
    0.3 s a 0.5 GB model's weights alone would suggest).
    """
    load = {}
    for e in experts:
        if e.engine == "recorded":
            load[e.name] = 0.0
        else:
            load[e.name] = ENGINE_START_S.get(e.engine, 5.0) + (e.size_gb or 1.0) / 2.0
    return CostModel(load_s=load, default_per_prompt_s=0.05)


def start_workers(
    experts: Sequence[ExpertConfig],
    n_workers: int,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    data_dir: str | None = None,
    capacity: int = 1,
    timeout_s: float = 120.0,
    host_budget_gb: float | None = None,
    prefetch: bool = False,
    release_after: bool = False,
) -> tuple[list[Any], Any]:
    """Worker actors, one per bundle of a placement group, so each owns its GPU(s).

    Returns the handles and the placement group (remove it to free the resources).
    """
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    bundle: dict[str, float] = {"CPU": cpus_per_worker}
    if gpus_per_worker:
        bundle["GPU"] = gpus_per_worker
    pg = placement_group([dict(bundle) for _ in range(n_workers)], strategy="PACK")
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except Exception as exc:
        ray.util.remove_placement_group(pg)
        raise EngineError(f"cannot place {n_workers} workers of {bundle} on this cluster "
                          f"(available: {ray.available_resources()}): {exc}") from None
    remote = ray.remote(ExpertWorker)
    specs = [e.model_dump() for e in experts]
    handles = [
        remote.options(
            num_cpus=cpus_per_worker,
            num_gpus=gpus_per_worker,
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i),
            # a worker that dies is restarted by Ray and the sub-batch it was running is re-run on it
            max_restarts=-1,
            max_task_retries=3,
        ).remote(i, specs, data_dir, capacity, host_budget_gb, prefetch, release_after)
        for i in range(n_workers)
    ]
    return handles, pg


def start_aggregator(mode: str, ranking_by_task: dict, weights_by_task: dict, llm_expert: ExpertConfig | None,
                     data_dir: str | None, gpus: float = 0.0, max_tokens: int = 4096) -> Any:
    import uuid

    import ray

    remote = ray.remote(AggregatorWorker)
    return remote.options(num_cpus=0, num_gpus=gpus, max_restarts=-1, max_task_retries=1,
                          name=f"skillmoe-aggregator-{uuid.uuid4().hex[:8]}").remote(
        mode, ranking_by_task, weights_by_task, llm_expert.model_dump() if llm_expert else None, data_dir, max_tokens)


def split_plan(plan: ExpertPlan, assignment: Assignment) -> dict[int, list[tuple[str, list]]]:
    """Each worker's jobs with the items it runs: an expert split over workers is cut in order."""
    offsets: dict[str, int] = {}
    out: dict[int, list[tuple[str, list]]] = {}
    for wid, experts in assignment.jobs.items():
        out[wid] = []
        for e in experts:
            share = assignment.shares.get(wid, {}).get(e, len(plan[e]))
            start = offsets.get(e, 0)
            out[wid].append((e, plan[e][start:start + share]))
            offsets[e] = start + share
    return out


class RayExecutor:
    """Plans each batch over the worker actors and gathers their answers."""

    def __init__(self, workers: Sequence[Any], cost: Costs, capacity: int = 1,
                 expert_names: Sequence[str] = ()):
        self.workers = list(workers)
        self.expert_names = list(expert_names)
        #: expert -> why it is out of service (its load failed on a worker); routing avoids these
        self.unhealthy: dict[str, str] = {}
        self.cost = cost
        self.capacity = capacity
        self._resident: dict[int, frozenset[str]] = {i: frozenset() for i in range(len(self.workers))}
        self._parked: dict[int, frozenset[str]] = {i: frozenset() for i in range(len(self.workers))}
        self._lock = threading.Lock()
        self.last_assignment: Assignment | None = None
        self.last_stats: list[dict[str, Any]] = []

    def engine(self, name: str) -> Engine:
        raise EngineError("models live on the worker actors; there is no local engine in a served deployment")

    def run(self, plan: ExpertPlan, sampling: SamplingSettings) -> dict[tuple[int, int], str]:
        import ray

        work = {e: len(items) for e, items in plan.items()}
        with self._lock:
            states = [WorkerState(i, self._resident[i], capacity=self.capacity, parked=self._parked[i])
                      for i in range(len(self.workers))]
            assignment = plan_grouped(work, states, self.cost)
        refs = [
            self.workers[wid].run.remote([(e, part) for e, part in jobs if part], sampling)
            for wid, jobs in split_plan(plan, assignment).items()
            if jobs
        ]
        t0 = time.perf_counter()
        results = ray.get(refs)
        texts: dict[tuple[int, int], str] = {}
        stats = []
        for r in results:
            texts.update(r["texts"])
            stats.append(r["stats"])
        with self._lock:
            for s in stats:
                self._resident[s["wid"]] = frozenset(s["resident"])
                self._parked[s["wid"]] = frozenset(s.get("parked", ()))
                self.unhealthy.update(s.get("failed", {}))
            self.last_assignment = assignment
            self.last_stats = stats
        self.last_wall_s = time.perf_counter() - t0
        return texts
