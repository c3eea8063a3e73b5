"""The scheduler: the one owner of the model pool, made of parts with one job each.

* :mod:`.admission` admits routed questions (from every ingress replica) and
  keeps one queue per expert;
* :mod:`~skillmoe_ray.scheduling.dispatch` (pure) decides which queued prompts
  start where, whenever something changes: prompts join a model that a worker
  holds, idle workers bring in the expert best brought in, aging bounds waits;
* :mod:`.worker_pool` calls the workers (deadlines, loss, probes, measured times);
* :mod:`.aggregating` merges each question's answers as soon as its own experts
  are in (the aggregator actor, or a vote of the experts if it fails).

There is no batch barrier online: a question's prompts start as soon as the
policy places them, and it is answered as soon as they are done. A whole batch
handed over at once (:meth:`Scheduler.run_plan`: cascade rounds, the keyword LLM,
benchmarks) is still planned as a unit (:mod:`.planned`), each expert loaded once
for it. All state lives on one asyncio event loop, so nothing here needs a lock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any, AsyncIterator, Mapping, Sequence

from ..config import ServingConfig
from ..engines.base import SamplingSettings, as_sibling
from ..errors import EngineError
from ..execution import ExpertPlan
from ..scheduling.dispatch import Policy, WorkerView, decide, expected_order, predicted_bring, queues_of
from ..scheduling.planner import Assignment, Costs
from ..scheduling.residency import Limits
from ..scheduling.timing import JobTimes
from ..solution import ExpertAnswer
from ..tasks.catalogue import Catalogue, Question, catalogue_or_builtin
from . import metrics
from .admission import Admission, Open, Overloaded, Slot, Unavailable, Work, substitute
from .aggregating import Aggregation
from .http import user_error
from .messages import AnswerRecord, JobReport
from .planned import run_planned
from .worker_pool import WorkerLost, WorkerPool, _await, limits_for, limits_from

log = logging.getLogger(__name__)

__all__ = ["Scheduler", "Work", "Overloaded", "Unavailable", "WorkerLost", "limits_for", "limits_from",
           "RayExecutor", "_await"]


class Scheduler:
    def __init__(self, workers: Sequence[Any], limits: Limits, cost: Costs,
                 aggregators: Mapping[str, Any] | None = None, aggregator_names: Mapping[str, str] | None = None,
                 policy: Policy | None = None, max_pending: int = 10**9, aggregate_timeout_s: float = 600.0,
                 attempts: int = 3, job_timeout_factor: float = 4.0, job_timeout_min_s: float = 30.0,
                 probe_interval_s: float = 2.0, catalogue: Catalogue | None = None):
        self.catalogue = catalogue_or_builtin(catalogue)
        self.limits = limits
        self.cost = cost
        self.policy = policy or Policy()
        self.attempts = attempts
        #: per expert, load, wake and decode-step times the workers measured
        self.times = JobTimes({e: cost.load(e) for e in limits.traits}, {e: cost.wake(e) for e in limits.traits})
        self.pool = WorkerPool(workers, limits, self.times, job_timeout_factor, job_timeout_min_s, probe_interval_s)
        self.pool.on_change = self._kick
        self.admission = Admission(max_pending)
        self.aggregation = Aggregation(aggregators or {}, aggregator_names or {}, self.catalogue, aggregate_timeout_s)
        #: prompts answered per expert (the demand residency's expected order follows), and questions answered
        self.asked: Counter[str] = Counter()
        self.served = 0
        self.last_assignment: Assignment | None = None
        self._kicked = False

    @classmethod
    def from_config(cls, workers: Sequence[Any], limits: Limits, cost: Costs, aggregators: Mapping[str, Any],
                    aggregator_names: Mapping[str, str], serving: ServingConfig,
                    catalogue: Catalogue | None = None) -> "Scheduler":
        """A scheduler set by the deployment's ``serving`` section, read here in one place."""
        return cls(workers, limits, cost, aggregators, aggregator_names, Policy(serving.join_limit, serving.max_wait_s),
                   serving.max_pending, aggregate_timeout_s=serving.aggregator_timeout_s,
                   job_timeout_factor=serving.job_timeout_factor, job_timeout_min_s=serving.job_timeout_min_s,
                   probe_interval_s=serving.health_probe_s, catalogue=catalogue)

    # ------------------------------------------------------------------ views

    def adopt(self, states: Sequence[Any]) -> None:
        self.pool.adopt(states)

    @property
    def unhealthy(self) -> dict[str, str]:
        return self.pool.unhealthy

    @property
    def events(self) -> Any:
        return self.pool.events

    @property
    def aggregator_names(self) -> dict[str, str]:
        return self.aggregation.names

    @property
    def expert_names(self) -> list[str]:
        return list(self.limits.traits)

    @property
    def pending(self) -> int:
        return self.admission.open

    def alive_workers(self) -> list[int]:
        return self.pool.alive()

    def predicted_counts(self) -> dict[int, tuple[int, int]]:
        """Per worker, (loads, wakes) predicted for every job and bring sent so far."""
        return self.pool.counts()

    async def stop_probing(self) -> None:
        await self.pool.stop_probing()

    # ------------------------------------------------------------------ questions

    async def solve(self, work: Work) -> AnswerRecord:
        """Admit one routed question; its answer when its own experts are done."""
        q = self._admit(work)
        try:
            return await q.future
        finally:
            self.admission.release(q)

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
            self.admission.release(q)

    def _admit(self, work: Work, stream: bool = False) -> Open:
        experts = list(work.experts)
        if any(e in self.unhealthy for e in experts):
            if work.direct:  # asked for by name: no one else answers in its place
                raise EngineError(f"expert {experts[0]} is out of service: {self.unhealthy[experts[0]]}")
            experts = substitute(experts, None, work.ranking, self.expert_names, self.unhealthy)
        q = self.admission.admit(work, experts, stream)
        if not experts:
            q.fail(EngineError("no expert was recruited for this question"))
            return q
        self.admission.enqueue([Slot(q, i) for i in range(len(experts))])
        self._kick()
        return q

    # ------------------------------------------------------------------ continuous dispatch

    def _kick(self) -> None:
        """Dispatch soon (once, however many things changed meanwhile)."""
        if not self._kicked:
            self._kicked = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._kicked = False
        try:
            self._dispatch_now()
        except Exception as exc:  # noqa: BLE001 - a scheduler bug must not leave queued questions hanging
            log.exception("dispatch failed")
            self.admission.fail_queued(EngineError(f"the scheduler failed to place this question "
                                                   f"({type(exc).__name__})"))

    def _dispatch_now(self) -> None:
        self.pool.ensure_prober()
        waiting = self.admission.waiting()
        if not waiting:
            return
        alive = self.pool.alive()
        if not alive:
            lost = len(self.pool.views)
            self.admission.fail_queued(Unavailable(
                f"no worker of the pool is reachable ({lost} of {lost} lost with their nodes); the pool grows back "
                "when the cluster has room for its workers again - retry shortly"))
            return
        views = self.pool.views
        now = time.perf_counter()
        seen = [WorkerView(w, views[w].tiers, dict(views[w].running),
                           views[w].bringing or ("(planned jobs)" if views[w].planned else None), views[w].draining,
                           self.pool.free_in(w, now))
                for w in alive]
        upcoming = expected_order(waiting, self.asked, self.expert_names)
        decision = decide(queues_of(waiting, now), seen, self.limits, self.policy, upcoming)
        for wid in decision.drain:
            views[wid].draining = True
            self.events.append({"worker": wid, "event": "drain", "at": time.time()})
        for send in decision.sends:
            slots = self.admission.take(send.expert, send.n)
            if not slots:
                continue
            for s in slots:
                if not s.q.dispatched:
                    s.q.dispatched = now
            v = views[send.wid]
            v.running[send.expert] += len(slots)
            if send.bring == "resident":
                asyncio.ensure_future(self._generate(send.wid, send.expert, slots))
            else:
                bring, v.tiers = predicted_bring(v.tiers, send.expert, self.limits, upcoming)
                v.predict(bring)
                v.bringing, v.draining = send.expert, False
                self.events.append({"worker": send.wid, "event": bring, "expert": send.expert, "n": len(slots),
                                    "at": time.time()})
                asyncio.ensure_future(self._bring_then_generate(send.wid, send.expert, bring, slots, upcoming))

    async def _bring_then_generate(self, wid: int, expert: str, bring: str, slots: list[Slot],
                                   upcoming: list[str]) -> None:
        v = self.pool.views[wid]
        report = await self.pool.call(wid, "bring", (expert, upcoming), expert, self.times.bring_s(expert, bring))
        v.bringing = None
        if isinstance(report, BaseException) or report.failed:
            v.running[expert] -= len(slots)
            if isinstance(report, WorkerLost):
                self._requeue(slots)
            elif isinstance(report, BaseException):
                self._fail(slots, report, expert)
            else:
                self.pool.adopt([report.state])
                self.unhealthy[expert] = report.failed
                metrics.unhealthy(len(self.unhealthy))
                self.admission.substitute(slots, self.unhealthy, self.expert_names, self.attempts)
            self._kick()
            return
        if not v.planned and v.inflight == 0:
            self.pool.adopt([report.state])
        self._kick()  # the model is in: what queued for it meanwhile joins now
        await self._generate(wid, expert, slots)

    async def _generate(self, wid: int, expert: str, slots: list[Slot]) -> None:
        """Run slots on a model the worker holds, one call per question: the calls run at once on its engine
        (continuous batching), and each returns when its own question's prompts are done, not when the
        longest of everyone's is."""
        v = self.pool.views[wid]
        by_question: dict[int, list[Slot]] = {}
        for s in slots:
            by_question.setdefault(s.q.id, []).append(s)
        for s in slots:
            s.q.emit({"stage": "experts", "done": len(s.q.answers), "of": len(s.q.experts)})

        async def one(part: list[Slot]) -> None:
            sampling = part[0].q.work.sampling
            items = [(s.key, as_sibling(s.q.work.request, s.q.id, s.q.experts, s.slot)) for s in part]
            metrics.batch(len(items))
            predicted = self.times.predict(expert, "resident", sampling.max_tokens)
            token = object()
            v.started[token] = (expert, time.perf_counter())
            try:
                report = await self.pool.call(wid, "generate", (expert, items, sampling), expert, predicted)
            finally:
                v.started.pop(token, None)
            v.running[expert] -= len(part)
            if isinstance(report, WorkerLost):
                self._requeue(part)
            elif isinstance(report, BaseException):
                self._fail(part, report, expert)
            elif report.not_resident:  # it restarted or lost the model: what it holds now, and again
                if report.state is not None and not v.planned:
                    self.pool.adopt([report.state])
                self._requeue(part, count=False)
            else:
                self._collect(expert, part, report)
            self._kick()

        await asyncio.gather(*[one(part) for part in by_question.values()])

    def _requeue(self, slots: list[Slot], count: bool = True) -> None:
        """Slots whose worker was lost go back to the front of their queue (a bounded number of times)."""
        again = []
        for s in slots:
            s.q.attempts += count
            if s.q.attempts > self.attempts * max(1, len(s.q.experts)) + len(self.pool.views):
                s.q.fail(Unavailable("the workers running this question kept being lost; retry shortly"))
            else:
                again.append(s)
        self.admission.enqueue(again, front=True)

    @staticmethod
    def _fail(slots: list[Slot], exc: BaseException, expert: str) -> None:
        err = user_error(exc) or EngineError(f"a worker running expert {expert} failed "
                                             f"({type(exc).__name__}); the request was not answered")
        for s in slots:
            s.q.fail(err)

    def _collect(self, expert: str, slots: list[Slot], report: JobReport) -> None:
        if report.timing is not None:
            self.times.observe(expert, report.timing.as_dict(), report.completions())
        complete: list[Open] = []
        now = time.perf_counter()
        for s in slots:
            q = s.q
            if not q.live:
                continue
            if s.key in report.errors:
                q.fail(EngineError(report.errors[s.key]))
            elif s.key in report.texts:
                text = report.texts[s.key]
                q.answers[s.slot] = ExpertAnswer(expert, text, self.catalogue.get(q.work.question.task).extract(text))
                p, c = report.usage.get(s.key, (0, 0))
                q.prompt_tokens += p
                q.completion_tokens += c
                q.emit({"stage": "experts", "done": len(q.answers), "of": len(q.experts)})
                if len(q.answers) == len(q.experts):
                    q.experts_done = now
                    complete.append(q)
            else:
                q.fail(EngineError(f"expert {expert} gave no answer"))
        if complete:
            asyncio.ensure_future(self._aggregate_and_answer(complete))

    # ------------------------------------------------------------------ answers

    async def _aggregate_and_answer(self, questions: list[Open]) -> None:
        t0 = time.perf_counter()
        by_task: dict[str, list[Open]] = {}
        for q in questions:
            if not q.live:
                continue
            if q.work.direct:  # its one expert's answer is the answer
                a = q.answers[0]
                self._answer(q, (a.pred, a.response, a.expert), (0, 0), t0)
            elif q.events is not None:  # streamed: its own call, its text as it comes
                asyncio.ensure_future(self._aggregate_streamed(q, t0))
            else:
                by_task.setdefault(q.work.question.task, []).append(q)
        for task_name, qs in by_task.items():
            for q in qs:
                q.emit({"stage": "aggregating"})
            merged, tokens = await self.aggregation.merge(task_name, [q.work.question for q in qs],
                                                          [q.answers_in_order() for q in qs], qs[0].work.seed,
                                                          [q.work.ranking for q in qs])
            for q, m, u in zip(qs, merged, tokens):
                self._answer(q, m, u, t0)

    async def _aggregate_streamed(self, q: Open, t0: float) -> None:
        q.emit({"stage": "aggregating"})
        out = await self.aggregation.stream(q.work.question.task, q.work.question, q.answers_in_order(), q.work.seed,
                                            q.work.ranking, q.emit, lambda: q.future.done())
        if out is not None:
            self._answer(q, out[0], out[1], t0)

    def _answer(self, q: Open, merged: tuple[str | None, str, str], tokens: tuple[int, int], t0: float) -> None:
        """The question's answer record, from its experts' answers and the aggregator's (started at ``t0``)."""
        if not q.live:
            return
        self.asked.update(q.experts)
        self.served += 1
        metrics.answered(q.experts, q.prompt_tokens + tokens[0], q.completion_tokens + tokens[1])
        q.future.set_result(q.record(merged, tokens, time.perf_counter() - t0))

    async def aggregate(self, task_name: str, questions: Sequence[Question], answers: Sequence[Sequence[ExpertAnswer]],
                        seed: int, rankings: Sequence[Sequence[str]] | None = None) -> list[tuple[str | None, str, str]]:
        """The task's aggregator actor merges the answers; if it fails, a vote of the experts does."""
        return (await self.aggregation.merge(task_name, questions, answers, seed, rankings))[0]

    # ------------------------------------------------------------------ planned batches

    async def run_plan(self, plan: ExpertPlan, sampling: SamplingSettings, with_usage: bool = False) -> Any:
        """Run a whole plan at once, planned as a unit (see :mod:`.planned`): cascade rounds, the keyword
        LLM, benchmarks. Items of an expert that failed to load are left out (see ``unhealthy``), as the
        executor protocol says. With ``with_usage``: (texts, the plan's summed prompt and completion tokens).
        """
        out = await run_planned(self, plan, sampling)
        self._kick()
        return out if with_usage else out[0]


from .ray_executor import RayExecutor  # noqa: E402 - re-exported: benchmarks and tests drive the scheduler with it
