"""Worker actors: the only place models live in a served deployment.

An :class:`ExpertWorker` owns one GPU (or CPU slot) and every engine of the
pool. It does what the scheduler decided and nothing more: it runs the expert
jobs it is sent, in order, and before each one applies the residency policy of
:mod:`skillmoe_ray.scheduling.residency` (the same function the planner
simulates) to the upcoming jobs it was told about, so the planner's predicted
loads and wakes are the ones that happen. Each job reports back as soon as it
is done, with what the worker now holds.
The :class:`AggregatorWorker` keeps a task's aggregator model resident.
These classes are plain Python; :mod:`.scheduler` wraps them with ``ray.remote``.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, replace
from typing import Any, Hashable, Iterator, Sequence

from ..aggregators import LLMAggregator, is_agreement
from ..config import ExpertConfig
from ..engines.base import Engine, GenerationRequest, SamplingSettings
from ..engines.registry import create_engine
from ..errors import EngineError, SkillMoEError
from ..tasks import Catalogue, catalogue_or_builtin
from . import metrics
from ..scheduling.residency import Limits, ModelTraits, Step, Tiers, after_job, step, traits_of
from .devices import gpu_bytes, worker_budget

#: (item key, request): the key comes back with the item's text
Item = tuple[Hashable, GenerationRequest]
Job = tuple[str, list[tuple[int, int, GenerationRequest]]]


class ExpertWorker:
    def __init__(self, wid: int, experts: Sequence[dict[str, Any]], catalogue: Catalogue | None = None,
                 capacity: int | None = 1, host_budget_gb: float | None = None, prefetch: bool = False,
                 release_after: bool = False, gpus: float = 0.0, gpu_memory_gb: float | None = None,
                 gpu_memory_fraction: float = 0.92, workers_on_node: int = 1):
        self.wid = wid
        self.configs = {e["name"]: ExpertConfig.model_validate(e) for e in experts}
        #: the deployment's tasks, shipped with the actor (recorded and simulated engines read their data)
        self.catalogue = catalogue
        self.engines: dict[str, Engine] = {}
        self.tiers = Tiers()
        #: its device's bytes for models and its host bytes for parked ones (serving/devices.py)
        self.budget = worker_budget(gpus, gpu_memory_gb, gpu_memory_fraction, capacity, host_budget_gb,
                                    workers_on_node)
        self.limits = Limits(self.budget.capacity, self.budget.host_budget_gb,
                             {n: self._traits(n) for n in self.configs}, prefetch, release_after,
                             self.budget.device_gb)
        self.loads = 0
        self.wakes = 0
        self.prefetches = 0
        self.load_seconds = 0.0
        self.jobs_done = 0
        self.usage: dict[str, int] = {}
        self.failed: dict[str, str] = {}
        #: the job running now: (expert, when it started), for progress looks from the scheduler
        self.running: tuple[str, float] | None = None

    # ------------------------------------------------------------------ engines

    def _engine(self, name: str) -> Engine:
        if name not in self.engines:
            if name not in self.configs:
                raise EngineError(f"worker {self.wid}: no expert named {name!r}")
            engine = create_engine(self.configs[name], self.catalogue)
            engine.device_bytes = self.budget.gpu_bytes
            self.engines[name] = engine
        return self.engines[name]

    def _traits(self, name: str) -> ModelTraits:
        size = self.configs[name].size_gb
        try:
            e = self._engine(name)
        except Exception:  # noqa: BLE001 - a broken expert fails at load, where it is reported
            return ModelTraits(size_gb=float(size or 0.0))
        return traits_of(e, size)

    def add_engine(self, engine: Engine) -> None:
        """Put a ready-made engine in the pool (benchmarks and tests build their own)."""
        engine.device_bytes = self.budget.gpu_bytes
        self.engines[engine.name] = engine
        self.limits = replace(self.limits, traits={**self.limits.traits, engine.name: traits_of(engine)})

    def traits(self) -> dict[str, dict[str, Any]]:
        """Every model's traits, for the planner's copy of the residency policy."""
        return {n: asdict(t) for n, t in self.limits.traits.items()}

    def budgets(self) -> dict[str, Any]:
        """The worker's budgets, for the planner's copy of the residency policy."""
        return self.budget.as_dict()

    # ------------------------------------------------------------------ jobs

    def run_job(self, name: str, items: Sequence[Item], sampling: SamplingSettings,
                upcoming: Sequence[str] = ()) -> dict[str, Any]:
        """One expert job: residency decisions for it (knowing the jobs that follow), then its batch.

        Returns {"texts": {key: text}, "failed": {expert: why}, "job": timings, "state": tiers}.
        A model that fails to load leaves its items unanswered and is reported in ``failed``.
        """
        t0 = time.perf_counter()
        self.running = (name, t0)
        try:
            return self._run_job(name, items, sampling, upcoming, t0)
        finally:
            self.running = None

    def _run_job(self, name: str, items: Sequence[Item], sampling: SamplingSettings, upcoming: Sequence[str],
                 t0: float) -> dict[str, Any]:
        tiers = self.tiers.copy()
        st: Step | None = None
        try:
            engine = self._engine(name)
            st = step(tiers, name, list(upcoming), self.limits)
            for kind, victim in st.evictions:
                (self.engines[victim].park if kind == "park" else self.engines[victim].release)()
                metrics.evicted(self.wid, kind)
            self.tiers = Tiers(tiers.device, tiers.host, tiers.cheap)
            if not engine.loaded:
                engine.load()
        except Exception as exc:  # the expert is out of service; its items go back unanswered
            self.tiers.device = [n for n in self.tiers.device if n != name]
            self.tiers.cheap = [n for n in self.tiers.cheap if n != name]
            if st is not None and st.prefetch is not None:  # decided, never started
                self.tiers.host = [n for n in self.tiers.host if n != st.prefetch]
            why = f"load failed on worker {self.wid}: {exc}"
            self.failed[name] = why
            return {"texts": {}, "failed": {name: why}, "job": {"expert": name, "n": len(items), "failed": True},
                    "state": self.state()}
        assert st is not None
        self.loads += st.bring == "load"
        self.wakes += st.bring == "wake"
        t1 = time.perf_counter()
        self.load_seconds += t1 - t0
        metrics.brought_in(self.wid, st.bring, t1 - t0)
        for f in st.prefetch_frees:
            self.engines[f].release()
        if st.prefetch is not None:
            if self._engine(st.prefetch).prefetch():
                self.prefetches += 1
            elif st.prefetch in self.tiers.host:
                self.tiers.host.remove(st.prefetch)
        texts, errors, usage = self._generate(engine, items, sampling)
        self.usage[name] = self.usage.get(name, 0) + len(items)
        if after_job(self.tiers, name, self.limits):
            engine.release()
        self.jobs_done += 1
        return {"texts": texts, "failed": {}, "errors": errors, "usage": usage,
                "job": {"expert": name, "load_s": t1 - t0, "generate_s": time.perf_counter() - t1, "n": len(items),
                        "bring": st.bring, "woke": st.bring == "wake"},
                "state": self.state()}

    @staticmethod
    def _generate(engine: Engine, items: Sequence[Item], sampling: SamplingSettings) -> tuple[dict, dict, dict]:
        """The batch's texts, per-item errors and token counts; a request the engine refuses (a recording it
        lacks) fails alone, not its batch."""
        usage: dict[Any, tuple[int, int]] = {}

        def run(part: Sequence[Item]) -> list[str]:
            reqs = [req for _, req in part]
            engine._last_usage = []
            out = engine.generate(reqs, sampling)
            usage.update({key: u for (key, _), u in zip(part, engine.usage(reqs, out))})
            return out

        try:
            return {key: text for (key, _), text in zip(items, run(items))}, {}, usage
        except SkillMoEError:
            if len(items) == 1:
                raise
        texts, errors = {}, {}
        for key, req in items:
            try:
                texts[key] = run([(key, req)])[0]
            except SkillMoEError as exc:
                errors[key] = str(exc)
        return texts, errors, usage

    def run(self, jobs: Sequence[Job], sampling: SamplingSettings) -> dict[str, Any]:
        """Run a whole job list in order; returns {"texts": {(qi, slot): text}, "stats": ...}."""
        texts: dict[Any, str] = {}
        timings: list[dict[str, Any]] = []
        failed: dict[str, str] = {}
        names = [name for name, _ in jobs]
        for i, (name, work) in enumerate(jobs):
            r = self.run_job(name, [((qi, slot), req) for qi, slot, req in work], sampling, names[i + 1:])
            texts.update(r["texts"])
            failed.update(r["failed"])
            if not r["failed"]:
                timings.append(r["job"])
        return {"texts": texts,
                "stats": {"wid": self.wid, "jobs": timings, "resident": self.resident(), "failed": failed,
                          "parked": self.parked()}}

    # ------------------------------------------------------------------ state

    def resident(self) -> list[str]:
        return self.tiers.cheap + self.tiers.device

    def progress(self) -> dict[str, Any]:
        """What the worker is doing now. Called in the actor's "probe" concurrency group, beside a running
        job: an answer means the process is alive and its job is being worked on, however slow."""
        running = self.running
        return {"wid": self.wid, "running": running[0] if running else None,
                "running_s": time.perf_counter() - running[1] if running else 0.0, "jobs_done": self.jobs_done}

    def parked(self) -> list[str]:
        return list(self.tiers.host)

    def state(self) -> dict[str, Any]:
        """What the scheduler needs to plan on this worker, also after the scheduler restarts."""
        return {"wid": self.wid, "node_id": _node_id(), "resident": self.resident(), "parked": self.parked(),
                "loads": self.loads,
                "wakes": self.wakes, "jobs_done": self.jobs_done, "failed": dict(self.failed)}

    def info(self) -> dict[str, Any]:
        return {
            "wid": self.wid,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "node_id": _node_id(),
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


def _cancelled() -> bool:
    """Whether Ray was asked to cancel the task running here (False outside a Ray worker)."""
    try:
        import ray

        return ray.is_initialized() and ray.get_runtime_context().is_canceled()
    except Exception:  # noqa: BLE001 - a driver, or an async actor
        return False


def _node_id() -> str:
    """The Ray node this process runs on ("" outside Ray: tests and benchmarks drive workers directly)."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    except Exception:  # noqa: BLE001
        return ""


class AggregatorWorker:
    """Merges the experts' answers; holds the aggregator model when there is one."""

    def __init__(self, mode: str, ranking_by_task: dict[str, list[str]], weights_by_task: dict[str, dict[str, float]],
                 llm_expert: dict[str, Any] | None = None, catalogue: Catalogue | None = None,
                 max_tokens: int = 4096, gpus: float = 0.0, gpu_memory_gb: float | None = None,
                 skip_when_agreed: bool = False):
        self.mode = mode
        self.catalogue = catalogue_or_builtin(catalogue)
        self.ranking_by_task = ranking_by_task
        self.weights_by_task = weights_by_task
        self.engine: Engine | None = None
        self.llm: LLMAggregator | None = None
        self.loads = 0
        if llm_expert is not None:
            self.engine = create_engine(ExpertConfig.model_validate(llm_expert), self.catalogue)
            # its engine reserves its own footprint of the GPU it was given (a share of one, beside a worker)
            self.engine.device_bytes = gpu_bytes(gpus, gpu_memory_gb)
            self.engine.load()
            self.loads += 1
            self.llm = LLMAggregator(self.engine.name, max_tokens, skip_when_agreed)

    def aggregate(self, task_name: str, questions: list, answers: list, seed: int) -> list[tuple[str | None, str, str]]:
        from ..execution import LocalExecutor
        from ..aggregators import VoteAggregator, WeightedVoteAggregator

        task = self.catalogue.get(task_name)
        if self.mode == "llm" and self.engine is not None and self.llm is not None:
            # its only model: the executor never parks it, so it stays loaded between batches
            self.engine._last_usage = []
            return self.llm.aggregate(task, questions, answers, LocalExecutor({self.engine.name: self.engine}), seed)
        ranking = self.ranking_by_task.get(task_name, [])
        if self.mode == "weighted_vote":
            agg = WeightedVoteAggregator(ranking, self.weights_by_task.get(task_name, {}))
        else:
            agg = VoteAggregator(ranking)
        return agg.aggregate(task, questions, answers, None, seed)  # type: ignore[arg-type]

    def aggregate_with_usage(self, task_name: str, questions: list, answers: list,
                             seed: int) -> tuple[list[tuple[str | None, str, str]], list[tuple[int, int]]]:
        """The merged answers, and the aggregator model's (prompt, completion) tokens per question."""
        merged = self.aggregate(task_name, questions, answers, seed)
        return merged, self._usage(merged)

    def _usage(self, merged: list[tuple[str | None, str, str]]) -> list[tuple[int, int]]:
        """The aggregator model's (prompt, completion) tokens of its last call, one pair per merged answer."""
        if self.engine is None or self.mode != "llm":
            return [(0, 0)] * len(merged)
        asked = [i for i, (_, _, who) in enumerate(merged) if not is_agreement(who)]
        usage = list(self.engine._last_usage) if asked else []
        if len(usage) != len(asked):  # the engine counted nothing: estimate from the texts
            from ..engines.base import estimate_tokens

            usage = [(0, estimate_tokens(merged[i][1])) for i in asked]
        out = [(0, 0)] * len(merged)  # an agreement asked the model nothing
        for i, u in zip(asked, usage):
            out[i] = u
        return out

    def aggregate_stream(self, task_name: str, question: Any, answers: list, seed: int) -> Iterator[Any]:
        """One question, streamed (a Ray streaming generator: call with ``num_returns="streaming"``).

        Yields the aggregator model's text deltas (``str``) as it writes them, then, last,
        ``(merged, usage)`` as :meth:`aggregate_with_usage` returns them for this one question; the
        answer in it is read from the whole text, as the non-streaming call reads it. A vote yields
        no deltas, only that last item. A cancelled call stops generating at its next delta.
        """
        if self.mode != "llm" or self.engine is None:
            yield self.aggregate_with_usage(task_name, [question], [answers], seed)
            return
        assert self.llm is not None
        pieces = self.llm.stream(self.catalogue.get(task_name), question, answers, self.engine, seed)
        while True:
            try:
                piece = next(pieces)
            except StopIteration as stop:
                merged = [stop.value]
                break
            if _cancelled():
                pieces.close()  # the engine stops generating (vLLM aborts the request)
                return
            yield piece
        yield merged, self._usage(merged)

    def info(self) -> dict[str, Any]:
        return {"mode": self.mode, "model": self.engine.name if self.engine else None,
                "resident": bool(self.engine and self.engine.loaded), "pid": os.getpid(), "loads": self.loads,
                "tasks": sorted(self.ranking_by_task), "node_id": _node_id(),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
