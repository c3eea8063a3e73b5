"""Expert worker actors: the only place models live in a served deployment.

An :class:`ExpertWorker` owns one GPU (or CPU slot) and every engine of the
pool. It does what the scheduler decided and nothing more, in two ways:

* **Continuous** (online questions): :meth:`bring` brings one model in by the
  residency policy of :mod:`skillmoe_ray.scheduling.residency` (the same step
  the scheduler's dispatch policy predicts), and :meth:`generate` runs prompts
  on a model it holds. Many ``generate`` calls run at once (the actor's "jobs"
  concurrency group); an engine that batches continuously runs them together,
  and prompts that arrive while it generates join the running batch.
* **Planned** (a whole batch, offline or a cascade round): :meth:`run_job`
  brings a model in knowing the jobs that follow it on this worker (so it parks
  and prefetches for them) and runs its batch. A job names the one sent before
  it (``after``), and waits for it: Ray does not keep the order of calls to an
  actor that runs several at once.

A model is never parked or freed while a call generates on it. Each call
reports what the worker now holds.
These classes are plain Python; :mod:`.actors` wraps them with ``ray.remote``.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter
from dataclasses import asdict, replace
from typing import Any, Hashable, Sequence

from ..config import ExpertConfig
from ..engines.base import Engine, GenerationRequest, SamplingSettings
from ..engines.merging import MergedCalls
from ..engines.registry import create_engine
from ..errors import EngineError, SkillMoEError
from ..scheduling.residency import Limits, ModelTraits, Step, Tiers, after_job, step, traits_of
from ..tasks.catalogue import Catalogue
from . import metrics
from .devices import worker_budget
from .messages import BringReport, JobReport, JobTiming, WorkerState

#: (item key, request): the key comes back with the item's text
Item = tuple[Hashable, GenerationRequest]
Job = tuple[str, list[tuple[int, int, GenerationRequest]]]
#: a planned job waits this long for the job sent before it to arrive; past it (that job went to a process
#: that has since died) it runs anyway
ORDER_WAIT_S = 10.0


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
        #: jobs running now: expert -> (calls, when the oldest started), for progress looks from the scheduler
        self._cond = threading.Condition()
        self._generating: Counter[str] = Counter()
        self._started: dict[str, float] = {}
        #: one residency change at a time; engines that cannot batch continuously: calls merged into batches
        self._residency = threading.Lock()
        self._merged: dict[str, MergedCalls] = {}
        #: planned jobs seen and finished, by sequence number (their order is the scheduler's)
        self._seen: set[int] = set()
        self._finished: set[int] = set()

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
        """Every model's traits, for the scheduler's copy of the residency policy."""
        return {n: asdict(t) for n, t in self.limits.traits.items()}

    def budgets(self) -> dict[str, Any]:
        """The worker's budgets, for the scheduler's copy of the residency policy."""
        return self.budget.as_dict()

    # ------------------------------------------------------------------ continuous

    def bring(self, name: str, upcoming: Sequence[str] = ()) -> BringReport:
        """Bring one model in, evicting by the residency policy with the scheduler's guess at what comes
        next (it parks what will be asked for again, and prefetches the likeliest next model)."""
        t0 = time.perf_counter()
        st, why = self._bring(name, list(upcoming))
        if why is not None:
            return BringReport(name, "load", time.perf_counter() - t0, self.state(), failed=why)
        assert st is not None
        return BringReport(name, st.bring, time.perf_counter() - t0, self.state())

    def generate(self, name: str, items: Sequence[Item], sampling: SamplingSettings) -> JobReport:
        """Prompts on a model this worker holds, beside whatever else runs on it."""
        with self._cond:
            engine = self.engines.get(name)
            if engine is None or not engine.loaded or not self.tiers.holds(name) or name in self.tiers.host:
                return JobReport(name, state=self.state(), not_resident=True)
            self._begin(name)
        try:
            t0 = time.perf_counter()
            texts, errors, usage = self._generate(engine, items, sampling)
            timing = JobTiming(name, len(items), "resident", 0.0, time.perf_counter() - t0)
        finally:
            self._end(name)
        return JobReport(name, texts, errors, usage, self.state(), timing)

    # ------------------------------------------------------------------ planned

    def run_job(self, name: str, items: Sequence[Item], sampling: SamplingSettings,
                upcoming: Sequence[str] = (), seq: int | None = None, after: int | None = None) -> JobReport:
        """One planned job: residency decisions for it (knowing the jobs that follow), then its batch.

        A model that fails to load leaves its items unanswered and is reported in ``failed``.
        """
        self._wait_for(after)
        if seq is not None:
            with self._cond:
                self._seen.add(seq)
        try:
            return self._run_job(name, items, sampling, upcoming)
        finally:
            if seq is not None:
                with self._cond:
                    self._finished.add(seq)
                    self._cond.notify_all()

    def _wait_for(self, after: int | None) -> None:
        if after is None:
            return
        with self._cond:
            deadline = time.monotonic() + ORDER_WAIT_S
            while after not in self._finished:
                left = deadline - time.monotonic()
                if after not in self._seen and left <= 0:
                    return
                self._cond.wait(timeout=max(0.01, left) if after not in self._seen else 1.0)

    def _run_job(self, name: str, items: Sequence[Item], sampling: SamplingSettings,
                 upcoming: Sequence[str]) -> JobReport:
        t0 = time.perf_counter()
        st, why = self._bring(name, list(upcoming))
        if why is not None:
            return JobReport(name, state=self.state(), failed={name: why}, timing=JobTiming(name, len(items)))
        assert st is not None
        t1 = time.perf_counter()
        engine = self.engines[name]
        with self._cond:
            self._begin(name)
        try:
            texts, errors, usage = self._generate(engine, items, sampling)
        finally:
            self._end(name)
        with self._residency:
            if after_job(self.tiers, name, self.limits):
                engine.release()
        timing = JobTiming(name, len(items), st.bring, t1 - t0, time.perf_counter() - t1)
        return JobReport(name, texts, errors, usage, self.state(), timing)

    # ------------------------------------------------------------------ the two halves of a job

    def _bring(self, name: str, upcoming: list[str]) -> tuple[Step | None, str | None]:
        """Residency decisions for ``name`` and the load; (the step, None) or (None, why it failed)."""
        t0 = time.perf_counter()
        st: Step | None = None
        with self._residency:
            try:
                engine = self._engine(name)
                tiers = self.tiers.copy()
                st = step(tiers, name, upcoming, self.limits)
                with self._cond:  # a model is put away only when no call generates on it
                    self._cond.wait_for(lambda: not any(self._generating[v] for _, v in st.evictions))
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
                return None, why
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
        return st, None

    def _begin(self, name: str) -> None:
        if not self._generating[name]:
            self._started[name] = time.perf_counter()
        self._generating[name] += 1

    def _end(self, name: str) -> None:
        with self._cond:
            self._generating[name] -= 1
            if not self._generating[name]:
                self._started.pop(name, None)
            self._cond.notify_all()

    def _generate(self, engine: Engine, items: Sequence[Item], sampling: SamplingSettings) -> tuple[dict, dict, dict]:
        """The batch's texts, per-item errors and token counts; a request the engine refuses (a recording it
        lacks) fails alone, not its batch."""
        usage: dict[Any, tuple[int, int]] = {}

        def run(part: Sequence[Item]) -> list[str]:
            reqs = [req for _, req in part]
            if engine.continuous:
                out, counted = _generate_counted(engine, reqs, sampling)
            else:  # merged with the calls that queue while its batch runs
                with self._cond:
                    merger = self._merged.setdefault(
                        engine.name, MergedCalls(lambda r, s, e=engine: _generate_counted(e, r, s)))
                out, counted = merger.run(reqs, sampling)
            usage.update({key: u for (key, _), u in zip(part, counted)})
            return out

        try:
            texts, errors = {key: text for (key, _), text in zip(items, run(items))}, {}
        except SkillMoEError:
            if len(items) == 1:
                raise
            texts, errors = {}, {}
            for key, req in items:
                try:
                    texts[key] = run([(key, req)])[0]
                except SkillMoEError as exc:
                    errors[key] = str(exc)
        with self._cond:
            self.usage[engine.name] = self.usage.get(engine.name, 0) + len(items)
            self.jobs_done += 1
        return texts, errors, usage

    def run(self, jobs: Sequence[Job], sampling: SamplingSettings) -> dict[str, Any]:
        """Run a whole job list in order; returns {"texts": {(qi, slot): text}, "stats": ...}."""
        texts: dict[Any, str] = {}
        timings: list[dict[str, Any]] = []
        failed: dict[str, str] = {}
        names = [name for name, _ in jobs]
        for i, (name, work) in enumerate(jobs):
            r = self.run_job(name, [((qi, slot), req) for qi, slot, req in work], sampling, names[i + 1:])
            texts.update(r.texts)
            failed.update(r.failed)
            if not r.failed and r.timing is not None:
                timings.append(r.timing.as_dict())
        return {"texts": texts,
                "stats": {"wid": self.wid, "jobs": timings, "resident": self.resident(), "failed": failed,
                          "parked": self.parked()}}

    # ------------------------------------------------------------------ state

    def resident(self) -> list[str]:
        return self.tiers.cheap + self.tiers.device

    def progress(self) -> dict[str, Any]:
        """What the worker is doing now. Called in the actor's "probe" concurrency group, beside running
        jobs: an answer means the process is alive and its jobs are being worked on, however slow."""
        with self._cond:
            running = {n: c for n, c in self._generating.items() if c}
            oldest = min(self._started.values(), default=None)
        return {"wid": self.wid, "running": ", ".join(sorted(running)) or None,
                "calls": sum(running.values()),
                "running_s": time.perf_counter() - oldest if oldest is not None else 0.0,
                "jobs_done": self.jobs_done}

    def parked(self) -> list[str]:
        return list(self.tiers.host)

    def state(self) -> WorkerState:
        """What the scheduler needs to plan on this worker, also after the scheduler restarts."""
        return WorkerState(self.wid, _node_id(), self.resident(), self.parked(), self.loads, self.wakes,
                           self.jobs_done, dict(self.failed))

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


def _generate_counted(engine: Engine, requests: list[GenerationRequest],
                      sampling: SamplingSettings) -> tuple[list[str], list[tuple[int, int]]]:
    engine._last_usage = []
    out = engine.generate(requests, sampling)
    return out, engine.usage(requests, out)


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
