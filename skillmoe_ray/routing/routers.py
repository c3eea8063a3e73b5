"""Routers: small objects over the pure recruitment functions, and the registry that names them.

A deployment's ``routing.strategy`` is a key of :data:`ROUTERS`, so the server
(:func:`make_router`) and ``skillmoe evaluate`` build the same object from the
same name, and a new router is one decorated class. Each router takes the batch
at once because the paper's usage floor is a batch-level rule.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from typing import TYPE_CHECKING, Mapping, Sequence

from ..aggregation.votes import vote_settled
from .budget import agreement_settled, apply_budget, choose_prior_strength, expert_sizes, order_experts, shrunk_accuracy
from ..errors import ConfigError
from ..profiles import Profiles
from .recruitment import route_calibrated, route_fixed, route_paper, route_random, route_top_by_weight, skill_accuracy
from ..registry import Registry
from ..tasks.catalogue import Question, Task

if TYPE_CHECKING:
    from ..config import RoutingConfig


class Router(ABC):
    """Chooses each question's experts for a whole batch."""

    name: str
    #: experts come back in the order they should be asked; the pipeline asks them
    #: in rounds and stops a question once its vote can no longer change
    #: (see :func:`..aggregation.votes.vote_settled`)
    cascade: bool = False
    #: best first; the pipeline substitutes an unhealthy expert with the first
    #: healthy one of this order the question does not have yet
    ranking: list[str]
    #: the ``routing.strategy`` this class is registered under (set by :func:`register_router`)
    strategy: str | None = None
    #: cascade: at most this many of a question's experts are asked in the first round
    #: (never more than half of them); None: half, rounded up
    first_round: int | None = None

    @abstractmethod
    def route(self, questions: Sequence[Question], skills: Sequence[Sequence[str]], seed: int) -> list[list[str]]:
        """The experts of each question, one list per question."""

    def settled(self, preds: Sequence[str | None], asked_experts: Sequence[str], remaining: int, task: Task | None) -> bool:
        """Cascade: whether a question can stop, given its answers so far in the order asked.

        ``remaining``: how many of its experts are not asked yet. By default it
        stops once no remaining vote can change the majority, ties going to the
        expert asked first (:func:`..aggregation.votes.vote_settled`).
        """
        return vote_settled(preds, list(range(len(preds))), remaining, task)

    @classmethod
    def from_config(cls, routing: RoutingConfig, profiles: Profiles) -> Router:
        """The router a deployment's routing section describes (registered routers override this)."""
        raise ConfigError(f"{cls.__name__} cannot be built from a deployment's routing section")


#: ``routing.strategy`` -> how to build that router from the config and the profiles
ROUTERS = Registry("router", "routing.strategy", "strategy")
register_router = ROUTERS.register


def make_router(routing: RoutingConfig, profiles: Profiles) -> Router:
    """The router a deployment's ``routing.strategy`` names."""
    return ROUTERS.make(routing.strategy, routing, profiles)


@register_router("fixed")
class FixedRouter(Router):
    """The same experts for every question (single best, fixed top-k, all)."""

    def __init__(self, name: str, experts: Sequence[str]):
        self.name = name
        self.experts = list(experts)
        self.ranking = list(self.experts)

    @classmethod
    def from_config(cls, routing: RoutingConfig, profiles: Profiles) -> Router:
        """The top k by validation rank; k is capped at the pool so the name says what runs."""
        ranking = profiles.ranking()
        k = min(routing.k, len(ranking))
        return cls(f"{cls.strategy}_top{k}", ranking[:k])

    def route(self, questions: Sequence[Question], skills: Sequence[Sequence[str]], seed: int) -> list[list[str]]:
        return route_fixed(self.experts, len(questions))


@register_router("cascade")
class CascadeRouter(FixedRouter):
    """Fixed experts asked in rank order; a question stops once its vote cannot change.

    Gives exactly the fixed top-k vote's answers with fewer expert calls.
    """

    cascade = True


class RandomRouter(Router):
    """k experts drawn at random per question: the baseline that shows routing matters.

    Not a deployment strategy, so it is not registered; only ``skillmoe evaluate`` runs it.
    """

    def __init__(self, experts: Sequence[str], k: int = 3, name: str | None = None):
        self.experts = list(experts)
        self.ranking = list(self.experts)
        self.k = k
        self.name = name or f"random{k}"

    def route(self, questions: Sequence[Question], skills: Sequence[Sequence[str]], seed: int) -> list[list[str]]:
        return route_random(self.experts, len(questions), self.k, seed)


@register_router("paper")
class PaperRouter(Router):
    """Symbolic-MoE recruitment (local score x global strength, k draws with replacement, usage floor).

    Each question draws from its own random stream (seed, question text) and
    the usage floor counts the recruitments of the *validation* questions,
    since a server never sees the whole test set. That makes a question's
    experts independent of its batch: ``skillmoe evaluate`` and the server give
    it the same experts. (The reference applies the floor to the test set's
    own draws; :func:`.recruitment.route_paper` without keys does exactly that.)
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

    @classmethod
    def from_config(cls, routing: RoutingConfig, profiles: Profiles) -> Router:
        return cls(profiles, routing.k, routing.temperature, routing.usage_floor)

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


@register_router("top_weight")
class DeterministicPaperRouter(Router):
    """The paper's weights S * gamma, but the top k distinct experts instead of k random draws."""

    def __init__(self, profiles: Profiles, k: int = 3, temperature: float = 0.5):
        self.name = f"skillmoe_top{k}"
        self.scores = profiles.scores
        self.ranking = profiles.ranking()
        self.k = k
        self.temperature = temperature

    @classmethod
    def from_config(cls, routing: RoutingConfig, profiles: Profiles) -> Router:
        return cls(profiles, routing.k, routing.temperature)

    def route(self, questions: Sequence[Question], skills: Sequence[Sequence[str]], seed: int) -> list[list[str]]:
        return route_top_by_weight(self.scores, skills, self.ranking, self.k, self.temperature)


@register_router("calibrated")
class CalibratedRouter(Router):
    """Top-k experts by shrunk per-skill validation accuracy; votes are then ranked by the same estimate."""

    def __init__(self, profiles: Profiles, k: int = 5, prior_strength: float = 20.0):
        self.name = f"calibrated_top{k}"
        self.counts = skill_accuracy(profiles.question_skills, profiles.correct)
        self.accuracy = profiles.accuracy
        self.ranking = profiles.ranking()
        self.k = k
        self.prior_strength = prior_strength

    @classmethod
    def from_config(cls, routing: RoutingConfig, profiles: Profiles) -> Router:
        return cls(profiles, routing.k)

    def route(self, questions: Sequence[Question], skills: Sequence[Sequence[str]], seed: int) -> list[list[str]]:
        return route_calibrated(self.counts, self.accuracy, skills, self.ranking, self.k, self.prior_strength)


@register_router("budget")
class BudgetRouter(Router):
    """Cost-aware recruitment: experts most likely right first, asked until two agree or the budget is spent.

    A cascade router: :meth:`route` returns each question's experts in the
    order to ask them, already cut to the budget (``max_calls`` experts,
    ``max_size_gb`` summed size); the pipeline asks ``first_round`` of them at
    once, then one per round, and stops a question as soon as :meth:`settled`
    says so. The order is by per-skill validation accuracy shrunk toward
    overall accuracy (see :mod:`.budget`); by default the prior strength is
    chosen by cross-validation on the validation split. With ``size_weight``
    > 0 the order is cost-weighted: estimate / size ** w. Pair it with
    :class:`..aggregation.aggregators.OrderedVoteAggregator` so vote ties go to the expert
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

    @classmethod
    def from_config(cls, routing: RoutingConfig, profiles: Profiles,
                    sizes_gb: Mapping[str, float | None] | None = None) -> Router:
        """``routing.max_calls`` / ``max_size_gb`` / ``size_weight``; prior strength by CV on validation.

        Sizes: ``sizes_gb`` (the pool config's ``size_gb`` per expert) where
        given, else guessed from the model names (:func:`.budget.size_from_name`);
        the registry passes none, so a deployment's router guesses them all.
        """
        sizes = expert_sizes(profiles.experts, sizes_gb or {})
        if sizes is None and (routing.size_weight or routing.max_size_gb is not None):
            raise ConfigError("routing.size_weight / max_size_gb need every expert's size, and some model names "
                              "do not say it")
        name = f"budget_sized{routing.size_weight:g}_max{routing.max_calls}" if routing.size_weight else None
        return cls(profiles, routing.max_calls, quorum=2, sizes=sizes, size_weight=routing.size_weight,
                   max_size_gb=routing.max_size_gb, name=name)

    def order(self, skills: Sequence[str]) -> list[str]:
        """One question's experts in the order to ask them, cut to the budget."""
        est = shrunk_accuracy(self.counts, self.accuracy, skills, self.prior_strength)  # type: ignore[arg-type]
        order = order_experts(est, self.ranking, self.sizes, self.size_weight)
        return apply_budget(order, self.max_calls, self.sizes, self.max_size_gb)

    def route(self, questions: Sequence[Question], skills: Sequence[Sequence[str]], seed: int) -> list[list[str]]:
        return [self.order(sk) for sk in skills]

    def settled(self, preds: Sequence[str | None], asked_experts: Sequence[str], remaining: int, task: Task | None) -> bool:
        """Stop once an answer has ``quorum`` votes, the vote cannot change, or no expert is left."""
        return agreement_settled(preds, remaining, self.quorum, task.same_answer if task is not None else None)
