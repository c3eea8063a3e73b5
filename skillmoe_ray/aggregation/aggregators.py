"""Aggregators: how a question's expert answers become one answer, and the registry that names them.

A deployment's ``aggregation.mode`` is a key of :data:`AGGREGATORS`, so the
server (:func:`make_aggregator`) and ``skillmoe evaluate`` build the same
object from the same name. The vote arithmetic itself is in :mod:`.votes`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Generator, Sequence

from .votes import agreed, weighted_vote
from ..engines.base import Engine, GenerationRequest, SamplingSettings
from ..errors import ConfigError
from ..profiles import Profiles
from ..prompts import aggregation_prompt
from ..registry import Registry
from ..solution import ExpertAnswer
from ..tasks.catalogue import Question, Task

if TYPE_CHECKING:
    from ..config import AggregationConfig
    from ..execution import Executor


class Aggregator(ABC):
    """Merges each question's expert answers; may call a model through the executor."""

    name: str
    #: the ``aggregation.mode`` this class is registered under (set by :func:`register_aggregator`)
    mode: str | None = None

    @abstractmethod
    def aggregate(
        self, task: Task, questions: Sequence[Question], answers: Sequence[Sequence[ExpertAnswer]], executor: Executor,
        seed: int,
    ) -> list[tuple[str | None, str, str]]:
        """(answer, response, who aggregated) per question."""

    @classmethod
    def from_config(cls, aggregation: AggregationConfig, profiles: Profiles) -> Aggregator:
        """The aggregator a deployment's aggregation section describes (registered aggregators override this)."""
        raise ConfigError(f"{cls.__name__} cannot be built from a deployment's aggregation section")


#: ``aggregation.mode`` -> how to build that aggregator from the config and the profiles
AGGREGATORS = Registry("aggregator", "aggregation.mode", "mode")
register_aggregator = AGGREGATORS.register


def make_aggregator(aggregation: AggregationConfig, profiles: Profiles) -> Aggregator:
    """The aggregator a deployment's ``aggregation.mode`` names."""
    return AGGREGATORS.make(aggregation.mode, aggregation, profiles)


@register_aggregator("vote")
class VoteAggregator(Aggregator):
    """Majority vote; ties go to the answer of the better-ranked expert (validation accuracy)."""

    name = "vote"

    def __init__(self, ranking: Sequence[str]):
        self.rank = {e: i for i, e in enumerate(ranking)}

    @classmethod
    def from_config(cls, aggregation: AggregationConfig, profiles: Profiles) -> Aggregator:
        return cls(profiles.ranking())

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
    """Majority vote; ties go to the answer of the expert asked first (the router's per-question order).

    The budget router's (:class:`..routing.routers.BudgetRouter`) partner: its stopping
    rule assumes this tie-break. Not a deployment ``aggregation.mode``, so it
    is not registered; ``skillmoe evaluate`` pairs it with the budget cascades.
    """

    name = "ordered_vote"

    def __init__(self) -> None:
        super().__init__([])

    def _rank(self, answers: Sequence[ExpertAnswer]) -> list[int]:
        return list(range(len(answers)))


@register_aggregator("weighted_vote")
class WeightedVoteAggregator(VoteAggregator):
    """Votes weighted per expert; from profiles: validation log-odds, log(acc / (1 - acc)) shifted positive."""

    name = "weighted_vote"

    def __init__(self, ranking: Sequence[str], weights: dict[str, float]):
        super().__init__(ranking)
        self.weights = dict(weights)

    @classmethod
    def from_profiles(cls, profiles: Profiles) -> WeightedVoteAggregator:
        return cls(profiles.ranking(), log_odds_weights(profiles.accuracy))

    @classmethod
    def from_config(cls, aggregation: AggregationConfig, profiles: Profiles) -> Aggregator:
        return cls.from_profiles(profiles)

    def _weight(self, expert: str) -> float:
        return self.weights.get(expert, 0.0)


#: the aggregator a question's record names when its experts agreed and the aggregator model was not asked
AGREEMENT = "agreement"


def is_agreement(who: str) -> bool:
    return who.startswith(AGREEMENT)


@register_aggregator("llm")
class LLMAggregator(Aggregator):
    """An aggregator model reads the experts' chains of thought and answers (the paper's last step)."""

    def __init__(self, model: str, max_tokens: int = 4096, skip_when_agreed: bool = False):
        self.model = model
        self.name = f"llm:{model}"
        self.max_tokens = max_tokens
        #: a question whose experts all agree keeps their answer without asking the model
        self.skip_when_agreed = skip_when_agreed

    @classmethod
    def from_config(cls, aggregation: AggregationConfig, profiles: Profiles) -> Aggregator:
        """The configured model, else the one the task's aggregator benchmark chose."""
        return cls(aggregation.aggregator or profiles.aggregator.get("name"), aggregation.max_tokens,
                   aggregation.skip_when_agreed)

    def agreement(self, task: Task, answers: Sequence[ExpertAnswer]) -> tuple[str | None, str, str] | None:
        """The merged answer without the model, when the setting is on and every expert agrees."""
        if not self.skip_when_agreed:
            return None
        pred = agreed([a.pred for a in answers], task)
        if pred is None:
            return None
        return pred, answers[0].response, f"{AGREEMENT} ({len(answers)} of {len(answers)})"

    def request(self, task: Task, question: Question, answers: Sequence[ExpertAnswer]) -> GenerationRequest:
        """The aggregator model's prompt for one question: the experts' chains of thought, then the question."""
        return GenerationRequest.user(aggregation_prompt(task, question.text, [a.response for a in answers]),
                                      key=question.qid, role="aggregator", question=question.text)

    def sampling(self, seed: int) -> SamplingSettings:
        return SamplingSettings(temperature=0.7, max_tokens=self.max_tokens, seed=seed)

    def merged(self, task: Task, text: str) -> tuple[str | None, str, str]:
        """(answer, response, who) from the aggregator model's whole text."""
        return task.extract(text), text, self.model

    def aggregate(self, task: Task, questions: Sequence[Question], answers: Sequence[Sequence[ExpertAnswer]],
                  executor: Executor, seed: int) -> list[tuple[str | None, str, str]]:
        out: list[tuple[str | None, str, str] | None] = [self.agreement(task, ans) for ans in answers]
        ask = [i for i, o in enumerate(out) if o is None]
        if ask:
            plan = {self.model: [(i, 0, self.request(task, questions[i], answers[i])) for i in ask]}
            texts = executor.run(plan, self.sampling(seed))
            for i in ask:
                out[i] = self.merged(task, texts[(i, 0)])
        return out  # type: ignore[return-value]

    def stream(self, task: Task, question: Question, answers: Sequence[ExpertAnswer], engine: Engine,
               seed: int) -> Generator[str, None, tuple[str | None, str, str]]:
        """One question aggregated by ``engine`` (the aggregator model, loaded here): yields the text as
        it is generated and returns what :meth:`aggregate` gives for that text, the answer read from
        the whole of it."""
        settled = self.agreement(task, answers)
        if settled is not None:
            return settled
        parts = []
        for piece in engine.stream(self.request(task, question, answers), self.sampling(seed)):
            parts.append(piece)
            yield piece
        return self.merged(task, "".join(parts))


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
