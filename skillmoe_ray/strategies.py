"""Routers and aggregators: thin objects over the pure functions in routing and aggregation.

A method of ``skillmoe evaluate`` is a (router, aggregator) pair; the server
uses the pair its config names. Each router takes the batch at once because
the paper's usage floor is a batch-level rule.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING, Sequence

from .aggregation import aggregation_prompt, weighted_vote
from .budget import agreement_settled, apply_budget, choose_prior_strength, order_experts, shrunk_accuracy, size_from_name
from .engines.base import GenerationRequest, SamplingSettings
from .pipeline import ExpertAnswer, Executor
from .profiles import Profiles
from .routing import route_calibrated, route_fixed, route_paper, route_random, route_top_by_weight, skill_accuracy
from .tasks import Question, Task

if TYPE_CHECKING:
    from .config import AggregationConfig, RoutingConfig
    from .pipeline import Router


class FixedRouter:
    """The same experts for every question (single best, fixed top-k, all)."""

    def __init__(self, name: str, experts: Sequence[str]):
        self.name = name
        self.experts = list(experts)

    def route(self, questions: Sequence[Question], skills: Sequence[Sequence[str]], seed: int) -> list[list[str]]:
        return route_fixed(self.experts, len(questions))


class CascadeRouter(FixedRouter):
    """Fixed experts asked in rank order; a question stops once its vote cannot change.

    Gives exactly the fixed top-k vote's answers with fewer expert calls.
    """

    cascade = True


class RandomRouter:
    def __init__(self, experts: Sequence[str], k: int = 3, name: str | None = None):
        self.experts = list(experts)
        self.k = k
        self.name = name or f"random{k}"

    def route(self, questions: Sequence[Question], skills: Sequence[Sequence[str]], seed: int) -> list[list[str]]:
        return route_random(self.experts, len(questions), self.k, seed)


class PaperRouter:
    """Symbolic-MoE recruitment (local score x global strength, k draws with replacement, usage floor).

    Each question draws from its own random stream (seed, question text) and
    the usage floor counts the recruitments of the *validation* questions,
    since a server never sees the whole test set. That makes a question's
    experts independent of its batch: ``skillmoe evaluate`` and the server give
    it the same experts. (The reference applies the floor to the test set's
    own draws; :func:`routing.route_paper` without keys does exactly that.)
    """

    name = "paper"

    def __init__(self, profiles: Profiles, k: int = 3, temperature: float = 0.5, usage_floor: float = 0.05):
        self.scores = profiles.scores
        self.ranking = profiles.ranking()
        self.k = k
        self.temperature = temperature
        self.usage_floor = usage_floor
        self._validation_skills = profiles.question_skills
        self._usage: dict[int, Counter] = {}

    def usage(self, seed: int) -> Counter:
        """How often the validation questions recruit each expert (the usage floor's statistics)."""
        if seed not in self._usage:
            picks = route_paper(self.scores, self._validation_skills, self.k, self.temperature, 0.0, seed,
                                keys=[str(i) for i in range(len(self._validation_skills))])
            self._usage[seed] = Counter(e for sel in picks for e in sel)
        return self._usage[seed]

    def route(self, questions: Sequence[Question], skills: Sequence[Sequence[str]], seed: int) -> list[list[str]]:
        usage = self.usage(seed) if self.usage_floor > 0 else None
        return route_paper(self.scores, skills, self.k, self.temperature, self.usage_floor, seed,
                           keys=[q.text for q in questions], usage=usage)


class DeterministicPaperRouter:
    """The paper's weights S * gamma, but the top k distinct experts instead of k random draws."""

    def __init__(self, profiles: Profiles, k: int = 3, temperature: float = 0.5):
        self.name = f"skillmoe_top{k}"
        self.scores = profiles.scores
        self.ranking = profiles.ranking()
        self.k = k
        self.temperature = temperature

    def route(self, questions: Sequence[Question], skills: Sequence[Sequence[str]], seed: int) -> list[list[str]]:
        return route_top_by_weight(self.scores, skills, self.ranking, self.k, self.temperature)


class CalibratedRouter:
    """Top-k experts by shrunk per-skill validation accuracy; votes are then ranked by the same estimate."""

    def __init__(self, profiles: Profiles, k: int = 5, prior_strength: float = 20.0):
        self.name = f"calibrated_top{k}"
        self.counts = skill_accuracy(profiles.question_skills, profiles.correct)
        self.accuracy = profiles.accuracy
        self.ranking = profiles.ranking()
        self.k = k
        self.prior_strength = prior_strength

    def route(self, questions: Sequence[Question], skills: Sequence[Sequence[str]], seed: int) -> list[list[str]]:
        return route_calibrated(self.counts, self.accuracy, skills, self.ranking, self.k, self.prior_strength)


class BudgetRouter:
    """Cost-aware recruitment: experts most likely right first, asked until two agree or the budget is spent.

    A cascade router (``cascade = True``): :meth:`route` returns each
    question's experts in the order to ask them, already cut to the budget
    (``max_calls`` experts, ``max_size_gb`` summed size); the pipeline asks
    ``first_round`` of them at once, then one per round, and stops a question
    as soon as :meth:`settled` says so. The order is by per-skill validation
    accuracy shrunk toward overall accuracy (see :mod:`budget`); by default
    the prior strength is chosen by cross-validation on the validation split.
    With ``size_weight`` > 0 the order is cost-weighted: estimate / size ** w.
    Pair it with :class:`OrderedVoteAggregator` so vote ties go to the expert
    asked first, as the stopping rule assumes.
    """

    cascade = True

    def __init__(
        self,
        profiles: Profiles,
        max_calls: int | None = 5,
        prior_strength: float | None | str = "cv",
        quorum: int = 2,
        sizes: dict[str, float] | None = None,
        size_weight: float = 0.0,
        max_size_gb: float | None = None,
        name: str | None = None,
    ):
        self.ranking = profiles.ranking()
        self.accuracy = dict(profiles.accuracy)
        self.counts = skill_accuracy(profiles.question_skills, profiles.correct)
        self.max_calls = max_calls
        self.quorum = quorum
        self.sizes = dict(sizes) if sizes else None
        self.size_weight = size_weight
        self.max_size_gb = max_size_gb
        #: answers asked at once in the first round (the pipeline never asks more than half a question's
        #: experts at once): no question can stop before ``quorum`` answers unless its budget is that small
        self.first_round = quorum
        self.cv: list = []
        if prior_strength == "cv":
            prior_strength, self.cv = choose_prior_strength(
                profiles.question_skills, profiles.correct, profiles.preds, max_calls=max_calls or len(self.ranking),
                quorum=quorum)
        self.prior_strength = prior_strength
        self.name = name or f"budget_max{max_calls}"

    def order(self, skills: Sequence[str]) -> list[str]:
        est = shrunk_accuracy(self.counts, self.accuracy, skills, self.prior_strength)  # type: ignore[arg-type]
        order = order_experts(est, self.ranking, self.sizes, self.size_weight)
        return apply_budget(order, self.max_calls, self.sizes, self.max_size_gb)

    def route(self, questions: Sequence[Question], skills: Sequence[Sequence[str]], seed: int) -> list[list[str]]:
        return [self.order(sk) for sk in skills]

    def settled(self, preds: Sequence[str | None], asked_experts: Sequence[str], remaining: int,
                task: Task | None = None) -> bool:
        """Stop once an answer has ``quorum`` votes, the vote cannot change, or no expert is left."""
        return agreement_settled(preds, remaining, self.quorum, task.same_answer if task is not None else None)


class VoteAggregator:
    """Majority vote; ties go to the answer of the better-ranked expert (validation accuracy)."""

    name = "vote"

    def __init__(self, ranking: Sequence[str]):
        self.rank = {e: i for i, e in enumerate(ranking)}

    def _rank(self, answers: Sequence[ExpertAnswer]) -> list[int]:
        return [self.rank.get(a.expert, len(self.rank)) for a in answers]

    def _weight(self, expert: str) -> float:
        return 1.0

    def aggregate(self, task: Task, questions: Sequence[Question], answers: Sequence[Sequence[ExpertAnswer]],
                  executor: Executor, seed: int) -> list[tuple[str | None, str, str]]:
        out = []
        for ans in answers:
            pred = weighted_vote([a.pred for a in ans], [self._weight(a.expert) for a in ans], self._rank(ans), task)
            out.append((pred, _winning_response(ans, pred, task), self.name))
        return out


class OrderedVoteAggregator(VoteAggregator):
    """Majority vote; ties go to the answer of the expert asked first (the router's per-question order)."""

    name = "ordered_vote"

    def __init__(self) -> None:
        super().__init__([])

    def _rank(self, answers: Sequence[ExpertAnswer]) -> list[int]:
        return list(range(len(answers)))


class WeightedVoteAggregator(VoteAggregator):
    """Votes weighted per expert; from profiles: validation log-odds, log(acc / (1 - acc)) shifted positive."""

    name = "weighted_vote"

    def __init__(self, ranking: Sequence[str], weights: dict[str, float]):
        super().__init__(ranking)
        self.weights = dict(weights)

    @classmethod
    def from_profiles(cls, profiles: Profiles) -> "WeightedVoteAggregator":
        return cls(profiles.ranking(), log_odds_weights(profiles.accuracy))

    def _weight(self, expert: str) -> float:
        return self.weights.get(expert, 0.0)


class LLMAggregator:
    """An aggregator model reads the experts' chains of thought and answers (the paper's last step)."""

    def __init__(self, model: str, max_tokens: int = 4096):
        self.model = model
        self.name = f"llm:{model}"
        self.max_tokens = max_tokens

    def aggregate(self, task: Task, questions: Sequence[Question], answers: Sequence[Sequence[ExpertAnswer]],
                  executor: Executor, seed: int) -> list[tuple[str | None, str, str]]:
        requests = [
            GenerationRequest.user(aggregation_prompt(task, q.text, [a.response for a in ans]), key=q.qid,
                                   role="aggregator", question=q.text)
            for q, ans in zip(questions, answers)
        ]
        plan = {self.model: [(i, 0, r) for i, r in enumerate(requests)]}
        texts = executor.run(plan, SamplingSettings(temperature=0.7, max_tokens=self.max_tokens, seed=seed))
        return [(task.extract(texts[(i, 0)]), texts[(i, 0)], self.model) for i in range(len(requests))]


def log_odds_weights(accuracy: dict[str, float], eps: float = 0.02) -> dict[str, float]:
    """log(p/(1-p)) per expert, shifted so the weakest expert still has a small positive vote."""
    raw = {e: math.log(min(max(p, eps), 1 - eps) / (1 - min(max(p, eps), 1 - eps))) for e, p in accuracy.items()}
    low = min(raw.values())
    return {e: w - low + 0.1 for e, w in raw.items()}


def _winning_response(answers: Sequence[ExpertAnswer], pred: str | None, task: Task) -> str:
    """The chain of thought of the first expert that gave the winning answer."""
    for a in answers:
        if a.pred is not None and pred is not None and task.same_answer(a.pred, pred):
            return a.response
    return answers[0].response if answers else ""


def expert_sizes(experts: Sequence[str], configured: dict[str, float | None]) -> dict[str, float] | None:
    """Each expert's size in GB: the pool config's ``size_gb``, else guessed from the name; None if any is unknown."""
    out = {}
    for e in experts:
        size = configured.get(e) or size_from_name(e)
        if size is None:
            return None
        out[e] = size
    return out


def make_router(routing: "RoutingConfig", profiles: Profiles, sizes_gb: dict[str, float | None] | None = None) -> "Router":
    """The router a deployment's ``routing.strategy`` names (``sizes_gb``: the pool's ``size_gb`` per expert)."""
    ranking = profiles.ranking()
    k = min(routing.k, len(ranking)) if routing.strategy in ("cascade", "fixed") else routing.k
    if routing.strategy == "paper":
        return PaperRouter(profiles, routing.k, routing.temperature, routing.usage_floor)
    if routing.strategy == "top_weight":
        return DeterministicPaperRouter(profiles, routing.k, routing.temperature)
    if routing.strategy == "calibrated":
        return CalibratedRouter(profiles, routing.k)
    if routing.strategy == "budget":
        sizes = expert_sizes(profiles.experts, sizes_gb or {})
        return BudgetRouter(profiles, routing.max_calls, quorum=2, sizes=sizes,
                            size_weight=routing.size_weight, max_size_gb=routing.max_size_gb)
    if routing.strategy == "cascade":
        return CascadeRouter(f"cascade_top{k}", ranking[:k])
    return FixedRouter(f"fixed_top{k}", ranking[:k])


def make_aggregator(aggregation: "AggregationConfig", profiles: Profiles):
    if aggregation.mode == "llm":
        name = aggregation.aggregator or profiles.aggregator.get("name")
        return LLMAggregator(name, aggregation.max_tokens)
    if aggregation.mode == "weighted_vote":
        return WeightedVoteAggregator.from_profiles(profiles)
    return VoteAggregator(profiles.ranking())
