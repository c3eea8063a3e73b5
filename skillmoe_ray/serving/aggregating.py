"""Aggregation in the server: each task's aggregator actor merges its experts' answers, and a vote of
the experts stands in when the actor dies, raises or takes too long (the answer is never lost)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Mapping, Sequence

from ..aggregation.aggregators import VoteAggregator
from ..solution import ExpertAnswer
from ..tasks.catalogue import Catalogue, Question
from . import metrics
from .worker_pool import _await, cancel

log = logging.getLogger(__name__)

#: (answer, response, who merged it) per question, and the aggregator model's (prompt, completion) tokens
Merged = tuple[str | None, str, str]


class Aggregation:
    def __init__(self, aggregators: Mapping[str, Any], names: Mapping[str, str], catalogue: Catalogue,
                 timeout_s: float = 600.0):
        #: task -> aggregator actor; task -> its aggregator's name (for answers and the pool view)
        self.actors = dict(aggregators)
        self.names = dict(names)
        self.catalogue = catalogue
        self.timeout_s = timeout_s

    async def merge(self, task_name: str, questions: Sequence[Question], answers: Sequence[Sequence[ExpertAnswer]],
                    seed: int, rankings: Sequence[Sequence[str]] | None = None) -> tuple[list[Merged], list]:
        """The merged answers, and the aggregator model's tokens per question."""
        actor = self.actors.get(task_name)
        if actor is None:
            return self.vote(task_name, questions, answers, seed, rankings, "no aggregator actor")
        try:
            return await asyncio.wait_for(_await(actor.aggregate_with_usage.remote(
                task_name, list(questions), [list(a) for a in answers], seed)), timeout=self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - actor died, timed out or raised: the experts' answers stand
            why = self._failed(task_name, exc)
        return self.vote(task_name, questions, answers, seed, rankings, why)

    async def stream(self, task_name: str, question: Question, answers: Sequence[ExpertAnswer], seed: int,
                     ranking: Sequence[str], emit: Callable[[dict], None],
                     gone: Callable[[], bool]) -> tuple[Merged, tuple[int, int]] | None:
        """One question, the aggregator actor's text deltas emitted as they come (``{"delta": text}``).

        If the actor dies, raises, or outlives the timeout part-way, a vote of the experts answers, after a
        ``fallback`` event. None if the client went away (the actor stops generating).
        """
        actor = self.actors.get(task_name)
        why = "no aggregator actor"
        if actor is not None:
            stream = actor.aggregate_stream.options(num_returns="streaming", max_task_retries=0).remote(
                task_name, question, list(answers), seed)
            deadline = time.perf_counter() + self.timeout_s
            try:
                while True:
                    item = await asyncio.wait_for(_next(stream), timeout=max(0.0, deadline - time.perf_counter()))
                    if gone():  # the client went away: the actor stops generating
                        cancel(stream)
                        return None
                    if isinstance(item, str):
                        emit({"delta": item})
                        continue
                    (merged,), (tokens,) = item
                    return merged, tokens
            except Exception as exc:  # noqa: BLE001 - actor died, timed out or raised: the experts' answers stand
                cancel(stream)
                why = self._failed(task_name, exc)
                emit({"stage": "fallback", "why": why})
        (merged,), (tokens,) = self.vote(task_name, [question], [answers], seed, [ranking], why)
        return merged, tokens

    def _failed(self, task_name: str, exc: BaseException) -> str:
        why = f"aggregator {self.names.get(task_name, '?')} failed"
        log.warning("%s (%s); falling back to a vote of the experts", why, type(exc).__name__)
        metrics.aggregator_fallback(task_name)
        return why

    def vote(self, task_name: str, questions: Sequence[Question], answers: Sequence[Sequence[ExpertAnswer]],
             seed: int, rankings: Sequence[Sequence[str]] | None, why: str) -> tuple[list[Merged], list]:
        """The fallback: a vote of each question's experts, marked with why the aggregator was not used."""
        task = self.catalogue.get(task_name)
        out = []
        for i, (q, ans) in enumerate(zip(questions, answers)):
            vote = VoteAggregator(rankings[i] if rankings else [])
            pred, response, _ = vote.aggregate(task, [q], [ans], None, seed)[0]  # type: ignore[arg-type]
            out.append((pred, response, f"vote (fallback: {why})"))
        return out, [(0, 0)] * len(out)


async def _next(stream: Any) -> Any:
    """The next item of a Ray streaming generator (``num_returns="streaming"``)."""
    return await (await stream.__anext__())
