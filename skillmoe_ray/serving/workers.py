"""Worker actors: the only place models live in a served deployment.

An :class:`ExpertWorker` owns one GPU (or CPU slot) and every engine of the
pool, of which it keeps at most ``capacity`` swappable models loaded. It runs
the jobs the planner gave it in order, evicting the resident model needed
furthest in the future of its own job list (Belady's rule: the plan is known).
The :class:`AggregatorWorker` keeps the task's aggregator resident.
These classes are plain Python; :mod:`.executor` wraps them with ``ray.remote``.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Sequence

from ..config import ExpertConfig
from ..engines.base import Engine, GenerationRequest, SamplingSettings
from ..engines.registry import create_engine
from ..errors import EngineError

Job = tuple[str, list[tuple[int, int, GenerationRequest]]]


class ExpertWorker:
    def __init__(self, wid: int, experts: Sequence[dict[str, Any]], data_dir: str | None = None, capacity: int = 1):
        self.wid = wid
        self.capacity = max(1, capacity)
        self.configs = {e["name"]: ExpertConfig.model_validate(e) for e in experts}
        self.data_dir = data_dir
        self.engines: dict[str, Engine] = {}
        self.loads = 0
        self.load_seconds = 0.0
        self.usage: dict[str, int] = {}
        self.failed: dict[str, str] = {}

    def _engine(self, name: str) -> Engine:
        if name not in self.engines:
            if name not in self.configs:
                raise EngineError(f"worker {self.wid}: no expert named {name!r}")
            self.engines[name] = create_engine(self.configs[name], self.data_dir)
        return self.engines[name]

    def _swappable_resident(self) -> list[str]:
        return [n for n, e in self.engines.items() if e.loaded and not getattr(e, "cheap_residency", False)]

    def _make_room(self, upcoming: Sequence[str]) -> None:
        resident = self._swappable_resident()
        while len(resident) >= self.capacity:
            # evict the model needed furthest in the future (or never) of this worker's remaining jobs
            def next_use(n: str) -> int:
                return upcoming.index(n) if n in upcoming else len(upcoming) + 1

            victim = max(resident, key=next_use)
            self.engines[victim].park()
            resident.remove(victim)

    def run(self, jobs: Sequence[Job], sampling: SamplingSettings) -> dict[str, Any]:
        """Run expert jobs in order; returns {"texts": {(qi, slot): text}, "stats": ...}."""
        texts: dict[tuple[int, int], str] = {}
        timings: list[dict[str, Any]] = []
        failed: dict[str, str] = {}
        names = [name for name, _ in jobs]
        for i, (name, work) in enumerate(jobs):
            t0 = time.perf_counter()
            try:
                engine = self._engine(name)
                if not engine.loaded:
                    if not getattr(engine, "cheap_residency", False):
                        self._make_room(names[i + 1 :])
                    engine.load()
                    self.loads += 1
            except Exception as exc:  # the expert is out of service; its items go back unanswered
                failed[name] = f"load failed on worker {self.wid}: {exc}"
                self.failed[name] = failed[name]
                continue
            t1 = time.perf_counter()
            self.load_seconds += t1 - t0
            out = engine.generate([req for _, _, req in work], sampling)
            for (qi, slot, _), text in zip(work, out):
                texts[(qi, slot)] = text
            self.usage[name] = self.usage.get(name, 0) + len(work)
            timings.append({"expert": name, "load_s": t1 - t0, "generate_s": time.perf_counter() - t1, "n": len(work)})
        return {"texts": texts,
                "stats": {"wid": self.wid, "jobs": timings, "resident": self.resident(), "failed": failed}}

    def resident(self) -> list[str]:
        return [n for n, e in self.engines.items() if e.loaded]

    def info(self) -> dict[str, Any]:
        return {
            "wid": self.wid,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            "resident": self.resident(),
            "loads": self.loads,
            "load_seconds": round(self.load_seconds, 4),
            "usage": dict(self.usage),
            "failed": dict(self.failed),
        }


class AggregatorWorker:
    """Merges the experts' answers; holds the aggregator model when there is one."""

    def __init__(self, mode: str, ranking_by_task: dict[str, list[str]], weights_by_task: dict[str, dict[str, float]],
                 llm_expert: dict[str, Any] | None = None, data_dir: str | None = None, max_tokens: int = 4096):
        self.mode = mode
        self.ranking_by_task = ranking_by_task
        self.weights_by_task = weights_by_task
        self.engine: Engine | None = None
        self.max_tokens = max_tokens
        if llm_expert is not None:
            self.engine = create_engine(ExpertConfig.model_validate(llm_expert), data_dir)
            self.engine.load()

    def aggregate(self, task_name: str, questions: list, answers: list, seed: int) -> list[tuple[str | None, str, str]]:
        from ..pipeline import LocalExecutor
        from ..strategies import LLMAggregator, VoteAggregator, WeightedVoteAggregator
        from ..tasks import get_task

        task = get_task(task_name)
        if self.mode == "llm" and self.engine is not None:
            agg = LLMAggregator(self.engine.name, self.max_tokens)
            executor = LocalExecutor({self.engine.name: self.engine}, keep_resident=True)
            return agg.aggregate(task, questions, answers, executor, seed)
        ranking = self.ranking_by_task.get(task_name, [])
        if self.mode == "weighted_vote":
            agg = WeightedVoteAggregator(ranking, self.weights_by_task.get(task_name, {}))
        else:
            agg = VoteAggregator(ranking)
        return agg.aggregate(task, questions, answers, None, seed)  # type: ignore[arg-type]

    def info(self) -> dict[str, Any]:
        import ray

        ctx = ray.get_runtime_context()
        return {"mode": self.mode, "model": self.engine.name if self.engine else None,
                "resident": bool(self.engine and self.engine.loaded), "pid": os.getpid(),
                "actor_name": ctx.get_actor_name(), "namespace": ctx.namespace}
