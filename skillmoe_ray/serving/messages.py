"""The messages between the scheduler's parts and the worker actors, one type per hop.

Workers report what they did and what they hold in these (Ray pickles them);
the scheduler reads fields, not dictionary keys, so a renamed field fails where
it is read rather than as a missing answer somewhere later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Literal

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
