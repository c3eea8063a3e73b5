"""The messages between the scheduler's parts and the worker actors, one type per hop.

Workers report what they did and what they hold in these (Ray pickles them);
the scheduler reads fields, not dictionary keys, so a renamed field fails where
it is read rather than as a missing answer somewhere later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Literal, Mapping

Bring = Literal["resident", "wake", "load"]


@dataclass
class WorkerState:
    """What a worker holds: the scheduler plans on it, also after the scheduler restarts."""

    wid: int
    node_id: str = ""
    #: models on the device (cheap, always-resident ones first), and parked in host memory
    resident: list[str] = field(default_factory=list)
    parked: list[str] = field(default_factory=list)
    loads: int = 0
    wakes: int = 0
    jobs_done: int = 0
    #: expert -> why it could not be loaded on this worker
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class JobTiming:
    """How a job went on its worker (the scheduler learns load, wake and decode-step times from it)."""

    expert: str
    n: int
    bring: Bring = "resident"
    load_s: float = 0.0
    generate_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"expert": self.expert, "n": self.n, "bring": self.bring, "load_s": self.load_s,
                "generate_s": self.generate_s, "woke": self.bring == "wake"}


@dataclass
class BringReport:
    """A model brought in (or not: ``failed`` says why, and the expert is out of service)."""

    expert: str
    bring: Bring
    seconds: float
    state: WorkerState
    failed: str | None = None


@dataclass
class JobReport:
    """A job's texts, per-item errors and token counts, and the worker's state after it.

    ``failed`` names an expert that could not be loaded (its items are unanswered); ``not_resident`` says
    the model was not there to generate (the worker restarted or evicted it): its items go back to the queue.
    """

    expert: str
    texts: dict[Hashable, str] = field(default_factory=dict)
    errors: dict[Hashable, str] = field(default_factory=dict)
    usage: dict[Hashable, tuple[int, int]] = field(default_factory=dict)
    state: WorkerState | None = None
    timing: JobTiming | None = None
    failed: dict[str, str] = field(default_factory=dict)
    not_resident: bool = False

    def completions(self) -> list[int]:
        return [c for _, c in self.usage.values()]


@dataclass
class ExpertPick:
    """One recruited expert's answer, as a response lists it."""

    expert: str
    answer: str | None


@dataclass
class TokenCount:
    """Prompt and completion tokens of every model call made for one question (the keyword LLM's too)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def of(cls, usage: "TokenCount | Mapping[str, int] | None") -> "TokenCount":
        if isinstance(usage, TokenCount):
            return usage
        usage = usage or {}
        return cls(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))

    def plus(self, other: "TokenCount | Mapping[str, int] | None") -> "TokenCount":
        o = TokenCount.of(other)
        return TokenCount(self.prompt_tokens + o.prompt_tokens, self.completion_tokens + o.completion_tokens)

    def as_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens}


@dataclass
class AnswerRecord:
    """One answered question: what the scheduler (or, for a cascade, the ingress's pipeline) hands back,
    and the one thing every HTTP response is made from -- ``/v1/solve``'s body
    (:class:`~skillmoe_ray.serving.schemas.SolveResponse` reads it field by field), a chat completion's
    message and usage, and its ``skillmoe`` field."""

    answer: str | None
    response: str
    experts: list[str]
    expert_answers: list[ExpertPick]
    #: the aggregator model, ``vote`` (no model asked), or the one expert asked by name
    aggregator: str
    task: str
    usage: TokenCount = field(default_factory=TokenCount)
    #: seconds per stage (queue, experts, aggregate; the ingress adds skills, route, total, request)
    timings: dict[str, float] = field(default_factory=dict)
    #: the skills the question was found to need (set by the ingress)
    skills: list[str] = field(default_factory=list)
