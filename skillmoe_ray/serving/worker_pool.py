"""The worker pool as the scheduler sees it: one view per worker, calls with deadlines, loss and return.

Every call to a worker goes through :meth:`WorkerPool.call`, which gives up on
it when the worker's node dies or the call outlives its deadline and the
worker does not answer a look at its progress (a slow worker that answers is
given more time). A worker found lost is left out of planning until a probe
finds it again; then it reports what it holds and rejoins.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..scheduling.residency import Limits, ModelTraits, Tiers
from ..scheduling.timing import JobTimes
from . import metrics
from .actors import JOBS_GROUP
from .messages import WorkerState

log = logging.getLogger(__name__)

#: events the pool keeps (older ones are dropped)
EVENTS_KEPT = 500


class WorkerLost(Exception):
    """A worker stopped answering (its node died, or a job outlived its deadline): its jobs go elsewhere."""


@dataclass
class WorkerRecord:
    """What the scheduler believes about one worker (the dispatch policy is handed a plain snapshot of it,
    :class:`~skillmoe_ray.scheduling.dispatch.WorkerView`)."""

    #: what it holds once its calls in flight are done (exact between brings: the scheduler sends one at a time)
    tiers: Tiers = field(default_factory=Tiers)
    #: calls in flight, and prompts generating per expert
    inflight: int = 0
    running: Counter = field(default_factory=Counter)
    #: each generate call in flight: (expert, when it was sent)
    started: dict = field(default_factory=dict)
    #: the model being brought in, if any; drained: takes no new joins (older work waits for it)
    bringing: str | None = None
    draining: bool = False
    #: planned jobs' seconds (cost model, and from measured times; their deadlines are counted from the latter)
    pending_s: float = 0.0
    predicted_s: float = 0.0
    #: loads and wakes predicted for every job and bring sent
    predicted_loads: int = 0
    predicted_wakes: int = 0
    #: planned jobs sent and not yet answered, by sequence number (each names the one before it)
    planned: set = field(default_factory=set)
    seq: int = 0
    alive: bool = True
    node_id: str = ""
    #: set when it is found lost: every call waiting on it gives up at once
    lost: asyncio.Event | None = None
    lost_since: float = 0.0

    def predict(self, bring: str) -> None:
        self.predicted_loads += bring == "load"
        self.predicted_wakes += bring == "wake"


class WorkerPool:
    def __init__(self, workers: Sequence[Any], limits: Limits, times: JobTimes, job_timeout_factor: float = 4.0,
                 job_timeout_min_s: float = 30.0, probe_interval_s: float = 2.0):
        self.workers = list(workers)
        self.limits = limits
        self.times = times
        self.job_timeout_factor = job_timeout_factor
        self.job_timeout_min_s = job_timeout_min_s
        self.probe_interval_s = probe_interval_s
        self.views = {i: WorkerRecord() for i in range(len(self.workers))}
        #: expert -> why it is out of service (its load failed on a worker); routing avoids these
        self.unhealthy: dict[str, str] = {}
        #: the latest losses, returns, slow jobs, brings and drains, for the pool view and benchmarks
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS_KEPT)
        self.slow_jobs = 0
        self._prober: asyncio.Task | None = None
        #: called when a worker comes back (the scheduler dispatches to it)
        self.on_change: Any = None

    def adopt(self, states: Sequence[WorkerState]) -> None:
        """Take the workers' own account of what they hold (at start, after a bring, after a restart)."""
        for s in states:
            v = self.views[s.wid]
            cheap = [n for n in s.resident if self.limits.trait(n).cheap]
            v.tiers = Tiers([n for n in s.resident if n not in cheap], list(s.parked), cheap)
            v.node_id = s.node_id or v.node_id
            self.unhealthy.update(s.failed)

    def alive(self) -> list[int]:
        return [wid for wid, v in self.views.items() if v.alive]

    def free_in(self, wid: int, now: float) -> float:
        """Seconds until the worker's running calls should be done, from each expert's measured call time."""
        starts = self.views[wid].started
        return max((t + self.times.call_s(e) - now for e, t in starts.values()), default=0.0)

    def counts(self) -> dict[int, tuple[int, int]]:
        return {wid: (v.predicted_loads, v.predicted_wakes) for wid, v in self.views.items()}

    # ------------------------------------------------------------------ calls

    async def call(self, wid: int, method: str, args: tuple, expert: str, predicted_s: float) -> Any:
        """One call to a worker: its report, the exception it raised, or :class:`WorkerLost`."""
        self.ensure_prober()
        view = self.views[wid]
        if view.lost is None:
            view.lost = asyncio.Event()
        view.inflight += 1
        view.predicted_s += predicted_s
        deadline_s = self.job_timeout_min_s + self.job_timeout_factor * view.predicted_s
        ref = getattr(self.workers[wid], method).options(concurrency_group=JOBS_GROUP).remote(*args)
        lost = asyncio.ensure_future(view.lost.wait())
        fut = asyncio.ensure_future(_await(ref))
        try:
            while True:
                done, _ = await asyncio.wait({fut, lost}, timeout=deadline_s, return_when=asyncio.FIRST_COMPLETED)
                if done or not await self._working(wid, expert, deadline_s):
                    break
                # alive and working: slow is not lost; look again after another period
                deadline_s = self.job_timeout_min_s + self.job_timeout_factor * max(predicted_s, 1.0)
            if fut in done:
                try:
                    return fut.result()
                except Exception as exc:  # noqa: BLE001 - the worker died past its retries, or the job raised
                    if _actor_gone(exc):
                        self.lose(wid, f"{type(exc).__name__} running {expert}")
                        return WorkerLost(f"worker {wid} died running {expert}")
                    return exc
            why = "its node is gone" if lost in done else \
                f"a job of {expert} outlived its {deadline_s:.0f} s deadline and the worker does not answer"
            self.lose(wid, why)
            cancel(ref)
            return WorkerLost(f"worker {wid} lost: {why}")
        finally:
            lost.cancel()
            view.inflight -= 1
            view.predicted_s = max(0.0, view.predicted_s - predicted_s)

    async def _working(self, wid: int, expert: str, waited_s: float) -> bool:
        """Whether a worker whose job outlived its deadline is alive and working (it answers a look at
        its progress, which runs beside its jobs); a worker that does not answer in time is not."""
        try:
            ref = self.workers[wid].progress.options(concurrency_group="probe").remote()
            progress = await asyncio.wait_for(_await(ref), timeout=max(5.0, 2 * self.probe_interval_s))
        except Exception as exc:  # noqa: BLE001 - dead, hung, or unreachable
            log.warning("worker %d: a job of %s is past its %.0f s deadline and the worker does not answer (%s)",
                        wid, expert, waited_s, type(exc).__name__)
            return False
        self.slow_jobs += 1
        log.warning("worker %d: a job of %s is past its %.0f s deadline; the worker is alive and working "
                    "(%s for %.0f s), so it is given more time", wid, expert, waited_s,
                    progress.get("running") or "between jobs", progress.get("running_s", 0.0))
        self.events.append({"worker": wid, "event": "slow", "expert": expert, "at": time.time()})
        return True

    # ------------------------------------------------------------------ losing and regaining workers

    def lose(self, wid: int, why: str) -> None:
        """Stop planning on a worker: its calls in flight give up and their work goes to the others."""
        view = self.views[wid]
        if not view.alive:
            return
        view.alive = False
        view.lost_since = time.perf_counter()
        view.tiers = Tiers()  # whatever it held is gone or unknown; it reports again when it is back
        view.running.clear()
        view.started.clear()
        view.bringing, view.draining = None, False
        view.planned.clear()
        if view.lost is not None:
            view.lost.set()
        log.warning("worker %d lost (%s); %d of %d workers left", wid, why, len(self.alive()), len(self.views))
        self.events.append({"worker": wid, "event": "lost", "why": why, "at": time.time()})
        metrics.workers_alive(len(self.alive()))

    def _regain(self, wid: int, state: WorkerState) -> None:
        view = self.views[wid]
        out = time.perf_counter() - view.lost_since
        view.alive = True
        view.lost = asyncio.Event()
        view.pending_s = 0.0
        self.adopt([state])
        log.warning("worker %d is back after %.1f s; %d of %d workers", wid, out, len(self.alive()),
                    len(self.views))
        self.events.append({"worker": wid, "event": "back", "out_s": round(out, 3), "at": time.time()})
        metrics.workers_alive(len(self.alive()))
        if self.on_change is not None:
            self.on_change()

    def ensure_prober(self) -> None:
        if self.probe_interval_s > 0 and (self._prober is None or self._prober.done()):
            self._prober = asyncio.get_running_loop().create_task(self._probe_forever())

    async def stop_probing(self) -> None:
        """Cancel the health prober (its loop is about to stop: a task left pending would be destroyed)."""
        if self._prober is not None and not self._prober.done():
            self._prober.cancel()
            try:
                await self._prober
            except asyncio.CancelledError:
                pass
        self._prober = None

    async def _probe_forever(self) -> None:
        """Lost nodes from Ray's node table, idle workers by a ping; lost workers that answer again rejoin."""
        while True:
            await asyncio.sleep(self.probe_interval_s)
            try:
                await self.probe()
            except Exception:  # noqa: BLE001 - probing must never stop
                log.debug("probe failed", exc_info=True)

    async def probe(self) -> None:
        import ray

        try:
            nodes = await asyncio.to_thread(ray.nodes)
            dead_nodes = {n["NodeID"] for n in nodes if not n.get("Alive")}
        except Exception:  # noqa: BLE001 - no node table (outside a cluster): rely on pings
            dead_nodes = set()
        pings = {}
        for wid, v in self.views.items():
            if v.alive and v.node_id and v.node_id in dead_nodes:
                self.lose(wid, "its node died")
            elif not v.alive or v.inflight == 0:  # a busy worker is judged by its jobs' deadlines instead
                pings[wid] = asyncio.ensure_future(_await(self.workers[wid].state.remote()))
        if not pings:
            return
        await asyncio.wait(pings.values(), timeout=self.probe_interval_s * 2)
        for wid, fut in pings.items():
            v = self.views[wid]
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                if not v.alive:
                    self._regain(wid, fut.result())
                else:
                    v.node_id = fut.result().node_id or v.node_id
            else:
                fut.cancel()
                if v.alive and v.inflight == 0:
                    self.lose(wid, "it does not answer")


async def _await(ref: Any) -> Any:
    return await ref


def _actor_gone(exc: BaseException) -> bool:
    """Ray's errors for an actor that died or cannot be reached (as opposed to an error its method raised)."""
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & {"ActorDiedError", "ActorUnavailableError", "RayActorError", "ActorUnschedulableError"}) \
        and not names & {"RayTaskError"}


def cancel(ref: Any) -> None:
    try:
        import ray

        ray.cancel(ref)
    except Exception:  # noqa: BLE001 - already finished or not cancellable
        pass


def limits_from(traits: Mapping[str, Mapping[str, Any]], capacity: int, host_budget_gb: float | None,
                prefetch: bool, release_after: bool = False, device_gb: float | None = None) -> Limits:
    return Limits(max(1, capacity), host_budget_gb, {n: ModelTraits(**t) for n, t in traits.items()}, prefetch,
                  release_after, device_gb)


def limits_for(traits: Mapping[str, Mapping[str, Any]], budgets: Sequence[Mapping[str, Any]], prefetch: bool,
               release_after: bool = False) -> Limits:
    """The scheduler's limits from what the workers report of their budgets (the smallest of each, so a
    plan never counts on room one of them lacks)."""
    def smallest(key: str) -> Any:
        values = [b[key] for b in budgets]
        return None if any(v is None for v in values) else min(values, default=None)

    capacity = min((b["capacity"] for b in budgets), default=1)
    return limits_from(traits, capacity, smallest("host_budget_gb"), prefetch, release_after, smallest("device_gb"))
