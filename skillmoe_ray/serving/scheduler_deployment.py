"""The scheduler as a one-replica Ray Serve deployment.

Serve's controller owns this replica, not any ingress replica, so losing an
ingress replica touches no model. The workers and aggregators it starts are
named and detached: if this replica itself is restarted, the new one attaches
to them by name, asks each worker what it holds, and plans on that.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, AsyncIterator, Sequence

from ray import serve

from ..config import Config, ExpertConfig
from ..engines.base import SamplingSettings
from ..errors import ConfigError
from ..execution import ExpertPlan
from ..solution import ExpertAnswer
from ..pool import pool_experts, pool_fingerprint
from ..profiles import Profiles
from ..aggregation.aggregators import log_odds_weights
from ..tasks.catalogue import Catalogue, Question
from .actors import cost_model_for, start_aggregator, start_workers, stop_actors
from .app_spec import AppSpec
from .messages import AnswerRecord
from .scheduler import Scheduler, Work, _await, limits_for

log = logging.getLogger(__name__)

#: the Ray namespace of the pool's named actors (a fixed one, so a restarted scheduler finds them)
POOL_NAMESPACE = "skillmoe"
POOL_VIEW_TIMEOUT_S = 5.0


def pool_name(cfg: Config, experts: Sequence[ExpertConfig], app_name: str) -> str:
    """Actor names for this pool: the app, and a digest of what the pool is, so a changed config starts afresh."""
    what = json.dumps({"pool": pool_fingerprint(experts), "serving": cfg.serving.model_dump(),
                       "aggregation": cfg.aggregation.model_dump()}, sort_keys=True, default=str)
    return f"skillmoe:{app_name}:{cfg.name}:{hashlib.sha256(what.encode()).hexdigest()[:10]}"


def aggregator_groups(mode: str, fixed: str | None, chosen: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """One aggregator actor per distinct aggregator: each task's own chosen model (or the one the
    config fixes for all), or the vote; aggregator name -> the tasks it serves."""
    groups: dict[str, list[str]] = {}
    for task, choice in chosen.items():
        who = (fixed or choice.get("name") or "") if mode == "llm" else mode
        if not who:
            raise ConfigError(f"task {task}: no aggregator model was chosen; rebuild its profiles "
                              "(skillmoe profile) or set aggregation.aggregator")
        groups.setdefault(who, []).append(task)
    return groups


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=10_000)
class SkillMoEScheduler:
    def __init__(self, spec: AppSpec):
        import ray

        cfg = spec.cfg
        sv, agg = cfg.serving, cfg.aggregation
        experts = pool_experts(cfg, spec.recorded_dir)
        catalogue = Catalogue.from_config(cfg)  # from the shipped config: no task file is read here
        try:
            app_name = serve.get_replica_context().app_name
        except Exception:  # noqa: BLE001 - outside a replica (tests build it directly)
            app_name = "skillmoe"
        name = pool_name(cfg, experts, app_name)
        namespace = POOL_NAMESPACE
        self.workers, self.pg, attached = start_workers(
            experts, sv.workers, sv.gpus_per_worker, sv.cpus_per_worker, catalogue, sv.models_per_worker,
            host_budget_gb=sv.host_budget_gb, prefetch=sv.prefetch, name=name, namespace=namespace,
            strategy=sv.placement_strategy, gpu_memory_gb=sv.gpu_memory_gb, gpu_memory_fraction=sv.gpu_memory_fraction)
        traits = ray.get(self.workers[0].traits.remote())
        budgets = ray.get([w.budgets.remote() for w in self.workers])
        states = ray.get([w.state.remote() for w in self.workers])

        profiles = {t: Profiles.from_json(p) for t, p in spec.profiles.items()}
        self.rankings = {t: p.ranking() for t, p in profiles.items()}
        groups = aggregator_groups(agg.mode, agg.aggregator, {t: p.aggregator for t, p in profiles.items()})
        agg_names = {t: who for who, tasks in groups.items() for t in tasks}
        by_name = {e.name: e for e in experts}
        self.aggregators: dict[str, Any] = {}
        actors = []
        self.aggregator_actor_names: dict[str, str] = {}
        for who, tasks in groups.items():
            actor, found = start_aggregator(
                agg.mode, {t: self.rankings[t] for t in tasks},
                {t: log_odds_weights(profiles[t].accuracy) for t in tasks},
                by_name[who] if agg.mode == "llm" else None, catalogue, sv.aggregator_gpus, agg.max_tokens,
                name=f"{name}:aggregator:{who}", namespace=namespace, gpu_memory_gb=sv.gpu_memory_gb,
                skip_when_agreed=agg.skip_when_agreed)
            attached += found
            actors.append(actor)
            for t in tasks:
                self.aggregators[t] = actor
                self.aggregator_actor_names[t] = f"{name}:aggregator:{who}"
        self._actors = actors
        self.core = Scheduler.from_config(self.workers, limits_for(traits, budgets, sv.prefetch),
                                          cost_model_for(experts), self.aggregators, agg_names, sv, catalogue)
        self.core.adopt(states)
        self.attached = attached
        log.info("scheduler for %s: %d workers, %d aggregator actor(s), %d attached to from before",
                 cfg.name, len(self.workers), len(actors), attached)

    async def solve(self, work: Work) -> AnswerRecord:
        return await self.core.solve(work)

    async def solve_stream(self, work: Work) -> AsyncIterator[dict[str, Any]]:
        """:meth:`solve` as a stream of events (stages, the aggregator's text, the record last); ingress
        replicas call it with ``handle.options(stream=True)``, and cancelling their call closes it."""
        events = self.core.solve_stream(work)
        try:
            async for event in events:
                yield event
        finally:
            await events.aclose()  # frees the question's place now, not when the generator is collected

    async def run_plan(self, plan: ExpertPlan, sampling: SamplingSettings, with_usage: bool = False) -> Any:
        return await self.core.run_plan(plan, sampling, with_usage)

    async def aggregate(self, task: str, questions: Sequence[Question], answers: Sequence[Sequence[ExpertAnswer]],
                        seed: int) -> list[tuple[str | None, str, str]]:
        return await self.core.aggregate(task, questions, answers, seed, [self.rankings.get(task, [])] * len(answers))

    async def ready(self) -> dict[str, Any]:
        """Answers once this replica's pool is up (the ingress's readiness depends on it)."""
        return {"workers": len(self.workers), "pending": self.core.pending}

    async def unhealthy(self) -> dict[str, str]:
        return dict(self.core.unhealthy)

    async def pool(self) -> dict[str, Any]:
        import asyncio

        import ray

        # a lost worker's call would wait for its restart: the view must answer regardless
        infos = await asyncio.gather(*[asyncio.wait_for(_await(w.info.remote()), timeout=POOL_VIEW_TIMEOUT_S)
                                       for w in self.workers], return_exceptions=True)
        alive = set(self.core.alive_workers())
        workers = [{**i, "alive": n in alive} if isinstance(i, dict) else
                   {"wid": n, "alive": False, "status": f"unavailable ({type(i).__name__})"}
                   for n, i in enumerate(infos)]
        aggs = {}
        for task, actor in self.aggregators.items():
            try:
                aggs[task] = {**await asyncio.wait_for(actor.info.remote(), timeout=10),
                              "actor_name": self.aggregator_actor_names[task], "namespace": POOL_NAMESPACE}
            except Exception as exc:  # noqa: BLE001 - dead or unreachable: say so, the pool view must answer
                aggs[task] = {"name": self.core.aggregator_names.get(task), "status":
                              f"unavailable ({type(exc).__name__}); answers fall back to a vote"}
        return {"workers": workers, "aggregators": aggs, "usage": dict(self.core.asked),
                "unhealthy": dict(self.core.unhealthy), "served": self.core.served,
                "queued": {e: len(t) for e, t in self.core.admission.waiting().items()},
                "pending": self.core.pending, "predicted": self.core.predicted_counts(),
                "alive": self.core.alive_workers(), "events": list(self.core.events)[-200:],
                "node_id": ray.get_runtime_context().get_node_id()}

    def __del__(self) -> None:
        """Serve calls this when the application is deleted on purpose: then the pool goes with it."""
        try:
            stop_actors(list(getattr(self, "workers", [])) + list(getattr(self, "_actors", [])),
                        getattr(self, "pg", None))
        except Exception:  # noqa: BLE001 - interpreter shutting down
            pass
