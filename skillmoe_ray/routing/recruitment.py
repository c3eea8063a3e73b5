"""Recruitment: which k experts answer each question.

Pure functions over plain data (profiles as dicts, skills as lists of strings,
an explicit ``random.Random``), so they run the same offline and in the server
and can be checked against the paper's formulas by hand.

The paper's recruitment (Symbolic-MoE, section 3):

* local score  S(M_i, q) = sum over the question's skills of M_i's profile score;
* global strength gamma_i from M_i's total profile score: shifted to
  ``x - min + 1`` if any total is negative, raised to 1/T (T = 0.5), normalised;
* only experts with S > 0 are candidates; if none is, all are, with S shifted
  to ``S - min + 1``;
* weights S * gamma, normalised; k experts drawn *with replacement*;
* over a batch, experts recruited for less than ``usage_floor`` of the draws
  are replaced by frequent experts, drawn in proportion to their use.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Mapping, Sequence

Scores = Mapping[str, Mapping[str, float]]  # expert -> skill -> score


def global_strength(scores: Scores, temperature: float = 0.5) -> dict[str, float]:
    """gamma_i: total profile score, shifted positive if any is negative, to the power 1/T, normalised."""
    names = list(scores)
    totals = [float(sum(scores[n].values())) for n in names]
    low = min(totals)
    shifted = [t - low + 1 for t in totals] if low < 0 else totals
    scaled = [s ** (1.0 / temperature) for s in shifted]
    total = sum(scaled)
    if total <= 0:  # every expert scored exactly zero: no information, equal strength
        return {n: 1.0 / len(names) for n in names}
    return {n: s / total for n, s in zip(names, scaled)}


def local_scores(scores: Scores, skills: Sequence[str]) -> dict[str, float]:
    """S(M_i, q): the sum of the expert's profile scores over the question's skills.

    Experts whose profile has none of the skills are left out, as the reference
    ranks only experts that have a score for some skill of the question.
    """
    out: dict[str, float] = {}
    for name, per_skill in scores.items():
        hits = [per_skill[s] for s in dict.fromkeys(skills) if s in per_skill]
        if hits:
            out[name] = float(sum(hits))
    return out


def recruitment_weights(local: Mapping[str, float], strength: Mapping[str, float]) -> dict[str, float]:
    """Normalised S * gamma over positive-S experts (or over all, shifted, when none is positive)."""
    if not local:
        return {}
    positive = {n: s for n, s in local.items() if s > 0}
    if positive:
        raw = {n: s * strength[n] for n, s in positive.items()}
    else:
        low = min(local.values())
        raw = {n: (s - low + 1) * strength[n] for n, s in local.items()}
    total = sum(raw.values())
    if total <= 0:
        return {n: 1.0 / len(raw) for n in raw}
    return {n: w / total for n, w in raw.items()}


def recruit_paper(
    scores: Scores,
    skills: Sequence[str],
    strength: Mapping[str, float],
    k: int,
    rng: random.Random,
) -> list[str]:
    """k experts for one question, drawn with replacement by S * gamma.

    A question none of whose skills any profile knows gets k experts uniformly
    at random, as in the reference.
    """
    weights = recruitment_weights(local_scores(scores, skills), strength)
    if not weights:
        return rng.choices(list(scores), k=k)
    names = list(weights)
    return rng.choices(names, weights=[weights[n] for n in names], k=k)


def apply_usage_floor(
    selections: Sequence[Sequence[str]],
    floor: float,
    rng: random.Random,
    usage: Mapping[str, int] | None = None,
) -> list[list[str]]:
    """Replace experts used for less than ``floor`` of all draws by frequent ones.

    ``usage`` counts draws per expert; by default those of ``selections``
    themselves (the reference applies the rule to the whole test set). Each
    rare draw is replaced independently by an expert at or above the floor,
    chosen in proportion to its use. Fewer distinct experts means fewer loads.
    """
    counts = Counter(usage) if usage is not None else Counter(e for sel in selections for e in sel)
    total = sum(counts.values())
    if floor <= 0 or total == 0:
        return [list(s) for s in selections]
    frequent = {e: c for e, c in counts.items() if c / total >= floor}
    if not frequent:
        return [list(s) for s in selections]
    names = sorted(frequent)
    weights = [frequent[n] for n in names]
    return [[e if e in frequent else rng.choices(names, weights=weights, k=1)[0] for e in sel] for sel in selections]


def question_rng(seed: int, key: str) -> random.Random:
    """A question's own random stream: its draws do not depend on which batch it arrived in."""
    return random.Random(f"{seed}\0{key}")


def route_paper(
    scores: Scores,
    question_skills: Sequence[Sequence[str]],
    k: int = 3,
    temperature: float = 0.5,
    usage_floor: float = 0.05,
    seed: int = 0,
    keys: Sequence[str] | None = None,
    usage: Mapping[str, int] | None = None,
) -> list[list[str]]:
    """The paper's recruitment for a batch (seedable).

    Without ``keys`` it follows the reference literally: one random stream for
    the batch and the usage floor over the batch's own draws. With ``keys``
    (one per question, e.g. its text) every question draws from its own
    stream and the floor uses the given ``usage`` counts, so a question gets
    the same experts offline and online, whatever batch it is in.
    """
    strength = global_strength(scores, temperature)
    if keys is None:
        rng = random.Random(seed)
        picks = [recruit_paper(scores, skills, strength, k, rng) for skills in question_skills]
        return apply_usage_floor(picks, usage_floor, rng, usage)
    out = []
    for skills, key in zip(question_skills, keys):
        rng = question_rng(seed, key)
        picks = recruit_paper(scores, skills, strength, k, rng)
        out.append(apply_usage_floor([picks], usage_floor, rng, usage)[0] if usage is not None else picks)
    return out


def route_fixed(experts: Sequence[str], n_questions: int) -> list[list[str]]:
    return [list(experts) for _ in range(n_questions)]


def route_random(experts: Sequence[str], n_questions: int, k: int, seed: int = 0) -> list[list[str]]:
    """k distinct experts per question, uniformly."""
    rng = random.Random(seed)
    k = min(k, len(experts))
    return [rng.sample(list(experts), k) for _ in range(n_questions)]


def route_top_by_weight(
    scores: Scores,
    question_skills: Sequence[Sequence[str]],
    ranking: Sequence[str],
    k: int = 3,
    temperature: float = 0.5,
) -> list[list[str]]:
    """Deterministic paper routing: the k distinct experts with the largest S * gamma.

    Experts the weights leave out (S <= 0 while others are positive) fill the
    remaining places in validation-rank order. Removes the sampling noise of
    drawing with replacement, which spends calls on repeats.
    """
    strength = global_strength(scores, temperature)
    order = {e: i for i, e in enumerate(ranking)}
    out = []
    for skills in question_skills:
        w = recruitment_weights(local_scores(scores, skills), strength)
        chosen = sorted(w, key=lambda e: (-w[e], order.get(e, len(order))))[:k]
        chosen += [e for e in ranking if e not in chosen][: k - len(chosen)]
        out.append(chosen)
    return out


def skill_accuracy(
    question_skills: Sequence[Sequence[str]],
    correct: Mapping[str, Sequence[bool]],
    prior_strength: float = 20.0,
) -> dict[str, dict[str, tuple[float, float]]]:
    """Per expert and skill: (right, seen) counts on the validation split, for shrunk accuracy estimates."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for expert, oks in correct.items():
        per: dict[str, list[float]] = {}
        for skills, ok in zip(question_skills, oks):
            for s in dict.fromkeys(skills):
                c = per.setdefault(s, [0.0, 0.0])
                c[0] += 1.0 if ok else 0.0
                c[1] += 1.0
        out[expert] = {s: (r, n) for s, (r, n) in per.items()}
    return out


def route_calibrated(
    counts: Mapping[str, Mapping[str, tuple[float, float]]],
    accuracy: Mapping[str, float],
    question_skills: Sequence[Sequence[str]],
    ranking: Sequence[str],
    k: int = 5,
    prior_strength: float = 20.0,
) -> list[list[str]]:
    """Top-k experts by per-skill accuracy shrunk toward their overall accuracy (a beta prior).

    estimate(M, q) = (right on q's skills + m * acc_M) / (seen on q's skills + m),
    m = ``prior_strength``; experts are returned best first, ties by validation rank.
    """
    order = {e: i for i, e in enumerate(ranking)}
    out = []
    for skills in question_skills:
        est = {}
        for e in ranking:
            right = sum(counts[e].get(s, (0.0, 0.0))[0] for s in dict.fromkeys(skills))
            seen = sum(counts[e].get(s, (0.0, 0.0))[1] for s in dict.fromkeys(skills))
            est[e] = (right + prior_strength * accuracy[e]) / (seen + prior_strength)
        out.append(sorted(ranking, key=lambda e: (-est[e], order[e]))[:k])
    return out
