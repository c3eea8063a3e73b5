"""Calls that arrive while an engine generates, merged into its next batch.

An engine that cannot batch continuously (transformers' ``generate``, a
replayed recording) runs one batch at a time. Rather than queue each caller's
call behind the others, the calls that arrive while a batch runs are merged:
when the batch ends, every waiting call with the same sampling settings goes
into the next one. A prompt thus waits at most for the batch running when it
came, and then shares a batch with everything that queued meanwhile.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .base import GenerationRequest, SamplingSettings

#: (requests, sampling) -> (texts, (prompt, completion) tokens per request)
Generate = Callable[[list[GenerationRequest], SamplingSettings], tuple[list[str], list[tuple[int, int]]]]


@dataclass
class _Call:
    requests: list[GenerationRequest]
    sampling: SamplingSettings
    texts: list[str] = field(default_factory=list)
    usage: list[tuple[int, int]] = field(default_factory=list)
    error: BaseException | None = None
    done: bool = False


class MergedCalls:
    """One engine's calls, run a merged batch at a time by whichever caller's turn it is."""

    def __init__(self, generate: Generate):
        self._generate = generate
        self._cond = threading.Condition()
        self._pending: list[_Call] = []
        self._busy = False
        #: batches run, and calls they held (tests and benchmarks read them)
        self.batches = 0
        self.calls = 0

    def run(self, requests: Sequence[GenerationRequest], sampling: SamplingSettings
            ) -> tuple[list[str], list[tuple[int, int]]]:
        call = _Call(list(requests), sampling)
        with self._cond:
            self._pending.append(call)
            while not call.done:
                if self._busy:
                    self._cond.wait()
                    continue
                # this caller runs the next batch: the oldest waiting call's sampling, and every call sharing it
                first = self._pending[0].sampling
                batch = [c for c in self._pending if c.sampling == first]
                self._pending = [c for c in self._pending if c.sampling != first]
                self._busy = True
                self._cond.release()
                try:
                    self._run(batch)
                finally:
                    self._cond.acquire()
                    self._busy = False
                    self._cond.notify_all()
        if call.error is not None:
            raise call.error
        return call.texts, call.usage

    def _run(self, batch: list[_Call]) -> None:
        self.batches += 1
        self.calls += len(batch)
        merged = [r for c in batch for r in c.requests]
        try:
            texts, usage = self._generate(merged, batch[0].sampling)
        except Exception as exc:  # noqa: BLE001 - each call gets its own answer or its own error
            if len(batch) == 1:
                batch[0].error = exc
                batch[0].done = True
                return
            for c in batch:  # one call's bad request must not fail the others: each alone
                try:
                    c.texts, c.usage = self._generate(c.requests, c.sampling)
                except Exception as one:  # noqa: BLE001
                    c.error = one
                c.done = True
            return
        at = 0
        for c in batch:
            n = len(c.requests)
            c.texts, c.usage = texts[at:at + n], usage[at:at + n]
            c.done = True
            at += n
