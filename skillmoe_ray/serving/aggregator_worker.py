"""The aggregator actor: merges a task's experts' answers, holding its aggregator model when there is one.

Its calls may overlap (the actor runs several at once): questions answered one
by one under continuous scheduling each get their own call, and an engine that
batches continuously (:attr:`Engine.continuous`) runs them together; one that
cannot takes them one at a time.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Iterator

from ..aggregation.aggregators import LLMAggregator, is_agreement
from ..config import ExpertConfig
from ..engines.base import Engine
from ..engines.registry import create_engine
from ..tasks.catalogue import Catalogue, catalogue_or_builtin
from .devices import gpu_bytes
from .workers import _cancelled, _node_id


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
        #: an engine that cannot batch continuously takes one call at a time
        self._serial = threading.Lock()
        if llm_expert is not None:
            self.engine = create_engine(ExpertConfig.model_validate(llm_expert), self.catalogue)
            # its engine reserves its own footprint of the GPU it was given (a share of one, beside a worker)
            self.engine.device_bytes = gpu_bytes(gpus, gpu_memory_gb)
            self.engine.load()
            self.loads += 1
            self.llm = LLMAggregator(self.engine.name, max_tokens, skip_when_agreed)

    def aggregate(self, task_name: str, questions: list, answers: list, seed: int) -> list[tuple[str | None, str, str]]:
        from ..execution import LocalExecutor
        from ..aggregation.aggregators import VoteAggregator, WeightedVoteAggregator

        task = self.catalogue.get(task_name)
        if self.mode == "llm" and self.engine is not None and self.llm is not None:
            # its only model: the executor never parks it, so it stays loaded between batches
            with self._turn():
                self.engine._last_usage = []
                return self.llm.aggregate(task, questions, answers, LocalExecutor({self.engine.name: self.engine}),
                                          seed)
        ranking = self.ranking_by_task.get(task_name, [])
        if self.mode == "weighted_vote":
            agg = WeightedVoteAggregator(ranking, self.weights_by_task.get(task_name, {}))
        else:
            agg = VoteAggregator(ranking)
        return agg.aggregate(task, questions, answers, None, seed)  # type: ignore[arg-type]

    def aggregate_with_usage(self, task_name: str, questions: list, answers: list,
                             seed: int) -> tuple[list[tuple[str | None, str, str]], list[tuple[int, int]]]:
        """The merged answers, and the aggregator model's (prompt, completion) tokens per question (the
        engine counts per calling thread, so overlapping calls each read their own)."""
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
        with self._turn():
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
            usage = self._usage(merged)
        yield merged, usage

    def _turn(self) -> Any:
        """The engine to this call alone, unless it batches concurrent calls itself."""
        import contextlib

        return contextlib.nullcontext() if self.engine is None or self.engine.continuous else self._serial

    def info(self) -> dict[str, Any]:
        return {"mode": self.mode, "model": self.engine.name if self.engine else None,
                "resident": bool(self.engine and self.engine.loaded), "pid": os.getpid(), "loads": self.loads,
                "tasks": sorted(self.ranking_by_task), "node_id": _node_id(),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
