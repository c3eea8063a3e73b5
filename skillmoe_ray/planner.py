"""Planning a routed batch onto W workers.

Pure functions over plain data. The grouped planner gives every expert of the
batch to exactly one worker (so it is loaded at most once per batch) and
balances the workers' finishing times with longest-job-first list scheduling:
each expert's job (load, unless resident there, plus generation) goes to the
worker where it would finish earliest, preferring a worker that already holds
the expert. The naive plan, for comparison, loads each question's experts for
that question alone, as a per-request system would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence


@dataclass(frozen=True)
class CostModel:
    """Seconds to load an expert and to generate for n prompts on one worker.

    ``load_s`` and ``per_prompt_s`` are per expert, with defaults for experts
    not listed. ``batch_overhead_s`` is the fixed cost of one generate call.
    """

    load_s: Mapping[str, float] = field(default_factory=dict)
    per_prompt_s: Mapping[str, float] = field(default_factory=dict)
    default_load_s: float = 1.0
    default_per_prompt_s: float = 0.1
    batch_overhead_s: float = 0.0

    def load(self, expert: str) -> float:
        return self.load_s.get(expert, self.default_load_s)

    def generate(self, expert: str, n: int) -> float:
        return self.batch_overhead_s + n * self.per_prompt_s.get(expert, self.default_per_prompt_s) if n else 0.0


@dataclass(frozen=True)
class WorkerState:
    wid: int
    resident: frozenset[str] = frozenset()
    #: seconds of work already queued on the worker
    busy_s: float = 0.0
    #: models the worker can hold at once (device budget in models)
    capacity: int = 1


@dataclass
class Assignment:
    """Per worker, the experts to run in order; the planner's predicted finishing times."""

    jobs: dict[int, list[str]]
    finish_s: dict[int, float]
    loads: int

    @property
    def makespan_s(self) -> float:
        return max(self.finish_s.values(), default=0.0)

    def worker_of(self) -> dict[str, int]:
        return {e: w for w, experts in self.jobs.items() for e in experts}


def plan_grouped(work: Mapping[str, int], workers: Sequence[WorkerState], cost: CostModel) -> Assignment:
    """Expert-grouped, residency-aware, load-balanced assignment of a batch's work.

    ``work`` maps each expert to its number of prompts in the batch.
    """
    if not workers:
        raise ValueError("no workers to plan onto")
    finish = {w.wid: w.busy_s for w in workers}
    resident = {w.wid: list(w.resident) for w in workers}
    capacity = {w.wid: max(1, w.capacity) for w in workers}
    jobs: dict[int, list[str]] = {w.wid: [] for w in workers}
    loads = 0

    def job_cost(e: str, wid: int) -> float:
        return (0.0 if e in resident[wid] else cost.load(e)) + cost.generate(e, work[e])

    # experts already resident somewhere first (they run before any swap), then longest first
    anywhere = {e for w in workers for e in w.resident}
    order = sorted((e for e, n in work.items() if n > 0),
                   key=lambda e: (e not in anywhere, -(cost.load(e) + cost.generate(e, work[e])), e))
    for e in order:
        wid = min(finish, key=lambda w: (finish[w] + job_cost(e, w), e not in resident[w], w))
        finish[wid] += job_cost(e, wid)
        if e not in resident[wid]:
            loads += 1
            resident[wid].append(e)
            if len(resident[wid]) > capacity[wid]:
                resident[wid].pop(0)
        jobs[wid].append(e)
    return Assignment(jobs, finish, loads)


def plan_naive(selections: Sequence[Sequence[str]], n_workers: int, cost: CostModel) -> Assignment:
    """Per-question execution: question i goes to worker i mod W, which loads each of its experts for it."""
    finish = {w: 0.0 for w in range(n_workers)}
    jobs: dict[int, list[str]] = {w: [] for w in range(n_workers)}
    loads = 0
    current: dict[int, str | None] = {w: None for w in range(n_workers)}
    for qi, experts in enumerate(selections):
        w = qi % n_workers
        for e in experts:
            if current[w] != e:
                finish[w] += cost.load(e)
                loads += 1
                current[w] = e
            finish[w] += cost.generate(e, 1)
            jobs[w].append(e)
    return Assignment(jobs, finish, loads)
