"""The dispatch policy of continuous scheduling: which queued prompts go to which worker, now.

Online questions arrive one by one. Rather than cutting them into micro-batches
that are planned and run as units (each paying its swaps again, each held up
by its own slowest answer), the scheduler keeps one queue per expert, fed by
every ingress replica, and asks this policy what to start whenever something
changes (a question arrives, a job ends, a model is brought in, a worker comes
back):

1. **Join.** Prompts of an expert that a worker holds go to it at once, even
   while it is generating: its engine batches them with the running ones
   (continuous batching), so no swap is paid and no step is wasted. Of several
   copies, the one running fewest prompts of it takes them.
2. **Bring.** A worker with nothing running takes the queued expert that is
   best to bring in: anything that has waited ``max_wait_s`` first (oldest
   first), then the cheapest to bring to that worker (parked in its host
   memory before cold on disk) with the most prompts waiting. Its queued
   prompts go with it. An expert whose copies each run ``join_limit`` prompts
   or more is brought to an idle worker too (a second copy), rather than
   slowing every prompt on the first.
3. **Drain.** When a prompt has waited ``max_wait_s`` and no worker is idle to
   bring its expert, a busy worker is drained (one whose experts have other
   copies, then the one that should be empty soonest):
   nothing more joins it, so it is idle as soon as its prompts are done, and
   then rule 2 gives it the oldest work. Aging bounds every wait.

A model is brought in only where the models it displaces (by the one
residency policy, :func:`~skillmoe_ray.scheduling.residency.step`) run
nothing, so a bring never waits for another model's prompts, and the
prediction of what each worker loads and wakes is exact: the worker applies
the same step to the same tiers.

Pure functions over plain data: the scheduler feeds it its views, and tests
and simulations call it without Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from .residency import Bring, Limits, Tiers, step

_BRING_ORDER = {"resident": 0, "wake": 1, "load": 2}


@dataclass(frozen=True)
class Queue:
    """One expert's queued prompts."""

    expert: str
    count: int
    #: seconds its oldest prompt has waited
    oldest_s: float


@dataclass(frozen=True)
class WorkerView:
    """One worker as the policy sees it."""

    wid: int
    tiers: Tiers
    #: prompts running per expert (sent and not yet answered)
    running: Mapping[str, int] = field(default_factory=dict)
    #: a model is being brought in (nothing else is brought to it until that is done)
    bringing: str | None = None
    #: takes no new joins: it is being emptied for older work
    draining: bool = False
    #: seconds until what it runs now should be done (from measured call times; 0: unknown or idle)
    free_in_s: float = 0.0

    @property
    def busy(self) -> bool:
        return self.bringing is not None or any(n > 0 for n in self.running.values())

    def holds(self, expert: str) -> bool:
        return expert in self.tiers.device or expert in self.tiers.cheap


@dataclass(frozen=True)
class Policy:
    #: prompts of one expert a worker runs before an idle worker is given a copy of it
    join_limit: int = 4
    #: a prompt that has waited this long goes before everything else, and drains a worker if it must
    max_wait_s: float = 60.0


@dataclass(frozen=True)
class Send:
    """Start ``n`` queued prompts of ``expert`` on worker ``wid`` (bringing it in first unless resident)."""

    wid: int
    expert: str
    n: int
    bring: Bring


@dataclass
class Decision:
    sends: list[Send] = field(default_factory=list)
    #: workers to drain (no more joins) so that aged work can have them
    drain: list[int] = field(default_factory=list)


def decide(queues: Sequence[Queue], workers: Sequence[WorkerView], limits: Limits,
           policy: Policy = Policy(), upcoming: Sequence[str] = ()) -> Decision:
    """What to start now. ``workers`` are the live ones; queues with no prompts are ignored.

    ``upcoming`` is the scheduler's guess at what will be needed next (:func:`expected_order`): the
    residency step parks what it names rather than freeing it, and prefetches the first it lacks."""
    left = {q.expert: q.count for q in queues if q.count > 0}
    age = {q.expert: q.oldest_s for q in queues}
    running = {w.wid: dict(w.running) for w in workers}
    out = Decision()

    # 1. joins: experts held somewhere take their prompts there, up to the join limit while a worker is idle
    idle = [w for w in workers if not w.busy and not w.draining]
    for expert in sorted(left, key=lambda e: -age.get(e, 0.0)):
        holders = [w for w in workers if w.holds(expert) and w.bringing is None and not w.draining]
        while left[expert] > 0 and holders:
            w = min(holders, key=lambda h: (running[h.wid].get(expert, 0), h.wid))
            load = running[w.wid].get(expert, 0)
            if not any(running[w.wid].values()) and left[expert] > 1 and \
                    _cheap_copies(expert, [i for i in idle if i.wid != w.wid], running, limits, upcoming):
                break  # idle, and other idle workers hold it cheaply: rule 2 spreads the prompts over them
            spare_idle = [i for i in idle if i.wid != w.wid and not i.holds(expert)]
            if load >= policy.join_limit and spare_idle:
                room = 0  # a copy on an idle worker serves the rest faster than a crowded one
            else:
                room = left[expert] if not spare_idle else max(1, policy.join_limit - load)
            n = min(left[expert], room)
            if n <= 0:
                break
            out.sends.append(Send(w.wid, expert, n, "resident"))
            running[w.wid][expert] = load + n
            left[expert] -= n
            idle = [i for i in idle if i.wid != w.wid]

    # 2. brings: idle workers take the queued experts best brought in
    being_brought = {w.bringing for w in workers if w.bringing is not None}
    # (a drained worker that is empty now is idle: that is what it was drained for)
    idle = [w for w in workers if not any(n > 0 for n in running[w.wid].values()) and w.bringing is None]
    candidates = [e for e in left if left[e] > 0 and e not in being_brought]
    while idle and candidates:
        best: tuple | None = None
        for e in candidates:
            for w in idle:
                st = step(w.tiers.copy(), e, list(upcoming), limits)
                if any(running[w.wid].get(v, 0) for _, v in st.evictions):
                    continue
                aged = age.get(e, 0.0) >= policy.max_wait_s
                key = (not aged, -age.get(e, 0.0) if aged else 0.0, _BRING_ORDER[st.bring], -left[e],
                       -age.get(e, 0.0), w.wid)
                if best is None or key < best[0]:
                    best = (key, w, e, st.bring)
        if best is None:
            break
        _, w, e, bring = best
        idle.remove(w)
        # several prompts: other idle workers that hold the expert or wake it from host memory take a share
        # (a wake costs a host-to-device copy, a small part of a generation; a cold load does not pay)
        helpers = _cheap_copies(e, idle, running, limits, upcoming)[:max(0, left[e] - 1)] if bring != "load" else []
        shares = _split(left[e], 1 + len(helpers))
        out.sends.append(Send(w.wid, e, shares[0], bring))
        for (h, b), n in zip(helpers, shares[1:]):
            out.sends.append(Send(h.wid, e, n, b))
            idle.remove(h)
        left[e] = 0
        candidates.remove(e)

    # 3. drain: aged work with no idle worker to take it empties the least busy worker
    aged = [e for e in left if left[e] > 0 and age.get(e, 0.0) >= policy.max_wait_s and e not in being_brought]
    if aged and not idle and not any(w.draining for w in workers):
        busy = [w for w in workers if w.bringing is None and not w.draining
                and not any(s.wid == w.wid and s.bring != "resident" for s in out.sends)]
        if busy:
            def copies(e: str) -> int:
                return sum(1 for v in workers if v.holds(e))

            # the one whose experts are all held elsewhere too (their prompts still have a place to go),
            # then the one that should be empty soonest
            w = min(busy, key=lambda v: (any(copies(e) < 2 for e, n in running[v.wid].items() if n > 0),
                                         v.free_in_s, sum(running[v.wid].values()), v.wid))
            out.drain.append(w.wid)
    return out


def _cheap_copies(expert: str, idle: Sequence[WorkerView], running: Mapping[int, Mapping[str, int]],
                  limits: Limits, upcoming: Sequence[str]) -> list[tuple[WorkerView, Bring]]:
    """Idle workers that hold ``expert`` or can wake it, without displacing anything running."""
    out = []
    for w in idle:
        st = step(w.tiers.copy(), expert, list(upcoming), limits)
        if st.bring != "load" and not any(running[w.wid].get(v, 0) for _, v in st.evictions):
            out.append((w, st.bring))
    return sorted(out, key=lambda p: (_BRING_ORDER[p[1]], p[0].wid))


def _split(n: int, parts: int) -> list[int]:
    return [n // parts + (i < n % parts) for i in range(parts)]


def predicted_bring(tiers: Tiers, expert: str, limits: Limits, upcoming: Sequence[str] = ()) -> tuple[Bring, Tiers]:
    """What bringing ``expert`` to a worker holding ``tiers`` costs, and what it holds after (the worker
    applies the same step with the same ``upcoming``)."""
    t = tiers.copy()
    st = step(t, expert, list(upcoming), limits)
    return st.bring, t


def expected_order(waiting: Mapping[str, Sequence[float]], demand: Mapping[str, float],
                   names: Sequence[str]) -> list[str]:
    """What the pool will most likely need next, first to last: queued experts (longest waiting first),
    then every other expert by how often it has been asked for. Online there is no plan to read the
    future from; this is the residency policy's stand-in for one, so that an evicted model that will be
    asked for again is parked rather than freed, and the most likely next one is prefetched."""
    queued = sorted((e for e, ts in waiting.items() if ts), key=lambda e: min(waiting[e]))
    rest = sorted((e for e in names if e not in queued), key=lambda e: (-demand.get(e, 0.0), names.index(e)))
    return queued + rest


def queues_of(waiting: Mapping[str, Sequence[float]], now: float) -> list[Queue]:
    """Queues from each expert's enqueue times."""
    return [Queue(e, len(ts), now - min(ts)) for e, ts in waiting.items() if ts]
