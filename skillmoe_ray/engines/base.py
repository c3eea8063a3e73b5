"""The one small interface every engine implements.

The scheduler only needs four things from a model: bring it in, run a batch,
put it away, and say how much memory it holds (and, for a streamed answer, one
request's text as it is generated, which any engine can give in one piece). Keeping the interface this
small is what lets a replayed recording, a cost-model simulation and a real
vLLM instance be swapped under the same planner and worker code.
"""

from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Iterator, Literal, Sequence

Role = Literal["expert", "keyword", "aggregator"]

_TOKEN = re.compile(r"\w+|[^\w\s]")


def estimate_tokens(text: str) -> int:
    """Tokens of a text with no tokenizer at hand: words and punctuation marks (close to BPE counts for English)."""
    return len(_TOKEN.findall(text))


if TYPE_CHECKING:
    from ..memory import Footprint


@dataclass(frozen=True)
class SamplingSettings:
    """Sampling for one batch. Experts sample at 0.7 as in the paper."""

    temperature: float = 0.7
    max_tokens: int = 4096
    top_p: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """A chat prompt plus what a replaying engine needs to find its recording.

    ``key`` is the question id ("task/split/index") when the prompt is about a
    data-set question; ``role`` says which prompt template produced it.
    """

    messages: tuple[dict[str, str], ...]
    key: str | None = None
    role: Role = "expert"
    question: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @staticmethod
    def user(prompt: str, **kw: Any) -> "GenerationRequest":
        return GenerationRequest(messages=({"role": "user", "content": prompt},), **kw)

    @property
    def prompt(self) -> str:
        return self.messages[-1]["content"]


def as_sibling(request: GenerationRequest, question: object, experts: Sequence[str], slot: int) -> GenerationRequest:
    """The request of slot ``slot`` of a question that recruited ``experts``, marked with its rank among the
    question's prompts to the same expert (``meta["sibling"] = (question, rank, of)``).

    Several prompts of one question to one expert are draws of one distribution; whichever call runs
    them, the question waits for the longest of the draws. An engine that models lengths by expectation
    (the simulated one) reads the ranks so that a question's prompts split over several calls still take
    the expected longest of all of them, not each the expected length of one. Real engines ignore it."""
    same = [i for i, e in enumerate(experts) if e == experts[slot]]
    if len(same) < 2:
        return request
    return replace(request, meta={**request.meta, "sibling": (question, same.index(slot) + 1, len(same))})


class Engine(ABC):
    """A model behind load / generate / release.

    ``generate`` may be called only while loaded; engines that can answer
    without loading (replay) still track the state so schedulers see the
    same life cycle everywhere.
    """

    name: str
    #: keeping it loaded costs nothing worth swapping for (recordings): outside any device budget
    cheap_residency: bool = False
    #: ``park`` keeps the weights in host memory (otherwise it frees them, as ``release`` does)
    can_park: bool = False
    #: ``prefetch`` can read the weights into host memory in the background
    can_prefetch: bool = False
    #: weights in GB, when known without loading (residency budgets and planning use it)
    size_gb: float | None = None
    #: memory of one of the worker's GPUs, in bytes (set by the worker); engines that reserve device
    #: memory size their reservation from it (vLLM's gpu_memory_utilization)
    device_bytes: int | None = None
    #: ``generate`` may be called from several threads at once, and calls made while others run join
    #: them (continuous batching: a prompt that arrives mid-generation shares the decode steps from then
    #: on). Without it, the worker merges the calls that arrive while one runs into its next batch
    #: (engines/merging.py).
    continuous: bool = False

    def footprint(self) -> "Footprint | None":
        """The model's memory on a device awake and asleep and in host memory parked, from its config,
        without loading it; None where it holds no device memory or its size is unknown."""
        return None

    def __init__(self, name: str) -> None:
        self.name = name
        self._loaded = False
        self._calls = threading.local()
        #: (prompt, completion) tokens of each request of the last ``generate``, where the engine counts them
        self._last_usage = []

    @property
    def _last_usage(self) -> list[tuple[int, int]]:
        """Per thread: a continuous engine runs several callers' ``generate`` at once, each its own count."""
        return getattr(self._calls, "usage", [])

    @_last_usage.setter
    def _last_usage(self, value: list[tuple[int, int]]) -> None:
        self._calls.usage = value

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> None:
        self._loaded = True

    def release(self) -> None:
        """Free the model completely (device and host memory)."""
        self._loaded = False

    def park(self) -> None:
        """Move the model out of device memory but keep it quick to bring back.

        Engines that cannot park (vLLM on CPU has no sleep mode) release.
        """
        self.release()

    @property
    def parked(self) -> bool:
        """True while the model waits in host memory (a load is then a wake, not a cold start)."""
        return False

    def prefetch(self) -> bool:
        """Start bringing the weights from disk into host memory in the background.

        Called by a worker for its next model while the current one generates.
        Returns False where the engine cannot (vLLM builds its engine at load).
        """
        return False

    def host_bytes(self) -> int:
        """Host memory held for a parked (or prefetched) model."""
        return 0

    @abstractmethod
    def generate(self, requests: list[GenerationRequest], sampling: SamplingSettings) -> list[str]:
        """One response text per request, in order."""

    def stream(self, request: GenerationRequest, sampling: SamplingSettings) -> Iterator[str]:
        """One request's response as text deltas, in order, as they are generated; joined, the text
        ``generate([request], sampling)`` gives. Afterwards :meth:`usage` counts the call.

        This default, for engines that cannot stream (recordings, anything remote), yields the whole
        response once. Closing the iterator early stops the generation where the engine can.
        """
        self._last_usage = []
        (text,) = self.generate([request], sampling)
        if text:
            yield text

    def resident_bytes(self) -> int:
        return 0

    def usage(self, requests: list[GenerationRequest], texts: list[str]) -> list[tuple[int, int]]:
        """(prompt, completion) tokens of the last ``generate`` call, one pair per request.

        The engine's own counts where it has them (vLLM, transformers: its tokenizer; simulated: its
        simulated lengths); otherwise (recordings) an estimate, words and punctuation marks.
        """
        if len(self._last_usage) == len(texts):
            return list(self._last_usage)
        return [(estimate_tokens(" ".join(m.get("content", "") for m in r.messages)), estimate_tokens(t))
                for r, t in zip(requests, texts)]

    def ensure_loaded(self) -> None:
        if not self._loaded:
            self.load()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, loaded={self._loaded})"
