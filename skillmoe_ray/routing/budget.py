"""Routing for cost: ask experts one after another, most-likely-right first, until the answer is settled.

Pure functions over plain data (expert names, accuracy numbers, answer
strings), so they run the same offline, in the pipeline's cascade loop and in
the server, and can be checked by hand.

A budget cascade has three parts:

* **order**: each question's experts by their estimated chance of being right
  on the question's skills -- per-skill validation accuracy shrunk toward the
  expert's overall accuracy (a beta prior of ``prior_strength`` pseudo
  questions). With ``prior_strength=None`` the order is the global validation
  ranking. A *cost-weighted* order divides the estimate by ``size ** size_weight``,
  so a cheap expert that is nearly as good is asked first.
* **budget**: the order is cut to at most ``max_calls`` experts and to a
  summed size of at most ``max_size_gb`` (the first expert is always kept, so
  every question gets an answer).
* **stop**: after each answer the question stops once some answer has
  ``quorum`` votes (two experts agree), or once no later vote can change the
  majority (:func:`aggregation.vote_settled`), or when the budget is spent.

Why these choices (measured in docs/strategies.md): on the recorded MMLU-Pro
pool two agreeing answers are right about 69% of the time against 44% for
the best expert alone, so agreement is the cheap signal that a question is
done; the per-skill estimates come from only 350 validation questions, so
how far to trust them (the prior strength) is chosen by cross-validation on
the validation split (:func:`choose_prior_strength`), never on test labels.
"""

from __future__ import annotations

import math
import random
import re
import statistics
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from ..aggregation.votes import group_answers, vote_settled

#: (right, seen) per expert and skill, as :func:`.recruitment.skill_accuracy` returns
SkillCounts = Mapping[str, Mapping[str, tuple[float, float]]]
Same = Callable[[str, str], bool]


# --------------------------------------------------------------------------- estimates and order


def shrunk_accuracy(
    counts: SkillCounts,
    accuracy: Mapping[str, float],
    skills: Sequence[str],
    prior_strength: float | None,
) -> dict[str, float]:
    """Each expert's estimated accuracy on a question with these skills.

    ``(right on the skills + m * overall accuracy) / (seen on the skills + m)``:
    a skill seen on few validation questions barely moves the estimate away
    from the expert's overall accuracy. ``prior_strength=None`` (m infinite)
    gives the overall accuracy itself.
    """
    if prior_strength is None:
        return {e: float(accuracy[e]) for e in accuracy}
    if prior_strength < 0:
        raise ValueError("prior_strength must be >= 0")
    uniq = list(dict.fromkeys(skills))
    out = {}
    for e, acc in accuracy.items():
        per = counts.get(e, {})
        right = sum(per.get(s, (0.0, 0.0))[0] for s in uniq)
        seen = sum(per.get(s, (0.0, 0.0))[1] for s in uniq)
        denom = seen + prior_strength
        out[e] = (right + prior_strength * acc) / denom if denom > 0 else float(acc)
    return out


def order_experts(
    estimates: Mapping[str, float],
    ranking: Sequence[str],
    sizes: Mapping[str, float] | None = None,
    size_weight: float = 0.0,
) -> list[str]:
    """Experts most likely right first; with ``size_weight`` > 0, by estimate / size ** size_weight.

    Ties go to the better validation rank, so with equal estimates the order
    is the ranking (and the vote's tie-break stays the same).
    """
    pos = {e: i for i, e in enumerate(ranking)}
    if size_weight and not sizes:
        raise ValueError("size_weight needs expert sizes")

    def key(e: str) -> tuple[float, int]:
        est = max(estimates[e], 1e-9)
        score = math.log(est) - (size_weight * math.log(sizes[e]) if size_weight else 0.0)  # type: ignore[index]
        return (-score, pos.get(e, len(pos)))

    return sorted((e for e in ranking if e in estimates), key=key)


def apply_budget(
    order: Sequence[str],
    max_calls: int | None = None,
    sizes: Mapping[str, float] | None = None,
    max_size_gb: float | None = None,
) -> list[str]:
    """The prefix of ``order`` a question may ask: at most ``max_calls`` experts and ``max_size_gb`` summed size.

    Experts are asked in order, so the budget is a prefix; the first expert
    is kept even if it alone is over the size budget (a question must get an
    answer).
    """
    if max_calls is not None and max_calls < 1:
        raise ValueError("max_calls must be >= 1")
    out: list[str] = []
    spent = 0.0
    for e in order:
        if max_calls is not None and len(out) >= max_calls:
            break
        if max_size_gb is not None:
            if sizes is None:
                raise ValueError("max_size_gb needs expert sizes")
            if out and spent + sizes[e] > max_size_gb + 1e-9:
                break
            spent += sizes[e]
        out.append(e)
    return out


# --------------------------------------------------------------------------- stopping


def agreement_settled(
    preds: Sequence[str | None],
    remaining: int,
    quorum: int = 2,
    same: Same | None = None,
) -> bool:
    """Whether a question asked in order can stop: an answer has ``quorum`` votes, the vote cannot change, or nothing is left.

    ``preds`` are the answers so far in the order asked (None: the expert
    stated no answer). The vote's tie-break is the order asked, as in the
    pipeline's cascade.
    """
    if remaining <= 0:
        return True
    eq = same or (lambda a, b: a == b)
    counts: list[tuple[str, int]] = []
    for p in preds:
        if p is None:
            continue
        for i, (q, c) in enumerate(counts):
            if eq(q, p):
                counts[i] = (q, c + 1)
                break
        else:
            counts.append((p, 1))
    if any(c >= quorum for _, c in counts):
        return True
    return vote_settled(preds, list(range(len(preds))), remaining, _SameTask(eq))


class _SameTask:
    """Adapts an equality function to the ``task.same_answer`` that :func:`vote_settled` expects."""

    def __init__(self, same: Same):
        self.same_answer = same


# --------------------------------------------------------------------------- sizes


#: parameter counts (billions) of pool models whose names do not say it
KNOWN_PARAMS_B = {"phi-3-mini": 3.8, "phi-3-small": 7.4, "phi-3-medium": 14.0}


def size_from_name(name: str, bytes_per_param: float = 2.0) -> float | None:
    """Weights in GB guessed from a model name's parameter count ("Llama-2-13b" -> 26 GB at 16 bits).

    For pools whose config gives no ``size_gb`` (the recorded pool): the
    number before a ``b``/``B`` in the name, or a known count for names like
    Phi-3-mini; None when the name says nothing.
    """
    low = name.lower()
    for key, params in KNOWN_PARAMS_B.items():
        if key in low:
            return params * bytes_per_param
    m = re.search(r"(?<![\d.])(\d+(?:[._]\d+)?)b(?![a-z])", low)
    if not m:
        return None
    return float(m.group(1).replace("_", ".")) * bytes_per_param


def expert_sizes(experts: Sequence[str], configured: Mapping[str, float | None]) -> dict[str, float] | None:
    """Each expert's size in GB: the pool config's ``size_gb``, else guessed from the name; None if any is unknown."""
    out = {}
    for e in experts:
        size = configured.get(e) or size_from_name(e)
        if size is None:
            return None
        out[e] = size
    return out


# --------------------------------------------------------------------------- choosing the prior strength


@dataclass(frozen=True)
class CVResult:
    """Cross-validated accuracy of the agreement cascade for one prior strength."""

    prior_strength: float | None
    accuracy: float
    stderr: float
    calls: float


def cascade_outcome(
    order: Sequence[str],
    preds: Mapping[str, str | None],
    quorum: int = 2,
    same: Same | None = None,
) -> tuple[str | None, int]:
    """(final answer, calls) of one question asked in ``order`` (already budget-cut) with the agreement stop.

    The final answer is the vote over the answers asked, ties to the earlier
    asked expert -- what the pipeline's cascade plus an ordered vote give.
    """
    asked: list[str | None] = []
    for i, e in enumerate(order):
        asked.append(preds.get(e))
        if agreement_settled(asked, len(order) - i - 1, quorum, same):
            break
    return ordered_vote(asked, same), len(asked)


def ordered_vote(preds: Sequence[str | None], same: Same | None = None) -> str | None:
    """Majority vote; ties go to the answer given first."""
    groups = group_answers(preds, same or (lambda a, b: a == b))
    if not groups:
        return None
    return preds[min(groups, key=lambda g: (-len(g), g[0]))[0]]


def choose_prior_strength(
    question_skills: Sequence[Sequence[str]],
    correct: Mapping[str, Sequence[bool]],
    preds: Mapping[str, Sequence[str | None]],
    candidates: Sequence[float | None] = (5.0, 20.0, 50.0, 100.0, 200.0, None),
    max_calls: int = 5,
    quorum: int = 2,
    folds: int = 5,
    repeats: int = 5,
    seed: int = 0,
    same: Same | None = None,
) -> tuple[float | None, list[CVResult]]:
    """The prior strength for the per-skill estimates, by repeated k-fold CV on the validation split.

    Each fold's estimates (ranking, per-skill counts) come from the other
    folds only; the score is the agreement cascade's accuracy on the held-out
    fold. With 350 validation questions one question is ~1.4 points of a
    fold, so the *one-standard-error rule* picks: the strongest prior (the
    least trust in per-skill estimates; None = global ranking) whose CV
    accuracy is within one standard error of the best. Test labels are never
    read.
    """
    experts = list(correct)
    eq = same or (lambda a, b: a == b)
    n = len(question_skills)
    if n < folds:
        return None, []
    scores: dict[int, list[float]] = {i: [] for i in range(len(candidates))}
    calls: dict[int, list[float]] = {i: [] for i in range(len(candidates))}
    for r in range(repeats):
        idx = list(range(n))
        random.Random(seed + r).shuffle(idx)
        for f in range(folds):
            held = idx[f::folds]
            held_set = set(held)
            train = [i for i in range(n) if i not in held_set]
            acc = {e: sum(correct[e][i] for i in train) / len(train) for e in experts}
            pos = {e: i for i, e in enumerate(experts)}
            ranking = sorted(experts, key=lambda e: (-acc[e], pos[e]))
            counts = _counts([question_skills[i] for i in train], {e: [correct[e][i] for i in train] for e in experts})
            for ci, m in enumerate(candidates):
                right = asked = 0
                for i in held:
                    est = shrunk_accuracy(counts, acc, question_skills[i], m)
                    order = apply_budget(order_experts(est, ranking), max_calls)
                    answer, c = cascade_outcome(order, {e: preds[e][i] for e in experts}, quorum, same)
                    # no gold here: the answer is right iff an expert that was right gave it
                    right += answer is not None and any(
                        correct[e][i] and preds[e][i] is not None and eq(preds[e][i], answer) for e in experts)
                    asked += c
                scores[ci].append(right / len(held))
                calls[ci].append(asked / len(held))
    results = []
    for ci, m in enumerate(candidates):
        s = scores[ci]
        se = statistics.pstdev(s) / math.sqrt(len(s)) if len(s) > 1 else 0.0
        results.append(CVResult(m, statistics.fmean(s), se, statistics.fmean(calls[ci])))
    best = max(results, key=lambda r: r.accuracy)
    within = [r for r in results if r.accuracy >= best.accuracy - best.stderr]
    # strongest prior first: None (infinite) > larger numbers
    chosen = max(within, key=lambda r: math.inf if r.prior_strength is None else r.prior_strength)
    return chosen.prior_strength, results


def _counts(question_skills: Sequence[Sequence[str]], correct: Mapping[str, Sequence[bool]]) -> dict[str, dict[str, tuple[float, float]]]:
    from .recruitment import skill_accuracy

    return skill_accuracy(question_skills, correct)
