"""Plans and their execution: expert-grouped sub-batches, and the executors that run them.

An :class:`Executor` runs an :data:`ExpertPlan` (each expert once, with all its
prompts of the batch) wherever the models live: in this process
(:class:`LocalExecutor`, for ``skillmoe evaluate`` and profiling) or on the
scheduler's worker actors (:class:`~skillmoe_ray.serving.scheduler.SchedulerExecutor`).
The pipeline does not know which.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Mapping, Protocol, Sequence

from tqdm import tqdm

from .engines.base import Engine, GenerationRequest, SamplingSettings, as_sibling
from .errors import ConfigError, EngineError
from .scheduling.residency import Limits, Tiers, step, traits_of


#: (question position, slot) -> request, grouped by expert
ExpertPlan = dict[str, list[tuple[int, int, GenerationRequest]]]


def group_by_expert(selections: Sequence[Sequence[str]], requests: Sequence[GenerationRequest]) -> ExpertPlan:
    """Expert-grouped sub-batches: every expert appears once, with all its prompts of the batch.

    Experts come in order of first use so a plan is deterministic.
    """
    plan: ExpertPlan = defaultdict(list)
    for qi, experts in enumerate(selections):
        for slot, expert in enumerate(experts):
            plan[expert].append((qi, slot, as_sibling(requests[qi], qi, experts, slot)))
    return dict(plan)


class Executor(Protocol):
    """Runs expert-grouped plans. Items of an expert that failed to load are left out of
    the result, and the expert is listed in ``unhealthy`` with the reason."""

    unhealthy: dict[str, str]
    #: every expert of the pool, for substitutes when one is out of service
    expert_names: list[str]

    def run(self, plan: ExpertPlan, sampling: SamplingSettings) -> dict[tuple[int, int], str]: ...


class LocalExecutor:
    """Runs a plan in this process, one expert at a time, each loaded once per batch.

    Residency follows the same policy as the worker actors
    (:mod:`.scheduling.residency`), with room for one swappable model and no
    host tier: a model stays loaded after its sub-batch and is freed only when
    another needs the device, so consecutive calls on one model (the keyword
    LLM's five samples, a batch's expert that also aggregates) pay one load.
    Recordings (cheap residency) stay loaded.
    """

    def __init__(self, engines: Mapping[str, Engine], progress: bool = False):
        self.engines = dict(engines)
        self.progress = progress
        #: expert -> why it is out of service (a load failed); routing avoids these
        self.unhealthy: dict[str, str] = {}
        self.tiers = Tiers()
        self.limits = Limits(capacity=1, host_budget_gb=0.0, traits={n: traits_of(e) for n, e in self.engines.items()})

    @property
    def expert_names(self) -> list[str]:
        return list(self.engines)

    def engine(self, name: str) -> Engine:
        try:
            return self.engines[name]
        except KeyError:
            raise ConfigError(f"no expert named {name!r} in the pool (have: {', '.join(self.engines)})") from None

    def run(self, plan: ExpertPlan, sampling: SamplingSettings) -> dict[tuple[int, int], str]:
        out: dict[tuple[int, int], str] = {}
        names = list(plan)
        bar = tqdm(list(plan.items()), desc="experts", unit="model", disable=not self.progress or len(plan) < 2,
                   leave=False)
        for i, (name, work) in enumerate(bar):
            engine = self.engine(name)
            st = step(self.tiers, name, names[i + 1:], self.limits)
            for kind, victim in st.evictions:
                (self.engines[victim].park if kind == "park" else self.engines[victim].release)()
            try:
                engine.ensure_loaded()
            except Exception as exc:  # its items stay unanswered; the pipeline re-routes them
                self.tiers.device = [n for n in self.tiers.device if n != name]
                self.tiers.cheap = [n for n in self.tiers.cheap if n != name]
                self.unhealthy[name] = f"load failed: {exc}"
                continue
            texts = engine.generate([req for _, _, req in work], sampling)
            for (qi, slot, _), text in zip(work, texts):
                out[(qi, slot)] = text
        return out


def substitute_unhealthy(selections: Sequence[Sequence[str]], order: Sequence[str],
                         unhealthy: Mapping[str, str]) -> list[list[str]]:
    """Each unhealthy expert replaced by the first healthy one in ``order`` its question does not have yet."""
    if not unhealthy or not any(e in unhealthy for sel in selections for e in sel):
        return [list(s) for s in selections]
    healthy = [e for e in order if e not in unhealthy]
    if not healthy:
        raise EngineError(f"every expert of the pool is out of service: {describe_unhealthy(unhealthy)}")
    out = []
    for sel in selections:
        new: list[str] = []
        for e in sel:
            if e in unhealthy:
                e = best_substitute(healthy, [*new, *sel])
            new.append(e)
        out.append(new)
    return out


def best_substitute(healthy: Sequence[str], taken: Sequence[str]) -> str:
    """The substitution rule: the first healthy expert (best ranked first) the question does not have yet;
    if it has them all, the best one again."""
    return next((h for h in healthy if h not in taken), healthy[0])


def describe_unhealthy(unhealthy: Mapping[str, str]) -> str:
    return "; ".join(f"{e}: {why}" for e, why in unhealthy.items())


class ExecutorEngine(Engine):
    """An engine that lives wherever the executor keeps its models.

    Lets model work outside expert answering (the keyword LLM) run on the
    worker pool like any other model work, in-process or on Ray actors.
    """

    def __init__(self, executor: Executor, name: str):
        super().__init__(name)
        self.executor = executor
        self._loaded = True  # the executor loads the model where it runs

    def generate(self, requests: list[GenerationRequest], sampling: SamplingSettings) -> list[str]:
        texts = self.executor.run({self.name: [(i, 0, r) for i, r in enumerate(requests)]}, sampling)
        return [texts[(i, 0)] for i in range(len(requests))]
