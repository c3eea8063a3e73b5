"""Routers: small objects over the pure recruitment functions, and the registry that names them.

A deployment's ``routing.strategy`` is a key of :data:`ROUTERS`, so the server
(:func:`make_router`) and ``skillmoe evaluate`` build the same object from the
same name, and a new router is one decorated class. Each router takes the batch
at once because the paper's usage floor is a batch-level rule.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from typing import TYPE_CHECKING, Callable, Sequence, TypeVar

from .errors import ConfigError
from .profiles import Profiles
from .recruitment import route_calibrated, route_fixed, route_paper, route_random, route_top_by_weight, skill_accuracy
from .tasks import Question

if TYPE_CHECKING:
    from .config import RoutingConfig


class Router(ABC):
    """Chooses each question's experts for a whole batch."""

    name: str
    #: experts come back in the order they should be asked; the pipeline asks them
    #: in rounds and stops a question once its vote can no longer change
    #: (see :func:`.aggregation.vote_settled`)
    cascade: bool = False
    #: best first; the pipeline substitutes an unhealthy expert with the first
    #: healthy one of this order the question does not have yet
    ranking: list[str]
    #: the ``routing.strategy`` this class is registered under (set by :func:`register_router`)
    strategy: str | None = None

    @abstractmethod
    def route(self, questions: Sequence[Question], skills: Sequence[Sequence[str]], seed: int) -> list[list[str]]:
        """The experts of each question, one list per question."""

    @classmethod
    def from_config(cls, routing: RoutingConfig, profiles: Profiles) -> Router:
        """The router a deployment's routing section describes (registered routers override this)."""
        raise ConfigError(f"{cls.__name__} cannot be built from a deployment's routing section")


RouterFactory = Callable[["RoutingConfig", Profiles], Router]

#: ``routing.strategy`` -> how to build that router from the config and the profiles
ROUTERS: dict[str, RouterFactory] = {}

R = TypeVar("R", bound=type[Router])


def register_router(name: str) -> Callable[[R], R]:
    """Class decorator: the router is built by ``ROUTERS[name]`` through its ``from_config``."""

    def register(cls: R) -> R:
        if name in ROUTERS:
            raise ValueError(f"a router is already registered as {name!r}")
        cls.strategy = name
        ROUTERS[name] = cls.from_config
        return cls

    return register


def make_router(routing: RoutingConfig, profiles: Profiles) -> Router:
    """The router a deployment's ``routing.strategy`` names."""
    try:
        factory = ROUTERS[routing.strategy]
    except KeyError:
        raise ConfigError(f"unknown routing.strategy {routing.strategy!r}; known: {', '.join(ROUTERS)}") from None
    return factory(routing, profiles)


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
