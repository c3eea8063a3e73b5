"""A whole batch handed over at once, planned as a unit over the workers (cascade rounds, the keyword
LLM, benchmarks): each expert loaded at most once for it, the workers' finishing times balanced.

The plan is made on what every worker will hold once its queued jobs are done
(the residency policy's prediction), and each worker is sent its jobs in order,
each naming the one before it, so the worker runs them in the planned order and
the predicted loads and wakes are the ones that happen.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Hashable, Mapping

from ..engines.base import GenerationRequest, SamplingSettings
from ..errors import EngineError
from ..execution import ExpertPlan
from .http import user_error
from ..scheduling.planner import Assignment, WorkerState, plan_grouped
from .admission import Unavailable
from .worker_pool import WorkerLost

if TYPE_CHECKING:
    from .scheduler import Scheduler

#: (item key, request): the key comes back with the item's text
Item = tuple[Hashable, GenerationRequest]


def split_items(items: Mapping[str, list[Item]], assignment: Assignment) -> dict[int, list[tuple[str, list]]]:
    """Each worker's jobs with the items it runs: an expert split over workers is cut in order."""
    offsets: dict[str, int] = {}
    out: dict[int, list[tuple[str, list]]] = {}
    for wid, experts in assignment.jobs.items():
        out[wid] = []
        for e in experts:
            share = assignment.shares.get(wid, {}).get(e, len(items[e]))
            start = offsets.get(e, 0)
            out[wid].append((e, items[e][start:start + share]))
            offsets[e] = start + share
    return out


def send_planned(sched: "Scheduler", items: Mapping[str, list[Item]], sampling: SamplingSettings) -> list[asyncio.Future]:
    """Plan ``items`` (expert -> prompts) over the live workers and send each worker its jobs in order.

    Returns one future per job, resolving to (expert, items, the worker's report or the exception); a
    job whose worker is lost resolves to :class:`WorkerLost`, and the caller sends its items again.
    """
    pool = sched.pool
    pool.ensure_prober()
    alive = pool.alive()
    if not alive:
        lost = len(pool.views)
        raise Unavailable(f"no worker of the pool is reachable ({lost} of {lost} lost with their nodes); "
                          "the pool grows back when the cluster has room for its workers again - retry shortly")
    work = {e: len(v) for e, v in items.items() if v}
    states = [WorkerState(wid, tuple(pool.views[wid].tiers.cheap + pool.views[wid].tiers.device),
                          pool.views[wid].pending_s, sched.limits.capacity, tuple(pool.views[wid].tiers.host))
              for wid in alive]
    cost = sched.cost.for_batch(sampling.max_tokens, {e: [req for _, req in v] for e, v in items.items() if v})
    assignment = plan_grouped(work, states, cost, limits=sched.limits)
    sched.last_assignment = assignment
    futures: list[asyncio.Future] = []
    for wid, jobs in split_items(items, assignment).items():
        jobs = [(e, part) for e, part in jobs if part]
        if not jobs:
            continue
        view = pool.views[wid]
        outcome = assignment.predicted[wid]
        view.tiers = outcome.tiers.copy()
        view.predicted_loads += outcome.loads
        view.predicted_wakes += outcome.wakes
        names = [e for e, _ in jobs]
        for i, ((e, part), bring) in enumerate(zip(jobs, outcome.brings)):
            seconds = (0.0 if bring == "resident" else cost.wake(e) if bring == "wake" else cost.load(e)) \
                + cost.generate(e, len(part))
            view.seq += 1
            after = max(view.planned) if view.planned else None
            view.planned.add(view.seq)
            view.pending_s += seconds
            args = (e, part, sampling, names[i + 1:], view.seq, after)
            futures.append(asyncio.ensure_future(_job(sched, wid, e, part, args, seconds, view.seq, bring)))
    return futures


async def _job(sched: "Scheduler", wid: int, expert: str, part: list, args: tuple, seconds: float, seq: int,
               bring: str) -> tuple[str, list, Any]:
    pool = sched.pool
    view = pool.views[wid]
    # its deadline counts the jobs queued before it on the worker
    predicted = sched.times.predict(expert, bring, args[2].max_tokens)
    try:
        result: Any = await pool.call(wid, "run_job", args, expert, predicted)
    finally:
        view.planned.discard(seq)
        view.pending_s = max(0.0, view.pending_s - seconds)
    if not isinstance(result, BaseException):
        if result.timing is not None and not result.failed:
            sched.times.observe(expert, result.timing.as_dict(), result.completions())
        if result.failed:
            sched.unhealthy.update(result.failed)
        # the last job sent reports the worker's final state (the jobs before it ran before it); an earlier
        # job's report may arrive after it, so only that one is taken, and only with nothing else going on
        if seq == view.seq and result.state is not None and view.bringing is None \
                and not any(view.running.values()):
            pool.adopt([result.state])
    return expert, part, result


async def run_planned(sched: "Scheduler", plan: ExpertPlan, sampling: SamplingSettings) -> tuple[dict, dict]:
    """The plan's texts and its summed prompt and completion tokens; a lost worker's jobs are sent again."""
    items = {e: [((qi, slot), req) for qi, slot, req in work] for e, work in plan.items()}
    texts: dict[tuple[int, int], str] = {}
    tokens = {"prompt_tokens": 0, "completion_tokens": 0}
    pending = list(send_planned(sched, items, sampling))
    resent = 0
    while pending:
        done, rest = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        pending = list(rest)
        for fut in done:
            expert, part, result = fut.result()
            if isinstance(result, WorkerLost) and resent < sched.attempts * max(1, len(items)):
                resent += 1  # the same expert, on a worker that is still there
                pending += send_planned(sched, {expert: part}, sampling)
                continue
            if isinstance(result, BaseException):
                raise user_error(result) or EngineError(f"expert {expert}: worker failed ({type(result).__name__})")
            if result.errors:
                raise EngineError(next(iter(result.errors.values())))
            texts.update(result.texts)
            for p, c in result.usage.values():
                tokens["prompt_tokens"] += p
                tokens["completion_tokens"] += c
            sched.asked.update({expert: len(result.texts)})
    return texts, tokens
