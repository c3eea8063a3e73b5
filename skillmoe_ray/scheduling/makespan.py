"""Predicted batch times of the scheduling strategies, and the cost model's fit to the paper.

Pure functions over the simulated engine's cost model (:class:`CostConstants`).
``benchmarks/latency.py`` compares them with what the real serving path
measures on simulated experts; the difference is the system's own overhead.

Two families of strategies:

* The **reference** system (the paper's code): one vLLM instance spanning all
  g GPUs with tensor parallelism; each expert is cold-started, run and thrown
  away, followed by a 10 s sleep (``release_s``). Naive runs this per question;
  expert-grouped runs it once per expert per batch; Mixture-of-Agents runs 3
  fixed proposers for 2 layers and then the aggregator.
* **This system's planner**: one worker per GPU, each expert of the batch given
  to one worker (longest job first, earliest finish; a job that sets the
  makespan is split over more workers while that pays), models swapped without
  the reference's sleep; the aggregator's batch follows, planned the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from ..config import ExpertConfig
from ..engines.base import GenerationRequest
from ..engines.simulated import CostConstants, quoted_tokens, spec_from_args
from .planner import WorkerState, plan_grouped
from .residency import Limits


@dataclass(frozen=True)
class ModelCost:
    size_gb: float
    constants: CostConstants


@dataclass(frozen=True)
class SimulatedCosts:
    """The planner's :class:`planner.Costs` for a pool of simulated experts."""

    pool: Mapping[str, ModelCost]
    max_tokens: int = 4096
    tp: int = 1
    #: mean prompt length of the batch (None: each model's ``prompt_tokens``, a question alone, plus ``quoted``)
    prompt_tokens: float | None = None
    #: per model, the mean length of the simulated answers its prompts in this batch quote
    quoted: Mapping[str, float] = field(default_factory=dict)

    def load(self, expert: str) -> float:
        m = self.pool[expert]
        return m.constants.load_s(m.size_gb)

    def wake(self, expert: str) -> float:
        m = self.pool[expert]
        return m.constants.wake_s(m.size_gb)

    def release(self, expert: str) -> float:
        return self.pool[expert].constants.release_s

    def generate(self, expert: str, n: int) -> float:
        c = self.pool[expert].constants
        prompt = self.prompt_tokens if self.prompt_tokens is not None else c.prompt_tokens + self.quoted.get(expert, 0.0)
        return c.generate_s(n, self.max_tokens, self.tp, prompt)

    def for_batch(self, max_tokens: int, requests: Mapping[str, Sequence[GenerationRequest]]) -> "SimulatedCosts":
        """What the simulated engines will spend on this batch: its max_tokens, and its prompts' quoted answers."""
        quoted = {e: sum(quoted_tokens(r) for r in reqs) / len(reqs) for e, reqs in requests.items() if reqs}
        return replace(self, max_tokens=max_tokens, prompt_tokens=None, quoted=quoted)

    def quoting(self, reader: str, groups: Sequence[Sequence[str]]) -> float:
        """Mean prompt length when ``reader`` reads, for each prompt, the answers of one group of models
        (answers written under this ``max_tokens``)."""
        base = self.pool[reader].constants.prompt_tokens
        if not groups:
            return float(base)
        quoted = sum(self.pool[e].constants.quoted_length(self.max_tokens) for g in groups for e in g)
        return base + quoted / len(groups)

    def with_constants(self, **changes: float) -> "SimulatedCosts":
        """The same pool with shared constants changed (per-model lengths and sizes kept)."""
        return replace(self, pool={n: ModelCost(m.size_gb, replace(m.constants, **changes))
                                   for n, m in self.pool.items()})


def pool_costs(experts: Sequence[ExpertConfig], max_tokens: int = 4096) -> SimulatedCosts:
    pool = {}
    for e in experts:
        if e.engine != "simulated":
            raise ValueError(f"expert {e.name!r} is not simulated (engine {e.engine!r}); "
                             "predicted times need the simulated engine's cost model")
        spec = spec_from_args(e.size_gb, e.engine_args)
        pool[e.name] = ModelCost(spec.size_gb, spec.constants)
    return SimulatedCosts(pool, max_tokens)


# ---------------------------------------------------------------- the reference system


def _cold_run(costs: SimulatedCosts, expert: str, n: int, max_tokens: int | None = None,
              prompt_tokens: float | None = None) -> float:
    """Cold start, one batch of n, release (and the reference's sleep)."""
    c = replace(costs, max_tokens=costs.max_tokens if max_tokens is None else max_tokens,
                prompt_tokens=prompt_tokens)
    return c.load(expert) + c.generate(expert, n) + c.release(expert)


def _aggregate(costs: SimulatedCosts, aggregator: str, groups: Sequence[Sequence[str]],
               agg_max_tokens: int | None) -> float:
    """The aggregator's cold run over prompts that each quote one group's answers."""
    return _cold_run(costs, aggregator, len(groups), agg_max_tokens, costs.quoting(aggregator, groups))


def reference_naive_s(selections: Sequence[Sequence[str]], aggregator: str, costs: SimulatedCosts,
                      agg_max_tokens: int | None = None) -> float:
    """Per question: each of its experts, then the aggregator, each cold-started for that question.

    An expert drawn twice for one question is loaded once and answers twice, in one batch.
    """
    return sum(sum(_cold_run(costs, e, n) for e, n in expert_work([sel]).items())
               + _aggregate(costs, aggregator, [sel], agg_max_tokens) for sel in selections)


def expert_work(selections: Sequence[Sequence[str]]) -> dict[str, int]:
    work: dict[str, int] = {}
    for sel in selections:
        for e in sel:
            work[e] = work.get(e, 0) + 1
    return work


def reference_grouped_s(selections: Sequence[Sequence[str]], aggregator: str, costs: SimulatedCosts,
                        agg_max_tokens: int | None = None) -> float:
    """Each expert cold-started once for its whole sub-batch, one after another; then the aggregator."""
    work = expert_work(selections)
    return (sum(_cold_run(costs, e, n) for e, n in work.items())
            + _aggregate(costs, aggregator, selections, agg_max_tokens))


def reference_moa_s(n_questions: int, proposers: Sequence[str], aggregator: str, costs: SimulatedCosts,
                    layers: int = 2, agg_max_tokens: int | None = None) -> float:
    """Mixture-of-Agents: every proposer answers every question in each layer; then the aggregator.

    From the second layer on, each proposer's prompt quotes the previous layer's answers.
    """
    total = 0.0
    for layer in range(layers):
        for p in proposers:
            prompt = costs.quoting(p, [proposers]) if layer else None
            total += _cold_run(costs, p, n_questions, prompt_tokens=prompt)
    return total + _aggregate(costs, aggregator, [proposers] * n_questions, agg_max_tokens)


def single_s(n_questions: int, model: str, costs: SimulatedCosts) -> float:
    return _cold_run(costs, model, n_questions)


# ---------------------------------------------------------------- this system


def planner_s(selections: Sequence[Sequence[str]], aggregator: str | None, costs: SimulatedCosts,
              workers: int, agg_max_tokens: int | None = None, limits: Limits | None = None) -> float:
    """Experts planned over ``workers`` (no sleep after a release), then the aggregator's batch, planned the same way.

    This is what the serving path does: the pipeline runs the experts' plan,
    then hands the aggregation prompts to the same executor and planner.
    ``limits`` are the workers' residency budgets (default: one model on a device).
    """
    return planner_plan(selections, aggregator, costs, workers, agg_max_tokens, limits)[0]


def planner_plan(selections: Sequence[Sequence[str]], aggregator: str | None, costs: SimulatedCosts,
                 workers: int, agg_max_tokens: int | None = None, limits: Limits | None = None,
                 batches: int = 1, aggregated: Sequence[Sequence[str]] | None = None) -> tuple[float, int, int]:
    """:func:`planner_s`'s makespan, with the cold loads and wakes its plans predict; ``batches`` runs the
    same batch that many times back to back, each starting from what the one before left resident;
    ``aggregated``: the selections of the questions that reach the aggregator (default: all of them)."""
    aggregated = selections if aggregated is None else aggregated
    costs = costs.with_constants(release_s=0.0)
    cap = limits.capacity if limits is not None else 1
    states = [WorkerState(i, capacity=cap) for i in range(workers)]
    total, loads, wakes = 0.0, 0, 0

    def left(a: Any) -> list[WorkerState]:
        return [WorkerState(i, tuple(o.tiers.cheap + o.tiers.device), capacity=cap, parked=tuple(o.tiers.host))
                for i, o in sorted(a.predicted.items())]

    for _ in range(batches):
        experts = plan_grouped(expert_work(selections), states, costs, limits=limits)
        total, loads, wakes = total + experts.makespan_s, loads + experts.loads, wakes + experts.wakes
        states = left(experts)
        if aggregator is None or not aggregated:
            continue
        agg = replace(costs, max_tokens=costs.max_tokens if agg_max_tokens is None else agg_max_tokens,
                      prompt_tokens=costs.quoting(aggregator, aggregated))
        # the aggregator's batch starts where the experts left the workers: whoever holds the aggregator keeps it
        last = plan_grouped({aggregator: len(aggregated)}, states, agg, limits=limits)
        total, loads, wakes = total + last.makespan_s, loads + last.loads, wakes + last.wakes
        states = left(last)
    return total, loads, wakes


# ---------------------------------------------------------------- calibration


def fit_two(measure_a, measure_b, target_a: float, target_b: float, costs: SimulatedCosts
            ) -> tuple[float, float]:
    """Solve for (load_fixed_s, step_fixed_s) so that two figures match exactly.

    Both figures are affine in each of the two constants (a load is
    ``load_fixed_s + bytes``; a batch is ``step_fixed_s * longest + ...``), so
    three evaluations per figure give the 2x2 linear system.
    """
    def at(fn, load_fixed: float, step_fixed: float) -> float:
        return fn(costs.with_constants(load_fixed_s=load_fixed, step_fixed_s=step_fixed))

    rows = []
    for fn, target in ((measure_a, target_a), (measure_b, target_b)):
        base = at(fn, 0.0, 0.0)
        d_load = at(fn, 1.0, 0.0) - base
        d_step = at(fn, 0.0, 1.0) - base
        rows.append((d_load, d_step, target - base))
    (a1, b1, c1), (a2, b2, c2) = rows
    det = a1 * b2 - a2 * b1
    if abs(det) < 1e-12:
        raise ValueError("the two figures do not pin down the two constants (singular system)")
    return (c1 * b2 - c2 * b1) / det, (a1 * c2 - a2 * c1) / det
