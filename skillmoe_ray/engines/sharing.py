"""Continuous batching for the simulated engine: calls that overlap share the decode steps.

A real engine (vLLM) runs every request it holds in one decode step, whenever
the request arrived: a prompt that joins mid-generation costs its own KV reads
and its prefill, not another pass over the weights. The simulated engine models
this as a fluid: each call (a *cohort* of n prompts) is given the seconds it
would take alone, from :meth:`CostConstants.generate_s`, and spends them at the
speed it would have alone divided by how much the shared step slows it.

At any moment a cohort that has run s steps still has ``n * exp(-s / mean)``
sequences running (exponential lengths), each holding a share of the KV cache.
A step costs ``step_fixed_s`` plus each running sequence's own reads; when the
sequences' KV need exceeds the cache, only the fraction that fits advances per
step (continuous batching is then throughput-bound). A cohort alone therefore
takes exactly its formula time, and cohorts together take far less than one
after the other: that is what a swap-free continuous schedule gains, and what
the online benchmark measures.

The clock is real (scaled): callers block on a condition until their cohort's
seconds are spent; whoever wakes advances every cohort to now.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class Cohort:
    """One ``generate`` call as the shared decode loop sees it."""

    #: seconds it would take alone (prefill and decode, as the batch formula gives them)
    alone_s: float
    n: int
    #: mean response length (tokens) and steps after which the cohort is surely done (its cap)
    mean: float
    per_seq_s: float
    #: KV-cache slots: sequences of this kind that fit the cache at once
    slots: float
    steps: float = 0.0
    done: bool = False

    def running(self) -> float:
        if self.mean <= 0:
            return 0.0
        return self.n * math.exp(-self.steps / self.mean)


def _speed(cohorts: list[Cohort], step_fixed_s: float) -> float:
    """Decode steps per second with these cohorts running together."""
    demand = sum(c.running() / max(c.slots, 1.0) for c in cohorts)
    share = min(1.0, 1.0 / demand) if demand > 0 else 1.0
    step = step_fixed_s + sum(c.per_seq_s * c.running() for c in cohorts) * share
    return share / step if step > 0 else math.inf


class SharedDecode:
    """The decode loop of one simulated engine on a real clock (``scale`` wall seconds per simulated one)."""

    #: a cohort's running sequences may change by about this share between two looks
    GRANULARITY = 0.05

    def __init__(self, step_fixed_s: float, scale: float, now: Callable[[], float] = time.perf_counter):
        # tensor parallelism speeds a cohort alone and shared alike: its alone-seconds hold it, the ratio not
        self.step_fixed_s = step_fixed_s
        self.scale = scale
        self._now = now
        self._cond = threading.Condition()
        self._cohorts: list[Cohort] = []
        self._last = now()
        #: most cohorts that ran at once (for tests and benchmarks)
        self.peak = 0

    def run(self, cohort: Cohort) -> float:
        """Block until ``cohort`` is done; its simulated seconds."""
        with self._cond:
            self._advance()
            start = self._last
            self._cohorts.append(cohort)
            self.peak = max(self.peak, len(self._cohorts))
            self._cond.notify_all()  # the others' speed changed: they look again
            while not cohort.done:
                self._cond.wait(timeout=max(self._next_event_s() * self.scale, 1e-4))
                self._advance()
            return (self._last - start) / self.scale if self.scale > 0 else 0.0

    def _rates(self) -> tuple[float, list[float]]:
        """Shared steps per second, and each cohort's rate of spending its alone-seconds."""
        v = _speed(self._cohorts, self.step_fixed_s)
        return v, [v / _speed([c], self.step_fixed_s) for c in self._cohorts]

    def _interval(self, v: float) -> float:
        """Simulated seconds over which the speeds may be taken as constant."""
        shortest = min((c.mean for c in self._cohorts if c.mean > 0), default=0.0)
        steps = max(1.0, self.GRANULARITY * shortest)
        return steps / v if v > 0 and math.isfinite(v) else math.inf

    def _next_event_s(self) -> float:
        if not self._cohorts:
            return 0.0
        v, rates = self._rates()
        finish = min(c.alone_s / r if r > 0 else math.inf for c, r in zip(self._cohorts, rates))
        return min(finish, self._interval(v), 3600.0)

    def _advance(self) -> None:
        now = self._now()
        elapsed = (now - self._last) / self.scale if self.scale > 0 else math.inf
        self._last = now
        while self._cohorts and elapsed > 0:
            v, rates = self._rates()
            dt = min(elapsed, self._interval(v),
                     min(c.alone_s / r if r > 0 else math.inf for c, r in zip(self._cohorts, rates)))
            if not math.isfinite(dt):  # nothing can progress (no time passes in a zero-cost model)
                dt = elapsed
            for c, r in zip(self._cohorts, rates):
                c.steps += v * dt if math.isfinite(v) else 0.0
                c.alone_s -= r * dt
            finished = [c for c in self._cohorts if c.alone_s <= 1e-9]
            for c in finished:
                c.done = True
                self._cohorts.remove(c)
            if finished:
                self._cond.notify_all()
            elapsed -= dt
