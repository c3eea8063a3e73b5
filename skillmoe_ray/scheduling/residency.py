"""The one residency policy: what a worker keeps, parks, evicts and prefetches.

A worker's models sit in three tiers: on the device (as many swappable models
as fit its ``device_gb``, counted in bytes: each model's footprint awake, plus
what every parked model of the worker still holds there -- a vLLM engine asleep
keeps its process's CUDA context and graph pool on the GPU; ``capacity`` caps
the count where no device size is known), parked in host memory (up to
``host_budget_gb`` of pinned weights; a parked model comes back with a wake
instead of a cold start), or on disk. Whenever a tier is full the model needed
furthest in the future of the worker's known plan is evicted (Belady's rule:
the plan is known); a model the plan needs again is parked if the host tier has
room and its leftover on the device still lets the incoming model fit,
otherwise freed.

Pure functions over plain data. The worker actors apply these decisions to real
engines, the planner runs :func:`simulate` to predict what each worker will load
and wake, and the local executor applies them offline, so the three cannot
disagree about what a plan costs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

Action = tuple[Literal["park", "release"], str]
Bring = Literal["resident", "wake", "load"]


@dataclass(frozen=True)
class ModelTraits:
    """What the policy needs to know about one model (from its engine, without loading it)."""

    #: host memory it takes parked (its weights, pinned)
    size_gb: float = 0.0
    #: device memory it takes loaded and awake (weights, KV cache, activations, CUDA context); 0: unknown
    device_gb: float = 0.0
    #: device memory it still takes parked (a sleeping vLLM engine's CUDA context and graph pool)
    asleep_gb: float = 0.0
    #: parking keeps it in host memory (engines without a sleep mode free it instead)
    can_park: bool = True
    #: its weights can be read into host memory in the background while another model generates
    can_prefetch: bool = False
    #: keeping it loaded costs nothing worth swapping for (recordings): outside the device budget
    cheap: bool = False


def traits_of(engine: Any, size_gb: float | None = None) -> ModelTraits:
    """An engine's declared traits (its footprint, ``can_park``, ``can_prefetch``, ``cheap_residency``) as
    plain data; ``size_gb`` stands in when the engine does not know its size."""
    from ..memory import GB

    host = float(engine.size_gb or size_gb or 0.0)
    fp = engine.footprint() if hasattr(engine, "footprint") else None
    if fp is None:
        return ModelTraits(host, can_park=engine.can_park, can_prefetch=engine.can_prefetch,
                           cheap=engine.cheap_residency)
    return ModelTraits(fp.pinned / GB or host, fp.device / GB, fp.asleep / GB if engine.can_park else 0.0,
                       engine.can_park, engine.can_prefetch, engine.cheap_residency)


@dataclass(frozen=True)
class Limits:
    """One worker's budgets and its models' traits."""

    #: swappable models on the device at once, at most (the budget where no device size is known)
    capacity: int = 1
    #: None: parked models may use any amount of host memory; 0: no host tier
    host_budget_gb: float | None = None
    traits: Mapping[str, ModelTraits] = field(default_factory=dict)
    prefetch: bool = False
    #: free every model right after its job (the reference implementation; for comparisons)
    release_after: bool = False
    #: device memory of the worker for models (GB); None: count models against ``capacity`` only
    device_gb: float | None = None

    def trait(self, name: str) -> ModelTraits:
        return self.traits.get(name, ModelTraits())

    def device_used(self, device: Sequence[str], host: Sequence[str]) -> float:
        """GB on the device: the awake models' footprints and the parked models' leftovers."""
        return sum(self.trait(n).device_gb for n in device) + sum(self.trait(n).asleep_gb for n in host)

    def fits(self, device: Sequence[str], host: Sequence[str], incoming: str) -> bool:
        """Whether ``incoming`` can come onto the device beside ``device`` (parked: ``host``)."""
        if len(device) >= max(1, self.capacity):
            return False
        if self.device_gb is None:
            return True
        others = [n for n in host if n != incoming]
        return self.device_used(device, others) + self.trait(incoming).device_gb <= self.device_gb + 1e-9


@dataclass
class Tiers:
    """What one worker holds: swappable models on the device in load order, models in host memory,
    and cheap (always resident) models once loaded."""

    device: list[str] = field(default_factory=list)
    host: list[str] = field(default_factory=list)
    cheap: list[str] = field(default_factory=list)

    def copy(self) -> "Tiers":
        return Tiers(list(self.device), list(self.host), list(self.cheap))

    def holds(self, name: str) -> bool:
        return name in self.device or name in self.cheap


def _next_use(name: str, upcoming: Sequence[str]) -> int:
    return upcoming.index(name) if name in upcoming else len(upcoming) + 1


def furthest(candidates: Sequence[str], upcoming: Sequence[str]) -> str:
    """The candidate needed furthest ahead (never needed counts as furthest); ties go to the earliest listed."""
    return max(candidates, key=lambda n: _next_use(n, upcoming))


def host_room(host: Sequence[str], need_gb: float, upcoming: Sequence[str], limits: Limits,
              keep: Sequence[str] = ()) -> list[str] | None:
    """Parked models to free (furthest next use first) so that ``need_gb`` more fits the host budget.

    None when it cannot fit without freeing the next job's model or one in ``keep``.
    """
    if limits.host_budget_gb is None:
        return []
    used = sum(limits.trait(n).size_gb for n in host)
    freed: list[str] = []
    while used + need_gb > limits.host_budget_gb + 1e-9:
        candidates = [n for n in host if n not in keep and n not in freed]
        if not candidates:
            return None
        victim = furthest(candidates, upcoming)
        if victim in upcoming[:1]:  # the next job's model: keeping it beats making room
            return None
        freed.append(victim)
        used -= limits.trait(victim).size_gb
    return freed


def make_room(tiers: Tiers, incoming: str, upcoming: Sequence[str], limits: Limits) -> list[Action]:
    """Evictions, in order, before ``incoming`` comes to the device.

    Awake models go first (furthest next use first), parked if the plan needs them again, the host
    tier has room and their leftover on the device would still let ``incoming`` fit; then, if the
    parked models' leftovers are what is in the way, parked models are freed. A model too large for
    the device even alone evicts everything and is left to fail at its load, which says why.
    """
    if limits.trait(incoming).cheap or incoming in tiers.device:
        return []
    actions: list[Action] = []
    device = list(tiers.device)
    # a model that wakes gives up its host copy and its leftover on the device -- but only once it is awake,
    # after these evictions: until then its host copy counts against the host budget
    host = list(tiers.host)
    need = limits.trait(incoming).device_gb
    while not limits.fits(device, host, incoming):
        if not device:
            parked = [n for n in host if n != incoming and limits.trait(n).asleep_gb > 0]
            if not parked:
                break
            victim = furthest(parked, upcoming)
            host.remove(victim)
            actions.append(("release", victim))
            continue
        victim = furthest(device, upcoming)
        device.remove(victim)
        t = limits.trait(victim)
        leftover_fits = limits.device_gb is None or \
            sum(limits.trait(n).asleep_gb for n in host if n != incoming) + t.asleep_gb + need <= limits.device_gb + 1e-9
        if victim in upcoming and t.can_park and leftover_fits:
            frees = host_room(host, t.size_gb, upcoming, limits, keep=(victim, incoming))
            if frees is not None:
                actions += [("release", f) for f in frees]
                host = [n for n in host if n not in frees] + [victim]
                actions.append(("park", victim))
                continue
        actions.append(("release", victim))
    return actions


def prefetch_choice(tiers: Tiers, current: str, upcoming: Sequence[str], limits: Limits) -> tuple[str | None, list[str]]:
    """The next job's model to read into host memory while ``current`` generates, and parked models to free first."""
    if not limits.prefetch:
        return None, []
    nxt = next((n for n in upcoming if n != current), None)
    if nxt is None:
        return None, []
    t = limits.trait(nxt)
    if t.cheap or not t.can_prefetch or tiers.holds(nxt) or nxt in tiers.host:
        return None, []
    frees = host_room(tiers.host, t.size_gb, upcoming, limits)
    if frees is None:
        return None, []
    return nxt, frees


def apply(tiers: Tiers, actions: Sequence[Action]) -> None:
    """The tiers after evictions (the worker does the same to its engines)."""
    for kind, name in actions:
        if name in tiers.device:
            tiers.device.remove(name)
        if kind == "park":
            if name not in tiers.host:
                tiers.host.append(name)
        elif name in tiers.host:
            tiers.host.remove(name)


def bring_in(tiers: Tiers, name: str, limits: Limits) -> Bring:
    """Record ``name`` as on the device; says whether that was free, a wake or a cold load."""
    if limits.trait(name).cheap:
        if name in tiers.cheap:
            return "resident"
        tiers.cheap.append(name)
        return "load"
    if name in tiers.device:
        return "resident"
    woke = name in tiers.host
    if woke:
        tiers.host.remove(name)
    tiers.device.append(name)
    return "wake" if woke else "load"


@dataclass
class Outcome:
    """What running a job list does on one worker."""

    loads: int = 0
    wakes: int = 0
    #: per job: whether its model was resident, woken or loaded cold
    brings: list[Bring] = field(default_factory=list)
    prefetches: int = 0
    tiers: Tiers = field(default_factory=Tiers)


@dataclass
class Step:
    """One job's residency decisions, in the order a worker carries them out."""

    evictions: list[Action]
    bring: Bring
    #: parked models freed to make host room for the prefetch, then the model prefetched
    prefetch_frees: list[str] = field(default_factory=list)
    prefetch: str | None = None


def step(tiers: Tiers, name: str, upcoming: Sequence[str], limits: Limits) -> Step:
    """One job on one worker: evictions, how the model comes in, and what is prefetched meanwhile.

    Mutates ``tiers``. The worker calls exactly this and applies the result to its engines.
    """
    evictions = make_room(tiers, name, upcoming, limits) if not tiers.holds(name) else []
    apply(tiers, evictions)
    bring = bring_in(tiers, name, limits)
    fetch, frees = prefetch_choice(tiers, name, upcoming, limits)
    if fetch is not None:
        apply(tiers, [("release", f) for f in frees])
        tiers.host.append(fetch)
    return Step(evictions, bring, frees if fetch is not None else [], fetch)


def after_job(tiers: Tiers, name: str, limits: Limits) -> bool:
    """With ``release_after``, the model is freed once its job is done; True if it was."""
    if limits.release_after and name in tiers.device:
        tiers.device.remove(name)
        return True
    return False


def simulate(tiers: Tiers, jobs: Sequence[str], limits: Limits) -> Outcome:
    """What a worker holding ``tiers`` does running ``jobs`` in order (the planner's prediction)."""
    t = tiers.copy()
    out = Outcome(tiers=t)
    for i, name in enumerate(jobs):
        st = step(t, name, list(jobs[i + 1:]), limits)
        out.brings.append(st.bring)
        out.loads += st.bring == "load"
        out.wakes += st.bring == "wake"
        out.prefetches += st.prefetch is not None
        after_job(t, name, limits)
    return out
