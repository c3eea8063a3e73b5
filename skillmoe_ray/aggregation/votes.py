"""Merging the experts' answers: votes, and choosing the task's aggregator model.

The paper picks one aggregator per task with a synthetic benchmark built on the
validation split: for each question, one correct and two wrong chains of
thought, shuffled; every candidate answers; the best hit rate wins. The
aggregator then reads the k experts' chains of thought (each cut after any
``</think>``) and answers the question itself. The prompt texts live in
:mod:`..prompts`, the aggregator objects in :mod:`.aggregators`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from ..tasks.catalogue import Task


def _same(task: Task | None) -> Callable[[str, str], bool]:
    return task.same_answer if task is not None else (lambda a, b: a == b)


def group_answers(preds: Sequence[str | None], same: Callable[[str, str], bool]) -> list[list[int]]:
    """Indices of equivalent answers, groups in order of first appearance; None (no answer) joins no group."""
    groups: list[list[int]] = []
    for i, p in enumerate(preds):
        if p is None:
            continue
        for g in groups:
            if same(preds[g[0]], p):  # type: ignore[arg-type]
                g.append(i)
                break
        else:
            groups.append([i])
    return groups


def weighted_vote(
    preds: Sequence[str | None],
    weights: Sequence[float],
    rank: Sequence[int] | None = None,
    task: Task | None = None,
) -> str | None:
    """The answer with the largest total weight; None votes abstain.

    Ties go to the answer backed by the best-ranked voter (lowest ``rank``),
    then to the answer given first. Equivalent answers (``1/2`` and ``0.5`` in
    a boxed task) pool their weight.
    """
    if len(preds) != len(weights):
        raise ValueError("preds and weights must have the same length")
    rank = list(rank) if rank is not None else list(range(len(preds)))
    groups = group_answers(preds, _same(task))
    if not groups:
        return None

    def key(g: list[int]) -> tuple[float, int, int]:
        return (-sum(weights[i] for i in g), min(rank[i] for i in g), g[0])

    best = min(groups, key=key)
    return preds[best[0]]


def majority_vote(preds: Sequence[str | None], rank: Sequence[int] | None = None, task: Task | None = None) -> str | None:
    return weighted_vote(preds, [1.0] * len(preds), rank, task)


# --------------------------------------------------------------------------- aggregator benchmark


@dataclass(frozen=True)
class AggregatorTask:
    """One synthetic aggregation item: the question and three shuffled chains of thought."""

    qid: str
    question: str
    gold: str
    responses: tuple[str, str, str]
    correct_position: int


def build_aggregator_tasks(
    qids: Sequence[str],
    questions: Sequence[str],
    golds: Sequence[str],
    outputs: Mapping[str, Sequence[str]],
    correct: Mapping[str, Sequence[bool]],
    seed: int = 0,
) -> list[AggregatorTask]:
    """1 correct + 2 wrong chains of thought per validation question, shuffled.

    Questions where no expert was right, or fewer than two were wrong, carry no
    signal about reading skill and are skipped (the reference pads them with
    empty strings instead, which only adds noise).
    """
    rng = random.Random(seed)
    experts = list(outputs)
    tasks = []
    for i, qid in enumerate(qids):
        right = [outputs[e][i] for e in experts if correct[e][i]]
        wrong = [outputs[e][i] for e in experts if not correct[e][i] and outputs[e][i]]
        if not right or len(wrong) < 2:
            continue
        good = rng.choice(right)
        chosen = [good, *rng.sample(wrong, 2)]
        rng.shuffle(chosen)
        tasks.append(AggregatorTask(qid, questions[i], golds[i], tuple(chosen), chosen.index(good)))
    return tasks


def select_aggregator(hit_rates: Mapping[str, float], ranking: Sequence[str] = ()) -> str:
    """Best hit rate on the synthetic benchmark; ties go to the better-ranked expert."""
    if not hit_rates:
        raise ValueError("no aggregator candidates were benchmarked")
    order = {n: i for i, n in enumerate(ranking)}
    return min(hit_rates, key=lambda n: (-hit_rates[n], order.get(n, len(order)), n))


def agreed(preds: Sequence[str | None], task: Task | None = None) -> str | None:
    """The answer every expert gave, when at least two answered and all read the same (equal as the task
    compares answers); None otherwise. An aggregator reading agreeing chains of thought changes the answer
    rarely (MOSAIC, arXiv 2606.03014: under 0.1 point), so ``aggregation.skip_when_agreed`` lets it stand."""
    if len(preds) < 2 or any(p is None for p in preds):
        return None
    same = _same(task)
    first = preds[0]
    assert first is not None
    return first if all(same(first, p) for p in preds[1:]) else None  # type: ignore[arg-type]


def vote_settled(preds: Sequence[str | None], rank: Sequence[int], remaining: int, task: Task | None = None) -> bool:
    """Whether ``remaining`` more votes, all from experts ranked below every voter so far, can change the vote.

    Used by cascades: experts are asked in rank order and a question stops as
    soon as its majority vote is certain. The leader is settled when every
    other answer, even with all remaining votes, stays behind it, or only ties
    it and loses the tie-break (an answer nobody has given yet would get its
    best voter from the remaining, lower-ranked experts).
    """
    winner = majority_vote(preds, rank, task)
    if winner is None:
        return remaining == 0
    same = _same(task)
    lead_idx = [i for i, p in enumerate(preds) if p is not None and same(p, winner)]
    lead = len(lead_idx)
    lead_best = min(rank[i] for i in lead_idx)
    others: dict[int, list[int]] = {}
    for i, p in enumerate(preds):
        if p is None or same(p, winner):
            continue
        key = next((j for j in others if same(preds[j], p)), i)
        others.setdefault(key, []).append(i)
    # an unseen answer: 0 votes so far, best voter among the remaining (always worse-ranked)
    if remaining > lead:
        return False
    for idx in others.values():
        count = len(idx) + remaining
        if count > lead or (count == lead and min(rank[i] for i in idx) < lead_best):
            return False
    return True
