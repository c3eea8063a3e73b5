"""Worker actors: the only place models live in a served deployment.

An :class:`ExpertWorker` owns one GPU (or CPU slot) and every engine of the
pool. Its models sit in three tiers: on the device (at most ``capacity``
swappable models), parked in host memory (up to ``host_budget_gb``; a parked
model comes back with a wake instead of a cold start), or on disk. It runs the
jobs the planner gave it in order; whenever a tier is full it evicts the model
needed furthest in the future of its own job list (Belady's rule: the plan is
known). With ``prefetch`` it starts reading the next job's model from disk into
host memory while the current job generates, where the host budget allows.
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
    def __init__(self, wid: int, experts: Sequence[dict[str, Any]], data_dir: str | None = None, capacity: int = 1,
                 host_budget_gb: float | None = None, prefetch: bool = False, release_after: bool = False):
        self.wid = wid
        #: free every model right after its job (the reference implementation's behaviour; for comparisons)
        self.release_after = release_after
        self.capacity = max(1, capacity)
        #: None: parked models may use any amount of host memory
        self.host_budget_gb = host_budget_gb
        self.prefetch = prefetch
        self.prefetches = 0
        self.wakes = 0
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

    def _host_used_gb(self, leaving: str | None = None) -> float:
        """Host memory of parked models, less ``leaving`` (a model about to wake frees its host copy)."""
        return sum(e.host_bytes() for n, e in self.engines.items() if n != leaving) / 1e9

    def _size_gb(self, name: str) -> float:
        engine = self.engines.get(name)
        held = max(engine.resident_bytes(), engine.host_bytes()) / 1e9 if engine else 0.0
        if held:
            return held
        hint = getattr(engine, "size_gb", None) or (self.configs[name].size_gb if name in self.configs else None)
        return float(hint or 0.0)

    @staticmethod
    def _furthest(candidates: Sequence[str], upcoming: Sequence[str]) -> str:
        def next_use(n: str) -> int:
            return upcoming.index(n) if n in upcoming else len(upcoming) + 1

        return max(candidates, key=next_use)

    def _host_room(self, need_gb: float, upcoming: Sequence[str], keep: str | None = None,
                   incoming: str | None = None) -> bool:
        """Release parked models (furthest next use first) until ``need_gb`` fits the host budget."""
        if self.host_budget_gb is None:
            return True
        while self._host_used_gb(leaving=incoming) + need_gb > self.host_budget_gb + 1e-9:
            parked = [n for n, e in self.engines.items() if e.parked and n not in (keep, incoming)]
            if not parked:
                return False
            victim = self._furthest(parked, upcoming)
            if victim in upcoming[:1]:  # the next job's model: keeping it beats making room
                return False
            self.engines[victim].release()
        return True

    def _make_room(self, incoming: str, upcoming: Sequence[str]) -> None:
        resident = self._swappable_resident()
        while len(resident) >= self.capacity:
            victim = self._furthest(resident, upcoming)
            if victim in upcoming and self._host_room(self._size_gb(victim), upcoming, keep=victim,
                                                      incoming=incoming):
                self.engines[victim].park()
            else:  # not needed again in this plan, or no host room: free it
                self.engines[victim].release()
            resident.remove(victim)

    def _start_prefetch(self, name: str, upcoming: Sequence[str]) -> None:
        if name not in self.engines and name not in self.configs:
            return
        engine = self._engine(name)
        if engine.loaded or engine.parked or getattr(engine, "cheap_residency", False):
            return
        if self._host_room(self._size_gb(name), upcoming) and engine.prefetch():
            self.prefetches += 1

    def run(self, jobs: Sequence[Job], sampling: SamplingSettings) -> dict[str, Any]:
        """Run expert jobs in order; returns {"texts": {(qi, slot): text}, "stats": ...}."""
        texts: dict[tuple[int, int], str] = {}
        timings: list[dict[str, Any]] = []
        failed: dict[str, str] = {}
        names = [name for name, _ in jobs]
        for i, (name, work) in enumerate(jobs):
            t0 = time.perf_counter()
            woke = False
            try:
                engine = self._engine(name)
                if not engine.loaded:
                    if not getattr(engine, "cheap_residency", False):
                        self._make_room(name, names[i + 1 :])
                    woke = engine.parked
                    engine.load()
                    self.wakes += woke
                    self.loads += not woke
            except Exception as exc:  # the expert is out of service; its items go back unanswered
                failed[name] = f"load failed on worker {self.wid}: {exc}"
                self.failed[name] = failed[name]
                continue
            t1 = time.perf_counter()
            self.load_seconds += t1 - t0
            if self.prefetch:
                nxt = next((n for n in names[i + 1 :] if n != name), None)
                if nxt is not None:
                    self._start_prefetch(nxt, names[i + 1 :])
            out = engine.generate([req for _, _, req in work], sampling)
            for (qi, slot, _), text in zip(work, out):
                texts[(qi, slot)] = text
            self.usage[name] = self.usage.get(name, 0) + len(work)
            if self.release_after and not getattr(engine, "cheap_residency", False):
                engine.release()
            timings.append({"expert": name, "load_s": t1 - t0, "generate_s": time.perf_counter() - t1, "n": len(work),
                            "woke": woke})
        return {"texts": texts,
                "stats": {"wid": self.wid, "jobs": timings, "resident": self.resident(), "failed": failed,
                          "parked": self.parked()}}

    def resident(self) -> list[str]:
        return [n for n, e in self.engines.items() if e.loaded]

    def parked(self) -> list[str]:
        return [n for n, e in self.engines.items() if e.parked]

    def info(self) -> dict[str, Any]:
        return {
            "wid": self.wid,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            "resident": self.resident(),
            "parked": self.parked(),
            "loads": self.loads,
            "wakes": self.wakes,
            "prefetches": self.prefetches,
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
            # its only model: the executor never parks it, so it stays loaded between batches
            return agg.aggregate(task, questions, answers, LocalExecutor({self.engine.name: self.engine}), seed)
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
