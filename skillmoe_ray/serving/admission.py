"""Admission and the per-expert queues: a question from admission to its answer record.

Every ingress replica hands routed questions to the one scheduler, which
admits them (up to ``max_pending``) and queues each of a question's expert
slots on its expert's queue. The dispatch policy takes prompts from these
queues; a slot whose expert fails to load goes back on the queue of its
substitute, by the one substitution rule (:func:`~skillmoe_ray.execution.substitute_unhealthy`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..engines.base import GenerationRequest, SamplingSettings
from ..errors import EngineError, SkillMoEError
from ..execution import best_substitute, describe_unhealthy, substitute_unhealthy
from ..solution import ExpertAnswer
from ..tasks.catalogue import Question
from . import metrics
from .messages import AnswerRecord, ExpertPick, TokenCount


class Overloaded(SkillMoEError):
    """The pool has as many questions admitted as it may hold; the caller should retry shortly."""


class Unavailable(SkillMoEError):
    """No worker of the pool is reachable now (their nodes are gone); the caller should retry shortly."""


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
class Open:
    """A question between admission and its answer."""

    id: int
    work: Work
    future: asyncio.Future
    admitted: float
    #: experts as asked (substitutes replace unhealthy ones)
    experts: list[str] = field(default_factory=list)
    answers: dict[int, ExpertAnswer] = field(default_factory=dict)
    #: when its first prompt started, and its last expert answered
    dispatched: float = 0.0
    experts_done: float = 0.0
    attempts: int = 0
    #: prompt and completion tokens of every model call made for it
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: a streamed question's events, in order (stages reached, the aggregator's text); None when not streamed
    events: asyncio.Queue | None = None

    def emit(self, event: dict[str, Any]) -> None:
        if self.events is not None and not self.future.done():
            self.events.put_nowait(event)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)

    @property
    def live(self) -> bool:
        return not self.future.done()

    def answers_in_order(self) -> list[ExpertAnswer]:
        return [self.answers[s] for s in range(len(self.experts))]

    def record(self, merged: tuple[str | None, str, str], tokens: tuple[int, int], aggregate_s: float) -> AnswerRecord:
        """Its answer record: the answer, who gave it, every expert's answer, tokens and stage timings."""
        (answer, response, who), (ap, ac) = merged, tokens
        return AnswerRecord(
            answer=answer, response=response, experts=list(self.experts),
            expert_answers=[ExpertPick(a.expert, a.pred) for a in self.answers_in_order()],
            aggregator=who, task=self.work.question.task,
            usage=TokenCount(self.prompt_tokens + ap, self.completion_tokens + ac),
            timings={"queue": self.dispatched - self.admitted, "experts": self.experts_done - self.dispatched,
                     "aggregate": aggregate_s})


#: one expert slot of an open question, waiting on its expert's queue since ``at``
@dataclass
class Slot:
    q: Open
    slot: int
    at: float = field(default_factory=time.perf_counter)

    @property
    def key(self) -> tuple[int, int]:
        return (self.q.id, self.slot)


def substitute(experts: list[str], slot: int | None, ranking: list[str], names: list[str],
               unhealthy: dict[str, str]) -> list[str]:
    """The one substitution rule: each unhealthy expert (or the one in ``slot``) replaced by the best-ranked
    healthy one the question does not have yet (then any healthy one of the pool)."""
    order = list(ranking) + [e for e in names if e not in ranking]
    if slot is None:
        return substitute_unhealthy([experts], order, unhealthy)[0]
    marked = dict(unhealthy)
    marked.setdefault(experts[slot], "load failed")
    others = experts[:slot] + experts[slot + 1:]
    healthy = [e for e in order if e not in marked]
    if not healthy:
        raise EngineError(f"experts kept failing to load: {describe_unhealthy(unhealthy)}")
    new = list(experts)
    new[slot] = best_substitute(healthy, others)
    return new


class Admission:
    """Open questions and the expert queues."""

    def __init__(self, max_pending: int):
        self.max_pending = max_pending
        self.by_id: dict[int, Open] = {}
        self.queues: dict[str, deque[Slot]] = {}
        self._ids = 0

    @property
    def open(self) -> int:
        return len(self.by_id)

    def admit(self, work: Work, experts: list[str], stream: bool) -> Open:
        if len(self.by_id) >= self.max_pending:
            raise Overloaded(f"server is at capacity ({self.max_pending} questions admitted); retry shortly")
        self._ids += 1
        q = Open(self._ids, work, asyncio.get_running_loop().create_future(), time.perf_counter(), experts=experts,
                 events=asyncio.Queue() if stream else None)
        self.by_id[q.id] = q
        metrics.queue_depth(len(self.by_id))
        return q

    def release(self, q: Open) -> None:
        """A question leaves: answered, failed, or its client gone."""
        if self.by_id.pop(q.id, None) is not None:
            metrics.queue_depth(len(self.by_id))

    def enqueue(self, slots: list[Slot], front: bool = False) -> None:
        for s in (reversed(slots) if front else slots):
            if not s.q.live:
                continue
            queue = self.queues.setdefault(s.q.experts[s.slot], deque())
            (queue.appendleft if front else queue.append)(s)

    def take(self, expert: str, n: int) -> list[Slot]:
        """Up to ``n`` live slots from the front of an expert's queue (dropped questions are skipped)."""
        queue = self.queues.get(expert, deque())
        out: list[Slot] = []
        while queue and len(out) < n:
            s = queue.popleft()
            if s.q.live:
                out.append(s)
        return out

    def substitute(self, slots: list[Slot], unhealthy: dict[str, str], names: list[str], attempts: int) -> None:
        """Slots whose expert failed to load: each to the best-ranked healthy expert its question lacks, back
        on that expert's queue; a question asked of one expert by name, or out of attempts, fails."""
        for s in slots:
            q = s.q
            q.attempts += 1
            if q.work.direct:
                q.fail(EngineError(f"expert {q.experts[s.slot]} is out of service: "
                                   f"{unhealthy.get(q.experts[s.slot], 'load failed')}"))
                continue
            if q.attempts > attempts * len(q.experts):
                q.fail(EngineError(f"experts kept failing to load: {describe_unhealthy(unhealthy)}"))
                continue
            try:
                q.experts = substitute(q.experts, s.slot, q.work.ranking, names, unhealthy)
            except EngineError as exc:
                q.fail(exc)
                continue
            self.enqueue([Slot(q, s.slot)])

    def fail_queued(self, exc: BaseException) -> None:
        """Every queued slot's question fails with ``exc`` (the queues are left empty)."""
        for e in list(self.queues):
            for s in self.take(e, len(self.queues[e])):
                s.q.fail(exc)

    def waiting(self) -> dict[str, list[float]]:
        """Each expert's queued slots' enqueue times (dropped questions pruned)."""
        out: dict[str, list[float]] = {}
        for e, queue in self.queues.items():
            live = [s for s in queue if s.q.live]
            if len(live) != len(queue):
                self.queues[e] = deque(live)
            if live:
                out[e] = [s.at for s in live]
        return out
