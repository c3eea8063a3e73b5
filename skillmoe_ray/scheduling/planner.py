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

from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Callable, Mapping, Protocol, Sequence

from ..engines.base import GenerationRequest
from .residency import Limits, Outcome, Tiers, after_job, simulate, step


class Costs(Protocol):
    """What the planner needs to know about time: loads (cold, or a wake from host memory) and batches."""

    def load(self, expert: str) -> float: ...

    def wake(self, expert: str) -> float: ...

    def generate(self, expert: str, n: int) -> float: ...

    def for_batch(self, max_tokens: int, requests: Mapping[str, Sequence[GenerationRequest]]) -> "Costs":
        """The same model for one batch: its sampling's ``max_tokens`` and its prompts (an aggregator's quote the
        experts' answers and run far longer or shorter than a question's)."""
        ...


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
    #: a parked model's wake costs this fraction of its cold load
    wake_fraction: float = 0.1

    def load(self, expert: str) -> float:
        return self.load_s.get(expert, self.default_load_s)

    def wake(self, expert: str) -> float:
        return self.wake_fraction * self.load(expert)

    def generate(self, expert: str, n: int) -> float:
        return self.batch_overhead_s + n * self.per_prompt_s.get(expert, self.default_per_prompt_s) if n else 0.0

    def for_batch(self, max_tokens: int, requests: Mapping[str, Sequence[GenerationRequest]]) -> "CostModel":
        """Per-prompt seconds here are measured figures with no length model behind them: the same for any batch."""
        return self


@dataclass(frozen=True)
class WorkerState:
    wid: int
    #: models on the device, in the order they were loaded (cheap, always-resident ones included)
    resident: Sequence[str] = ()
    #: seconds of work already queued on the worker
    busy_s: float = 0.0
    #: models the worker can hold at once (device budget in models)
    capacity: int = 1
    #: models parked in the worker's host memory (a wake away)
    parked: Sequence[str] = ()

    def tiers(self, limits: Limits) -> Tiers:
        resident = list(self.resident)
        return Tiers(device=[n for n in resident if not limits.trait(n).cheap], host=list(self.parked),
                     cheap=[n for n in resident if limits.trait(n).cheap])


@dataclass
class Assignment:
    """Per worker, the experts to run in order, and how many of each expert's prompts it takes.

    An expert is normally on one worker; a long job may be split over several
    workers (each loads the expert and takes a share of its prompts).
    ``predicted`` is what each worker will load, wake and hold running its
    jobs, by the residency policy the workers themselves apply.
    """

    jobs: dict[int, list[str]]
    finish_s: dict[int, float]
    loads: int
    #: worker -> expert -> prompts of that expert it runs
    shares: dict[int, dict[str, int]] = field(default_factory=dict)
    predicted: dict[int, Outcome] = field(default_factory=dict)

    @property
    def makespan_s(self) -> float:
        return max(self.finish_s.values(), default=0.0)

    @property
    def wakes(self) -> int:
        return sum(o.wakes for o in self.predicted.values())

    def worker_of(self) -> dict[str, int]:
        return {e: w for w, experts in self.jobs.items() for e in experts}

    def workers_of(self, expert: str) -> list[tuple[int, int]]:
        """(worker, prompts) for every worker that runs ``expert``, in worker order."""
        return [(w, sh[expert]) for w, sh in sorted(self.shares.items()) if expert in sh]


def _split(n: int, parts: int) -> list[int]:
    base, extra = divmod(n, parts)
    return [base + (i < extra) for i in range(parts)]


def _bring_cost(cost: Costs, e: str, bring: str) -> float:
    return 0.0 if bring == "resident" else cost.wake(e) if bring == "wake" else cost.load(e)


def worker_limits(limits: Limits | None, w: WorkerState) -> Limits:
    return replace(limits or Limits(), capacity=max(1, w.capacity))


def _list_schedule(work: Mapping[str, int], parts: Mapping[str, int], workers: Sequence[WorkerState],
                   cost: Costs, limits: Limits | None = None) -> Assignment:
    lim = {w.wid: worker_limits(limits, w) for w in workers}
    start = {w.wid: w.tiers(lim[w.wid]) for w in workers}
    tiers = {wid: t.copy() for wid, t in start.items()}
    finish = {w.wid: w.busy_s for w in workers}
    jobs: dict[int, list[str]] = {w.wid: [] for w in workers}
    shares: dict[int, dict[str, int]] = {w.wid: {} for w in workers}

    def bring(e: str, wid: int) -> str:
        t = tiers[wid]
        return "resident" if t.holds(e) else "wake" if e in t.host else "load"

    def job_cost(e: str, n: int, wid: int) -> float:
        return _bring_cost(cost, e, bring(e, wid)) + cost.generate(e, n)

    # experts already resident somewhere first (they run before any swap), then longest first
    anywhere = {e for w in workers for e in w.resident}
    pieces = [(e, n) for e, total in work.items() if total > 0 for n in _split(total, parts.get(e, 1)) if n > 0]
    pieces.sort(key=lambda p: (p[0] not in anywhere, -(cost.load(p[0]) + cost.generate(p[0], p[1])), p[0]))
    for e, n in pieces:
        free = [w for w in finish if e not in shares[w]] or list(finish)  # a split's pieces go to different workers
        wid = min(free, key=lambda w: (finish[w] + job_cost(e, n, w), not tiers[w].holds(e), w))
        finish[wid] += job_cost(e, n, wid)
        # while assigning, later jobs are unknown: the policy runs without a look-ahead here
        step(tiers[wid], e, [], lim[wid])
        after_job(tiers[wid], e, lim[wid])
        if e not in shares[wid]:
            jobs[wid].append(e)
        shares[wid][e] = shares[wid].get(e, 0) + n
    # the prediction: each worker's whole job list through the policy, with the look-ahead the worker has
    predicted = {wid: simulate(start[wid], jobs[wid], lim[wid]) for wid in jobs}
    busy = {w.wid: w.busy_s for w in workers}
    finish = _rebalance(jobs, shares, predicted, busy, cost)
    loads = sum(o.loads for o in predicted.values())
    return Assignment(jobs, finish, loads, shares, predicted)


def _finish(wid: int, jobs: Mapping[int, list[str]], shares: Mapping[int, Mapping[str, int]],
            predicted: Mapping[int, Outcome], busy: Mapping[int, float], cost: Costs,
            generate: Callable[[str, int], float]) -> float:
    return busy[wid] + sum(_bring_cost(cost, e, b) + generate(e, shares[wid][e])
                           for e, b in zip(jobs[wid], predicted[wid].brings))


def _rebalance(jobs: Mapping[int, list[str]], shares: dict[int, dict[str, int]], predicted: Mapping[int, Outcome],
               busy: Mapping[int, float], cost: Costs) -> dict[int, float]:
    """Even out the workers' finishing times by moving prompts of split experts between their pieces.

    Equal pieces leave the workers that paid a load (or carry a second job)
    finishing last while the others idle. Pieces stay where the expert runs,
    so a move changes no load, wake or job order (the residency prediction
    stands), only generation times. Each move balances one pair of workers
    that share an expert, so the makespan never grows; repeated, the moves
    spread slack along chains of shared experts. Mutates ``shares``; returns each worker's finishing time.
    """
    # the moves ask for the same few batch sizes over and over; a cost model's generate may be far from free
    generate = lru_cache(maxsize=None)(cost.generate)
    finish = {wid: _finish(wid, jobs, shares, predicted, busy, cost, generate) for wid in jobs}
    # sorted: among equal gains the first found wins, so the plan must not depend on a set's hash order
    split = sorted(e for e in {e for j in jobs.values() for e in j} if sum(e in sh for sh in shares.values()) > 1)
    for _ in range(64 * max(1, len(jobs))):
        best: tuple[float, str, int, int, int] | None = None
        for e in split:
            holders = [w for w, sh in shares.items() if e in sh]
            for hi_w in holders:
                for lo_w in holders:
                    n_h, n_l = shares[hi_w][e], shares[lo_w][e]
                    if finish[hi_w] <= finish[lo_w] or n_h < 2:
                        continue
                    gen_h, gen_l = generate(e, n_h), generate(e, n_l)

                    def after(m: int) -> tuple[float, float]:
                        return (finish[hi_w] - gen_h + generate(e, n_h - m),
                                finish[lo_w] - gen_l + generate(e, n_l + m))

                    lo, hi = 1, n_h - 1  # the largest move that leaves the busier worker no earlier than the other
                    while lo < hi:
                        mid = (lo + hi + 1) // 2
                        h_after, l_after = after(mid)
                        lo, hi = (mid, hi) if h_after >= l_after else (lo, mid - 1)
                    for m in {lo, min(lo + 1, n_h - 1)}:
                        gain = finish[hi_w] - max(after(m))
                        if gain > 1e-6 and (best is None or gain > best[0]):
                            best = (gain, e, hi_w, lo_w, m)
        if best is None:
            break
        _, e, hi_w, lo_w, m = best
        shares[hi_w][e] -= m
        shares[lo_w][e] += m
        finish[hi_w] = _finish(hi_w, jobs, shares, predicted, busy, cost, generate)
        finish[lo_w] = _finish(lo_w, jobs, shares, predicted, busy, cost, generate)
    return finish


def plan_grouped(work: Mapping[str, int], workers: Sequence[WorkerState], cost: Costs,
                 split: bool = True, limits: Limits | None = None) -> Assignment:
    """Expert-grouped, residency-aware, load-balanced assignment of a batch's work.

    ``work`` maps each expert to its number of prompts in the batch. Each
    expert's job (load, unless resident or parked there, plus generation) goes
    to the worker where it would finish earliest, longest job first. With
    ``limits`` (the workers' budgets, prefetch and their models' traits) feed the
    residency policy the workers apply, so ``predicted`` is what they will do. With
    ``split``, a job that sets the makespan is then split over one more worker
    at a time (each piece pays its own load) for as long as that shortens the
    batch: one expert holding most of a batch's prompts would otherwise leave
    the other workers idle. The pieces are sized so that their workers finish
    together (see ``_rebalance``), not cut equal.
    """
    if not workers:
        raise ValueError("no workers to plan onto")
    parts = {e: 1 for e in work}
    best = _list_schedule(work, parts, workers, cost, limits)
    if not split:
        return best
    while True:
        critical = max(best.finish_s, key=lambda w: best.finish_s[w])
        candidates = [e for e in best.jobs[critical] if parts[e] < min(len(workers), work[e])]
        if not candidates:
            return best
        # the critical worker's longest job is the one worth spreading
        e = max(candidates, key=lambda x: cost.generate(x, best.shares[critical][x]))
        trial_parts = dict(parts, **{e: parts[e] + 1})
        trial = _list_schedule(work, trial_parts, workers, cost, limits)
        if trial.makespan_s >= best.makespan_s - 1e-9:
            return best
        parts, best = trial_parts, trial


def plan_naive(selections: Sequence[Sequence[str]], n_workers: int, cost: Costs) -> Assignment:
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
