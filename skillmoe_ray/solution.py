"""What the pipeline hands back: each expert's answer and the merged solution of a question.

Plain data in a module of its own so routers, aggregators, the pipeline and
the server can all name these types without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .tasks.catalogue import Question


@dataclass(frozen=True)
class ExpertAnswer:
    expert: str
    response: str
    pred: str | None


@dataclass
class Solution:
    question: Question
    skills: list[str]
    experts: list[str]
    answers: list[ExpertAnswer]
    answer: str | None
    response: str
    aggregator: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def calls(self) -> int:
        """Expert calls spent on the question (a cascade may stop before asking all of them)."""
        return len(self.answers)
