"""The scheduler: the one owner of the model pool.

Ingress replicas are stateless: they validate, find skills and recruit, then
hand each routed question to the scheduler. The scheduler forms expert-grouped
micro-batches from the questions of *all* replicas, plans each batch over the
worker actors with :func:`~skillmoe_ray.scheduling.planner.plan_grouped` on what
every worker will hold once its queued jobs are done (the residency policy's
prediction, so overlapping batches never plan against a stale snapshot), and
sends each worker its jobs one by one. Every job reports back as it finishes; a
question is aggregated (by its task's aggregator actor) and answered as soon as
its own experts are in, not when its whole batch is.

All state lives on one asyncio event loop, so nothing here needs a lock. The
class is plain Python over Ray actor handles: the Serve deployment in
:mod:`.deployments` wraps it, and the benchmarks drive it directly through
:class:`RayExecutor`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Hashable, Mapping, Sequence

from ..aggregators import VoteAggregator
from ..engines.base import GenerationRequest, SamplingSettings
from ..errors import EngineError, SkillMoEError
from ..execution import ExpertPlan, describe_unhealthy, substitute_unhealthy
from ..solution import ExpertAnswer
from ..scheduling.planner import Assignment, Costs, WorkerState, plan_grouped
from ..scheduling.residency import Limits, ModelTraits, Tiers
from ..scheduling.timing import JobTimes
from ..tasks import Catalogue, Question, catalogue_or_builtin
from . import metrics
from .http import user_error

log = logging.getLogger(__name__)

Item = tuple[Hashable, GenerationRequest]


class Overloaded(SkillMoEError):
    """The pool has as many questions admitted as it may hold; the caller should retry shortly."""


class Unavailable(SkillMoEError):
    """No worker of the pool is reachable now (their nodes are gone); the caller should retry shortly."""


class WorkerLost(Exception):
    """A worker stopped answering (its node died, or a job outlived its deadline): its jobs go elsewhere."""


@dataclass
class Work:
    """One routed question, as an ingress replica hands it over."""

    question: Question
    experts: list[str]
    request: GenerationRequest
    sampling: SamplingSettings
    seed: int
    #: fallback order for substitutes when an expert is out of service (best first)
    ranking: list[str]
    #: one expert asked by name: its answer is the answer, no aggregator
    direct: bool = False


@dataclass
class _Open:
    """A question between admission and its answer."""

    id: int
    work: Work
    future: asyncio.Future
    admitted: float
    answers: dict[int, ExpertAnswer] = field(default_factory=dict)
    dispatched: float = 0.0
    attempts: int = 0
    #: experts as asked (substitutes replace unhealthy ones)
    experts: list[str] = field(default_factory=list)
    batch_size: int = 0
    #: prompt and completion tokens of every model call made for it
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: a streamed question's events, in order (stages reached, the aggregator's text); None when not streamed
    events: asyncio.Queue | None = None

    def emit(self, event: dict[str, Any]) -> None:
        if self.events is not None and not self.future.done():
            self.events.put_nowait(event)


@dataclass
class _WorkerView:
    """What the scheduler believes about one worker: what it will hold after its queued jobs."""

    tiers: Tiers = field(default_factory=Tiers)
    pending_s: float = 0.0
    #: the queued jobs' predicted seconds from measured times (their deadlines are counted from this)
    predicted_s: float = 0.0
    inflight: int = 0
    #: jobs sent so far (the last one sent reports the worker's state after all of them)
    sent: int = 0
    #: residency predicted by the planner, summed over every job sent
    predicted_loads: int = 0
    predicted_wakes: int = 0
    #: False from the moment it is found lost until it answers a probe again
    alive: bool = True
    node_id: str = ""
    #: set when it is found lost: every job waiting on it gives up at once
    lost: asyncio.Event | None = None
    lost_since: float = 0.0


def _split_items(items: Mapping[str, list[Item]], assignment: Assignment) -> dict[int, list[tuple[str, list[Item]]]]:
    """Each worker's jobs with the items it runs: an expert split over workers is cut in order."""
    offsets: dict[str, int] = {}
    out: dict[int, list[tuple[str, list[Item]]]] = {}
    for wid, experts in assignment.jobs.items():
        out[wid] = []
        for e in experts:
            share = assignment.shares.get(wid, {}).get(e, len(items[e]))
            start = offsets.get(e, 0)
            out[wid].append((e, items[e][start:start + share]))
            offsets[e] = start + share
    return out


class Scheduler:
    """Owns the workers' queues and residency, plans batches, and answers each question when its experts are done."""

    def __init__(self, workers: Sequence[Any], limits: Limits, cost: Costs,
                 aggregators: Mapping[str, Any] | None = None, aggregator_names: Mapping[str, str] | None = None,
                 batch_window_s: float = 0.05, max_batch_size: int = 64, max_concurrent_batches: int = 2,
                 max_pending: int = 10**9, aggregate_timeout_s: float = 600.0, attempts: int = 3,
                 job_timeout_factor: float = 4.0, job_timeout_min_s: float = 30.0, probe_interval_s: float = 2.0,
                 catalogue: Catalogue | None = None):
        self.workers = list(workers)
        #: the deployment's tasks (answers are read by their task's format)
        self.catalogue = catalogue_or_builtin(catalogue)
        self.limits = limits
        self.cost = cost
        #: task -> aggregator actor; task -> its aggregator's name (for answers and the pool view)
        self.aggregators = dict(aggregators or {})
        self.aggregator_names = dict(aggregator_names or {})
        self.batch_window_s = batch_window_s
        self.max_batch_size = max_batch_size
        self.max_concurrent_batches = max(1, max_concurrent_batches)
        self.max_pending = max_pending
        self.aggregate_timeout_s = aggregate_timeout_s
        self.attempts = attempts
        #: a job past min_s + factor x its predicted finish (from measured times) has its worker checked:
        #: lost if it does not answer, given another period if it is alive and working
        self.job_timeout_factor = job_timeout_factor
        self.job_timeout_min_s = job_timeout_min_s
        #: per expert, load, wake and decode-step times the workers measured
        self.times = JobTimes({e: cost.load(e) for e in limits.traits}, {e: cost.wake(e) for e in limits.traits})
        #: jobs that outlived their deadline on a worker that was alive and working
        self.slow_jobs = 0
        self.probe_interval_s = probe_interval_s
        self.views = {i: _WorkerView() for i in range(len(self.workers))}
        #: (worker, seconds it was out) for every loss and return, for the pool view and benchmarks
        self.events: list[dict[str, Any]] = []
        self._prober: asyncio.Task | None = None
        #: expert -> why it is out of service (its load failed on a worker); routing avoids these
        self.unhealthy: dict[str, str] = {}
        self.usage: Counter[str] = Counter()
        self.served = 0
        self.batches = 0
        self.last_assignment: Assignment | None = None
        self._queue: list[_Open] = []
        self._wakeup: asyncio.Event | None = None
        self._former: asyncio.Task | None = None
        self._batches_in_flight = 0
        self._open = 0
        self._ids = 0
        self._by_id: dict[int, _Open] = {}

    # ------------------------------------------------------------------ state

    def adopt(self, states: Sequence[dict[str, Any]]) -> None:
        """Take the workers' own account of what they hold (at start, and after a restart of the scheduler)."""
        for s in states:
            v = self.views[s["wid"]]
            cheap = [n for n in s["resident"] if self.limits.trait(n).cheap]
            v.tiers = Tiers([n for n in s["resident"] if n not in cheap], list(s["parked"]), cheap)
            v.node_id = s.get("node_id", v.node_id)
            self.unhealthy.update(s.get("failed", {}))

    @property
    def expert_names(self) -> list[str]:
        return list(self.limits.traits)

    @property
    def pending(self) -> int:
        return self._open

    # ------------------------------------------------------------------ dispatch

    def alive_workers(self) -> list[int]:
        return [wid for wid, v in self.views.items() if v.alive]

    def _dispatch(self, items: Mapping[str, list[Item]], sampling: SamplingSettings) -> list[asyncio.Future]:
        """Plan ``items`` (expert -> prompts) over the live workers and send each worker its jobs in order.

        Returns one future per job, resolving to (expert, items, result dict or the exception); a job whose
        worker is lost resolves to :class:`WorkerLost`, and the caller sends its items again.
        """
        self._ensure_prober()
        alive = self.alive_workers()
        if not alive:
            lost = len(self.views)
            raise Unavailable(f"no worker of the pool is reachable ({lost} of {lost} lost with their nodes); "
                              "the pool grows back when the cluster has room for its workers again - retry shortly")
        work = {e: len(v) for e, v in items.items() if v}
        states = [WorkerState(wid, tuple(self.views[wid].tiers.cheap + self.views[wid].tiers.device),
                              self.views[wid].pending_s, self.limits.capacity, tuple(self.views[wid].tiers.host))
                  for wid in alive]
        cost = self.cost.for_batch(sampling.max_tokens, {e: [req for _, req in v] for e, v in items.items() if v})
        assignment = plan_grouped(work, states, cost, limits=self.limits)
        self.last_assignment = assignment
        futures: list[asyncio.Future] = []
        for wid, jobs in _split_items(items, assignment).items():
            jobs = [(e, part) for e, part in jobs if part]
            if not jobs:
                continue
            view = self.views[wid]
            if view.lost is None:
                view.lost = asyncio.Event()
            outcome = assignment.predicted[wid]
            view.tiers = outcome.tiers.copy()
            view.predicted_loads += outcome.loads
            view.predicted_wakes += outcome.wakes
            names = [e for e, _ in jobs]
            for i, ((e, part), bring) in enumerate(zip(jobs, outcome.brings)):
                seconds = (0.0 if bring == "resident" else cost.wake(e) if bring == "wake" else cost.load(e)) \
                    + cost.generate(e, len(part))
                predicted = self.times.predict(e, bring, sampling.max_tokens)
                view.pending_s += seconds
                view.predicted_s += predicted
                view.inflight += 1
                deadline = self.job_timeout_min_s + self.job_timeout_factor * view.predicted_s
                ref = self.workers[wid].run_job.remote(e, part, sampling, names[i + 1:])
                view.sent += 1
                futures.append(asyncio.ensure_future(self._job(wid, e, part, ref, seconds, deadline, predicted,
                                                               view.sent)))
        return futures

    async def _job(self, wid: int, expert: str, items: list[Item], ref: Any, seconds: float,
                   deadline_s: float = 1e9, predicted_s: float = 0.0, index: int = 0) -> tuple:
        view = self.views[wid]
        assert view.lost is not None
        lost = asyncio.ensure_future(view.lost.wait())
        fut = asyncio.ensure_future(_await(ref))
        try:
            while True:
                done, _ = await asyncio.wait({fut, lost}, timeout=deadline_s, return_when=asyncio.FIRST_COMPLETED)
                if done or not await self._working(wid, expert, deadline_s):
                    break
                # alive and working: slow is not lost; look again after another period
                deadline_s = self.job_timeout_min_s + self.job_timeout_factor * max(predicted_s, seconds)
            if fut in done:
                try:
                    result: Any = fut.result()
                except Exception as exc:  # noqa: BLE001 - the worker died past its retries, or the job raised
                    result = exc
                    if _actor_gone(exc):
                        self._lose(wid, f"{type(exc).__name__} running {expert}")
                        result = WorkerLost(f"worker {wid} died running {expert}")
            else:
                why = "its node is gone" if lost in done else \
                    f"a job of {expert} outlived its {deadline_s:.0f} s deadline and the worker does not answer"
                self._lose(wid, why)
                _cancel(ref)
                result = WorkerLost(f"worker {wid} lost: {why}")
        finally:
            lost.cancel()
            view.inflight -= 1
            view.pending_s = max(0.0, view.pending_s - seconds)
            view.predicted_s = max(0.0, view.predicted_s - predicted_s)
        if isinstance(result, dict):
            if "job" in result and not result.get("failed"):
                self.times.observe(expert, result["job"], [c for _, c in (result.get("usage") or {}).values()])
            if result.get("failed"):
                self.unhealthy.update(result["failed"])
                metrics.unhealthy(len(self.unhealthy))
            # nothing queued: the worker's own account is the truth. Only the last job sent has it: an earlier
            # job's report can arrive after the last one's (both in one turn of the loop), with an older state
            if view.inflight == 0 and index == view.sent:
                self.adopt([result["state"]])
        return expert, items, result

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

    def _lose(self, wid: int, why: str) -> None:
        """Stop planning on a worker: its queued jobs give up and go to the others."""
        view = self.views[wid]
        if not view.alive:
            return
        view.alive = False
        view.lost_since = time.perf_counter()
        view.tiers = Tiers()  # whatever it held is gone or unknown; it reports again when it is back
        if view.lost is not None:
            view.lost.set()
        log.warning("worker %d lost (%s); %d of %d workers left", wid, why, len(self.alive_workers()),
                    len(self.views))
        self.events.append({"worker": wid, "event": "lost", "why": why, "at": time.time()})
        metrics.workers_alive(len(self.alive_workers()))

    def _regain(self, wid: int, state: dict[str, Any]) -> None:
        view = self.views[wid]
        out = time.perf_counter() - view.lost_since
        view.alive = True
        view.lost = asyncio.Event()
        view.pending_s = 0.0
        self.adopt([state])
        log.warning("worker %d is back after %.1f s; %d of %d workers", wid, out, len(self.alive_workers()),
                    len(self.views))
        self.events.append({"worker": wid, "event": "back", "out_s": round(out, 3), "at": time.time()})
        metrics.workers_alive(len(self.alive_workers()))

    def _ensure_prober(self) -> None:
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
                self._lose(wid, "its node died")
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
                    v.node_id = fut.result().get("node_id", v.node_id)
            else:
                fut.cancel()
                if v.alive and v.inflight == 0:
                    self._lose(wid, "it does not answer")

    async def run_plan(self, plan: ExpertPlan, sampling: SamplingSettings, with_usage: bool = False) -> Any:
        """Run a whole plan at once (no micro-batching): cascade rounds, the keyword LLM, benchmarks.

        Items of an expert that failed to load are left out (see ``unhealthy``), as the executor protocol says.
        With ``with_usage``: (texts, the plan's summed prompt and completion tokens).
        """
        items = {e: [((qi, slot), req) for qi, slot, req in work] for e, work in plan.items()}
        texts: dict[tuple[int, int], str] = {}
        tokens = {"prompt_tokens": 0, "completion_tokens": 0}
        pending = list(self._dispatch(items, sampling))
        resent = 0
        while pending:
            done, rest = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            pending = list(rest)
            for fut in done:
                expert, part, result = fut.result()
                if isinstance(result, WorkerLost) and resent < self.attempts * max(1, len(items)):
                    resent += 1  # the same expert, on a worker that is still there
                    pending += self._dispatch({expert: part}, sampling)
                    continue
                texts, tokens = self._take(expert, result, texts, tokens)
        return (texts, tokens) if with_usage else texts

    def _take(self, expert: str, result: Any, texts: dict, tokens: dict) -> tuple[dict, dict]:
        """A finished job's texts and tokens into the plan's; its errors raised."""
        if isinstance(result, BaseException):
            raise user_error(result) or EngineError(f"expert {expert}: worker failed ({type(result).__name__})")
        if result.get("errors"):
            raise EngineError(next(iter(result["errors"].values())))
        texts.update(result["texts"])
        for p, c in result.get("usage", {}).values():
            tokens["prompt_tokens"] += p
            tokens["completion_tokens"] += c
        self.usage.update({expert: len(result["texts"])})
        return texts, tokens

    # ------------------------------------------------------------------ questions

    async def solve(self, work: Work) -> dict[str, Any]:
        """Admit one routed question into the next micro-batch; its answer when its own experts are done."""
        q = self._admit(work)
        try:
            return await q.future
        finally:
            self._release(q)

    async def solve_stream(self, work: Work) -> AsyncIterator[dict[str, Any]]:
        """:meth:`solve`, as events while it goes: ``{"stage": ...}`` as it reaches each stage (queued,
        experts n of k, aggregating, a fallback), ``{"delta": text}`` as the aggregator model writes its
        answer, and last ``{"result": ...}``, the record :meth:`solve` returns. An error is raised, as
        :meth:`solve` raises it. Closing (or cancelling) the stream frees the question's place at once.
        """
        q = self._admit(work, stream=True)
        assert q.events is not None
        get: asyncio.Future | None = None
        try:
            yield {"stage": "queued"}
            while True:
                if q.events.empty() and q.future.done():
                    break
                get = asyncio.ensure_future(q.events.get())
                await asyncio.wait({get, q.future}, return_when=asyncio.FIRST_COMPLETED)
                if get.done():
                    yield get.result()
                else:
                    get.cancel()
            yield {"result": q.future.result()}
        finally:
            if get is not None and not get.done():
                get.cancel()
            if not q.future.done():  # the client went away: its question is dropped wherever it is
                q.future.cancel()
            self._release(q)

    def _admit(self, work: Work, stream: bool = False) -> _Open:
        if self._open >= self.max_pending:
            raise Overloaded(f"server is at capacity ({self.max_pending} questions admitted); retry shortly")
        loop = asyncio.get_running_loop()
        if self._former is None or self._former.done():
            self._wakeup = asyncio.Event()
            self._former = loop.create_task(self._form_batches())
        self._ids += 1
        q = _Open(self._ids, work, loop.create_future(), time.perf_counter(), experts=self._healthy(work),
                  events=asyncio.Queue() if stream else None)
        self._open += 1
        metrics.queue_depth(self._open)
        self._by_id[q.id] = q
        self._queue.append(q)
        assert self._wakeup is not None
        self._wakeup.set()
        return q

    def _release(self, q: _Open) -> None:
        """A question leaves: answered, failed, or its client gone."""
        self._open -= 1
        metrics.queue_depth(self._open)
        self._by_id.pop(q.id, None)

    def _healthy(self, work: Work) -> list[str]:
        """The question's experts, each unhealthy one replaced by the best-ranked healthy one it does not have."""
        if not any(e in self.unhealthy for e in work.experts):
            return list(work.experts)
        if work.direct:  # asked for by name: no one else answers in its place
            raise EngineError(f"expert {work.experts[0]} is out of service: {self.unhealthy[work.experts[0]]}")
        order = list(work.ranking) + [e for e in self.expert_names if e not in work.ranking]
        return substitute_unhealthy([work.experts], order, self.unhealthy)[0]

    async def _form_batches(self) -> None:
        """Micro-batches across every replica's questions: by window and size, a bounded number in flight."""
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._queue:
                continue
            if len(self._queue) < self.max_batch_size and self.batch_window_s > 0:
                await asyncio.sleep(self.batch_window_s)
            while self._batches_in_flight >= self.max_concurrent_batches:
                await asyncio.sleep(0.002)  # while a batch slot frees up, the queue keeps filling
            batch, self._queue = self._queue[:self.max_batch_size], self._queue[self.max_batch_size:]
            if self._queue:
                self._wakeup.set()
            self._batches_in_flight += 1
            asyncio.get_running_loop().create_task(self._run_batch(batch))

    async def _run_batch(self, batch: list[_Open]) -> None:
        try:
            self.batches += 1
            metrics.batch(len(batch))
            t0 = time.perf_counter()
            for q in batch:
                q.dispatched = t0
                q.batch_size = len(batch)
                q.emit({"stage": "experts", "done": 0, "of": len(q.experts)})
            # one round per attempt: experts that fail to load get substitutes and run again
            todo = [(q, slot) for q in batch for slot in range(len(q.experts))]
            running: list[asyncio.Future] = []
            for q, slot in todo:
                if not q.experts:
                    self._finish_error(q, EngineError("no expert was recruited for this question"))
            running += self._send_or_fail(todo)
            while running:
                done, pending = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                running = list(pending)
                complete: list[_Open] = []
                retry: list[tuple[_Open, int]] = []
                resend: list[tuple[_Open, int]] = []
                for fut in done:
                    expert, items, result = fut.result()
                    self._collect(expert, items, result, complete, retry, resend)
                if complete:
                    asyncio.get_running_loop().create_task(self._aggregate_and_answer(complete))
                if retry:
                    running += self._send_or_fail(self._substitute(retry))
                if resend:
                    running += self._send_or_fail(self._count_resends(resend))
        except Exception as exc:  # noqa: BLE001 - a scheduler bug must not leave a question hanging
            log.exception("batch failed")
            for q in batch:
                self._finish_error(q, exc)
        finally:
            self._batches_in_flight -= 1

    def _send_or_fail(self, slots: Sequence[tuple[_Open, int]]) -> list[asyncio.Future]:
        """Send slots; if no worker is left, their questions fail at once with a 503 that says why."""
        try:
            return self._send(slots)
        except Unavailable as exc:
            for q, _ in slots:
                self._finish_error(q, exc)
            return []

    def _count_resends(self, slots: Sequence[tuple[_Open, int]]) -> list[tuple[_Open, int]]:
        out = []
        for q, slot in slots:
            q.attempts += 1
            if q.attempts > self.attempts * max(1, len(q.experts)) + len(self.views):
                self._finish_error(q, Unavailable("the workers running this question kept being lost; retry shortly"))
            else:
                out.append((q, slot))
        return out

    def _send(self, slots: Sequence[tuple[_Open, int]]) -> list[asyncio.Future]:
        by_sampling: dict[SamplingSettings, dict[str, list[Item]]] = {}
        for q, slot in slots:
            if q.future.done():
                continue
            jobs = by_sampling.setdefault(q.work.sampling, {})
            jobs.setdefault(q.experts[slot], []).append(((q.id, slot), q.work.request))
        futures: list[asyncio.Future] = []
        for sampling, items in by_sampling.items():
            futures += self._dispatch(items, sampling)
        return futures

    def _collect(self, expert: str, items: list[Item], result: Any, complete: list[_Open],
                 retry: list[tuple[_Open, int]], resend: list[tuple[_Open, int]]) -> None:
        if isinstance(result, WorkerLost):  # the same expert again, on a worker that is still there
            for (qid, slot), _ in items:
                q = self._by_id.get(qid)
                if q is not None and not q.future.done():
                    resend.append((q, slot))
            return
        if isinstance(result, BaseException):
            err = user_error(result) or EngineError(f"a worker running expert {expert} failed "
                                                      f"({type(result).__name__}); the request was not answered")
            for (qid, _), _ in items:
                if qid in self._by_id:
                    self._finish_error(self._by_id[qid], err)
            return
        texts, errors = result["texts"], result.get("errors", {})
        for key, _ in items:
            qid, slot = key
            q = self._by_id.get(qid)
            if q is None or q.future.done():
                continue
            if key in errors:
                self._finish_error(q, EngineError(errors[key]))
            elif key in texts:
                task = self.catalogue.get(q.work.question.task)
                q.answers[slot] = ExpertAnswer(expert, texts[key], task.extract(texts[key]))
                p, c = result.get("usage", {}).get(key, (0, 0))
                q.prompt_tokens += p
                q.completion_tokens += c
                q.emit({"stage": "experts", "done": len(q.answers), "of": len(q.experts)})
                if len(q.answers) == len(q.experts):
                    complete.append(q)
            else:  # the expert failed to load
                retry.append((q, slot))

    def _substitute(self, slots: Sequence[tuple[_Open, int]]) -> list[tuple[_Open, int]]:
        """Each unanswered slot goes to the best-ranked healthy expert its question does not have yet."""
        out = []
        for q, slot in slots:
            q.attempts += 1
            if q.work.direct:
                self._finish_error(q, EngineError(f"expert {q.experts[slot]} is out of service: "
                                                  f"{self.unhealthy.get(q.experts[slot], 'load failed')}"))
                continue
            healthy = [e for e in q.work.ranking if e not in self.unhealthy]
            if not healthy or q.attempts > self.attempts * len(q.experts):
                self._finish_error(q, EngineError(f"experts kept failing to load: {describe_unhealthy(self.unhealthy)}"))
                continue
            q.experts[slot] = next((h for h in healthy if h not in q.experts), healthy[0])
            out.append((q, slot))
        return out

    def _finish_error(self, q: _Open, exc: BaseException) -> None:
        if not q.future.done():
            q.future.set_exception(exc)

    async def _aggregate_and_answer(self, questions: list[_Open]) -> None:
        t0 = time.perf_counter()
        by_task: dict[str, list[_Open]] = {}
        for q in questions:
            if q.future.done():
                continue
            if q.events is not None and not q.work.direct:  # streamed: its own call, its text as it comes
                asyncio.get_running_loop().create_task(self._aggregate_streamed(q, t0))
                continue
            by_task.setdefault(q.work.question.task, []).append(q)
        for task_name, qs in by_task.items():
            answers = [self._answers_of(q) for q in qs]
            direct = [q.work.direct for q in qs]
            routed = [i for i, d in enumerate(direct) if not d]
            merged: list[tuple[str | None, str, str]] = [(ans[0].pred, ans[0].response, ans[0].expert)
                                                         for ans in answers]
            tokens = [(0, 0)] * len(qs)
            if routed:
                for q in (qs[i] for i in routed):
                    q.emit({"stage": "aggregating"})
                out, used = await self.aggregate_with_usage(task_name, [qs[i].work.question for i in routed],
                                                            [answers[i] for i in routed], qs[routed[0]].work.seed,
                                                            [qs[i].work.ranking for i in routed])
                for i, m, u in zip(routed, out, used):
                    merged[i], tokens[i] = m, u
            for q, ans, m, u in zip(qs, answers, merged, tokens):
                self._answer(q, ans, m, u, t0)

    @staticmethod
    def _answers_of(q: _Open) -> list[ExpertAnswer]:
        return [q.answers[s] for s in range(len(q.experts))]

    def _answer(self, q: _Open, ans: Sequence[ExpertAnswer], merged: tuple[str | None, str, str],
                tokens: tuple[int, int], t0: float) -> None:
        """The question's answer record, from its experts' answers and the aggregator's (started at ``t0``)."""
        if q.future.done():
            return
        (answer, response, who), (ap, ac) = merged, tokens
        self.usage.update(q.experts)
        self.served += 1
        metrics.answered(q.experts, q.prompt_tokens + ap, q.completion_tokens + ac)
        q.future.set_result({
            "answer": answer, "response": response, "experts": list(q.experts),
            "expert_answers": [{"expert": a.expert, "answer": a.pred} for a in ans],
            "aggregator": who, "task": q.work.question.task,
            "usage": {"prompt_tokens": q.prompt_tokens + ap, "completion_tokens": q.completion_tokens + ac},
            "timings": {"queue": q.dispatched - q.admitted, "experts": t0 - q.dispatched,
                        "aggregate": time.perf_counter() - t0, "batch_size": float(q.batch_size)},
        })

    async def _aggregate_streamed(self, q: _Open, t0: float) -> None:
        """One streamed question: the aggregator actor's text deltas go to the client as they come.

        If the actor dies, raises, or outlives ``aggregate_timeout_s`` part-way, the answer falls back
        to a vote of the experts, as :meth:`aggregate_with_usage` does; the client is told with a
        ``fallback`` stage event, and the vote's record (its response, ``aggregator: vote (fallback:
        ...)``) follows whatever text it already has. If the client goes away, the call is cancelled.
        """
        task_name, ans = q.work.question.task, self._answers_of(q)
        q.emit({"stage": "aggregating"})
        actor = self.aggregators.get(task_name)
        why = "no aggregator actor"
        if actor is not None:
            stream = actor.aggregate_stream.options(num_returns="streaming", max_task_retries=0).remote(
                task_name, q.work.question, list(ans), q.work.seed)
            deadline = time.perf_counter() + self.aggregate_timeout_s
            try:
                while True:
                    item = await asyncio.wait_for(_next(stream), timeout=max(0.0, deadline - time.perf_counter()))
                    if q.future.done():  # the client went away: the actor stops generating
                        _cancel(stream)
                        return
                    if isinstance(item, str):
                        q.emit({"delta": item})
                        continue
                    (merged,), (tokens,) = item
                    self._answer(q, ans, merged, tokens, t0)
                    return
            except Exception as exc:  # noqa: BLE001 - actor died, timed out or raised: the experts' answers stand
                _cancel(stream)
                why = self._aggregator_failed(task_name, exc)
                q.emit({"stage": "fallback", "why": why})
        (merged,), (tokens,) = self._vote(task_name, [q.work.question], [ans], q.work.seed, [q.work.ranking], why)
        self._answer(q, ans, merged, tokens, t0)

    async def aggregate(self, task_name: str, questions: Sequence[Question], answers: Sequence[Sequence[ExpertAnswer]],
                        seed: int, rankings: Sequence[Sequence[str]] | None = None) -> list[tuple[str | None, str, str]]:
        """The task's aggregator actor merges the answers; if it fails, a vote of the experts does."""
        return (await self.aggregate_with_usage(task_name, questions, answers, seed, rankings))[0]

    async def aggregate_with_usage(self, task_name: str, questions: Sequence[Question],
                                   answers: Sequence[Sequence[ExpertAnswer]], seed: int,
                                   rankings: Sequence[Sequence[str]] | None = None) -> tuple[list, list]:
        """:meth:`aggregate`, and the aggregator model's (prompt, completion) tokens per question."""
        actor = self.aggregators.get(task_name)
        if actor is None:
            return self._vote(task_name, questions, answers, seed, rankings, "no aggregator actor")
        try:
            return await asyncio.wait_for(actor.aggregate_with_usage.remote(task_name, list(questions),
                                                                            [list(a) for a in answers], seed),
                                          timeout=self.aggregate_timeout_s)
        except Exception as exc:  # noqa: BLE001 - actor died, timed out or raised: the experts' answers stand
            why = self._aggregator_failed(task_name, exc)
        return self._vote(task_name, questions, answers, seed, rankings, why)

    def _aggregator_failed(self, task_name: str, exc: BaseException) -> str:
        why = f"aggregator {self.aggregator_names.get(task_name, '?')} failed"
        log.warning("%s (%s); falling back to a vote of the experts", why, type(exc).__name__)
        metrics.aggregator_fallback(task_name)
        return why

    def _vote(self, task_name: str, questions: Sequence[Question], answers: Sequence[Sequence[ExpertAnswer]], seed: int,
              rankings: Sequence[Sequence[str]] | None, why: str) -> tuple[list, list]:
        """The fallback: a vote of each question's experts, marked with why the aggregator was not used."""
        task = self.catalogue.get(task_name)
        out = []
        for i, (q, ans) in enumerate(zip(questions, answers)):
            vote = VoteAggregator(rankings[i] if rankings else [])
            pred, response, _ = vote.aggregate(task, [q], [ans], None, seed)[0]  # type: ignore[arg-type]
            out.append((pred, response, f"vote (fallback: {why})"))
        return out, [(0, 0)] * len(out)

    # ------------------------------------------------------------------ views

    def predicted_counts(self) -> dict[int, tuple[int, int]]:
        """Per worker, (loads, wakes) the planner predicted for every job sent so far."""
        return {wid: (v.predicted_loads, v.predicted_wakes) for wid, v in self.views.items()}


async def _await(ref: Any) -> Any:
    return await ref


async def _next(stream: Any) -> Any:
    """The next item of a Ray streaming generator (``num_returns="streaming"``)."""
    return await (await stream.__anext__())


def _actor_gone(exc: BaseException) -> bool:
    """Ray's errors for an actor that died or cannot be reached (as opposed to an error its method raised)."""
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & {"ActorDiedError", "ActorUnavailableError", "RayActorError", "ActorUnschedulableError"}) \
        and not names & {"RayTaskError"}


def _cancel(ref: Any) -> None:
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
    """The planner's limits from what the workers report of their budgets (the smallest of each, so a plan
    never counts on room one of them lacks)."""
    def smallest(key: str) -> Any:
        values = [b[key] for b in budgets]
        return None if any(v is None for v in values) else min(values, default=None)

    capacity = min((b["capacity"] for b in budgets), default=1)
    return limits_from(traits, capacity, smallest("host_budget_gb"), prefetch, release_after, smallest("device_gb"))


class RayExecutor:
    """The executor protocol over a :class:`Scheduler` for synchronous callers (benchmarks, tests).

    The scheduler's event loop runs on a thread of its own, so ``run`` can be
    called from plain code.
    """

    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="scheduler-loop", daemon=True)
        self._thread.start()

    @property
    def unhealthy(self) -> dict[str, str]:
        return self.scheduler.unhealthy

    @property
    def expert_names(self) -> list[str]:
        return self.scheduler.expert_names

    @property
    def last_assignment(self) -> Assignment | None:
        return self.scheduler.last_assignment

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def run(self, plan: ExpertPlan, sampling: SamplingSettings) -> dict[tuple[int, int], str]:
        return self.call(self.scheduler.run_plan(plan, sampling))

    def close(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.scheduler.stop_probing(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
