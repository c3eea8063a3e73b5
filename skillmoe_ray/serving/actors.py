"""Starting, finding again and stopping the pool's actors: expert workers and aggregators.

The scheduler creates them as *named, detached* actors in a named placement
group, so they outlive the process that created them: if the scheduler's own
replica is restarted it finds them again by name (with their models still
loaded) instead of building a new pool. It removes them when it is shut down
on purpose.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from ..config import ExpertConfig
from ..errors import EngineError
from ..scheduling.planner import CostModel
from ..tasks.catalogue import Catalogue
from .aggregator_worker import AggregatorWorker
from .workers import ExpertWorker

#: the worker actors' concurrency group for bring, generate and run_job calls, and how many run at once
JOBS_GROUP = "jobs"
MAX_JOBS_AT_ONCE = 256
#: aggregation calls an aggregator actor runs at once (its engine batches them, or takes turns)
AGGREGATIONS_AT_ONCE = 64

log = logging.getLogger(__name__)

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


def _get_actor(name: str, namespace: str | None) -> Any | None:
    import ray

    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None


def start_workers(
    experts: Sequence[ExpertConfig],
    n_workers: int,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    catalogue: Catalogue | None = None,
    capacity: int | None = 1,
    timeout_s: float = 120.0,
    host_budget_gb: float | None = None,
    prefetch: bool = False,
    release_after: bool = False,
    name: str | None = None,
    namespace: str | None = None,
    strategy: str = "PACK",
    gpu_memory_gb: float | None = None,
    gpu_memory_fraction: float = 0.92,
) -> tuple[list[Any], Any, int]:
    """Worker actors, one per bundle of a placement group, so each owns its GPU(s).

    ``strategy`` is the placement group's (``serving.placement_strategy``): PACK puts the
    bundles on as few nodes as fit, SPREAD over as many as it can, STRICT_PACK on one node
    and STRICT_SPREAD on distinct nodes, or the group is not placed at all.

    With ``name``, the placement group and the actors are named and detached:
    ones that already exist under those names are attached to, not created.
    Returns the handles, the placement group, and how many were attached to.
    """
    import ray
    from ray.util.placement_group import get_placement_group, placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    bundle: dict[str, float] = {"CPU": cpus_per_worker}
    if gpus_per_worker:
        bundle["GPU"] = gpus_per_worker
    pg = None
    if name:
        try:
            pg = get_placement_group(f"{name}:workers")
        except ValueError:
            pg = None
    if pg is None:
        opts: dict[str, Any] = {"strategy": strategy}
        if name:
            opts.update(name=f"{name}:workers", lifetime="detached")
        pg = placement_group([dict(bundle) for _ in range(n_workers)], **opts)
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except Exception as exc:
        ray.util.remove_placement_group(pg)
        raise EngineError(f"cannot place {n_workers} workers of {bundle} ({strategy}) on this cluster "
                          f"(available: {ray.available_resources()}): {exc}") from None
    # jobs run in a group of their own, many at once (prompts join a model that is generating); a "probe"
    # group answers progress looks beside them; the default group answers state and info calls
    remote = ray.remote(concurrency_groups={"probe": 1, JOBS_GROUP: MAX_JOBS_AT_ONCE})(ExpertWorker)
    specs = [e.model_dump() for e in experts]
    sharing = workers_per_node(pg, n_workers)
    handles, attached = [], 0
    for i in range(n_workers):
        actor_name = f"{name}:worker:{i}" if name else None
        found = _get_actor(actor_name, namespace) if actor_name else None
        if found is not None:
            handles.append(found)
            attached += 1
            continue
        opts = {}
        if actor_name:
            opts.update(name=actor_name, lifetime="detached", namespace=namespace)
        handles.append(remote.options(
            num_cpus=cpus_per_worker,
            num_gpus=gpus_per_worker,
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i),
            # a worker that dies is restarted by Ray and the job it was running is re-run on it
            max_restarts=-1,
            max_task_retries=3,
            **opts,
        ).remote(i, specs, catalogue, capacity, host_budget_gb, prefetch, release_after, gpus_per_worker,
                  gpu_memory_gb, gpu_memory_fraction, sharing[i]))
    return handles, pg, attached


def workers_per_node(pg: Any, n_workers: int) -> list[int]:
    """For each bundle of the workers' placement group, how many of the group's bundles share its node
    (they share its host memory for parked models)."""
    try:
        from ray.util import placement_group_table

        nodes = placement_group_table(pg).get("bundles_to_node_id", {})
        where = [nodes.get(i) for i in range(n_workers)]
        return [max(1, where.count(n)) if n else 1 for n in where]
    except Exception:  # noqa: BLE001 - an older Ray's table, or none yet: each worker alone
        return [1] * n_workers


def start_aggregator(mode: str, ranking_by_task: dict, weights_by_task: dict, llm_expert: ExpertConfig | None,
                     catalogue: Catalogue | None, gpus: float = 0.0, max_tokens: int = 4096, name: str | None = None,
                     namespace: str | None = None, gpu_memory_gb: float | None = None,
                     skip_when_agreed: bool = False) -> tuple[Any, bool]:
    """One aggregator actor (a vote, or one aggregator model kept resident); (handle, attached to an existing one)."""
    import ray

    if name:
        found = _get_actor(name, namespace)
        if found is not None:
            return found, True
    opts: dict[str, Any] = {}
    if name:
        opts.update(name=name, lifetime="detached", namespace=namespace)
    remote = ray.remote(max_concurrency=AGGREGATIONS_AT_ONCE)(AggregatorWorker)
    handle = remote.options(num_cpus=0, num_gpus=gpus, max_restarts=-1, max_task_retries=1, **opts).remote(
        mode, ranking_by_task, weights_by_task, llm_expert.model_dump() if llm_expert else None, catalogue, max_tokens,
        gpus, gpu_memory_gb, skip_when_agreed)
    return handle, False


def stop_actors(handles: Sequence[Any], pg: Any | None = None) -> None:
    import ray

    for h in handles:
        try:
            ray.kill(h, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
    if pg is not None:
        try:
            ray.util.remove_placement_group(pg)
        except Exception:  # noqa: BLE001
            pass
