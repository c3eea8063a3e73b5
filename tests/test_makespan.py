"""The predicted-time model behind benchmarks/latency.py: reference strategies, the planner, the fit."""

import pytest

from skillmoe_ray.engines.simulated import CostConstants
from skillmoe_ray.scheduling.makespan import (ModelCost, SimulatedCosts, expert_work, fit_two, planner_s, reference_grouped_s,
                                   reference_moa_s, reference_naive_s)
from skillmoe_ray.scheduling.planner import WorkerState, plan_grouped

C = CostConstants(load_fixed_s=20, load_gbps=2, release_s=10, step_fixed_s=0.01, step_per_seq_s=0.0,
                  out_tokens=100)
POOL = SimulatedCosts({n: ModelCost(16.0, C) for n in "abcd"}, max_tokens=4096)
SEL = [["a", "b", "c"], ["a", "b", "d"], ["a", "c", "d"], ["a", "a", "b"]]


def test_reference_formulas_count_cold_starts_and_sleeps():
    load = 20 + 16 / 2
    one = 100 * 0.01  # one response of 100 tokens
    # per question: its distinct experts and the aggregator; the last question draws "a" twice: one load
    assert reference_naive_s(SEL, "a", POOL) == pytest.approx((4 + 4 + 4 + 3) * (load + one + 10))
    work = expert_work(SEL)
    assert work == {"a": 5, "b": 3, "c": 2, "d": 2}
    # grouped: each expert once; fixed-length responses, so a batch costs one response's steps
    assert reference_grouped_s(SEL, "a", POOL) == pytest.approx(5 * (load + one + 10))
    assert reference_moa_s(4, ["a", "b", "c"], "a", POOL) == pytest.approx(7 * (load + one + 10))


def test_planner_spreads_work_and_drops_the_sleep():
    one_worker = planner_s(SEL, "a", POOL, 1)
    assert one_worker == pytest.approx(5 * (20 + 8 + 1))  # no 10 s sleeps
    assert planner_s(SEL, "a", POOL, 4) < one_worker / 2


def test_planner_splits_a_job_that_would_leave_workers_idle():
    costs = SimulatedCosts({"big": ModelCost(1.0, CostConstants(load_fixed_s=1, load_gbps=1e9, step_fixed_s=0.0,
                                                                step_per_seq_s=0.01, out_tokens=100))})
    whole = plan_grouped({"big": 400}, [WorkerState(i) for i in range(4)], costs, split=False)
    split = plan_grouped({"big": 400}, [WorkerState(i) for i in range(4)], costs)
    assert whole.makespan_s == pytest.approx(1 + 400)
    assert split.makespan_s == pytest.approx(1 + 100) and split.loads == 4
    assert sorted(n for _, n in split.workers_of("big")) == [100, 100, 100, 100]


def test_fit_recovers_known_constants():
    pool = POOL.with_constants(cap_tokens=4096)  # exponential lengths: a batch runs to its longest response
    truth = pool.with_constants(load_fixed_s=33.0, step_fixed_s=0.007)
    naive = lambda c: reference_naive_s(SEL, "a", c)  # noqa: E731
    grouped = lambda c: reference_grouped_s(SEL, "a", c)  # noqa: E731
    load, step = fit_two(naive, grouped, naive(truth), grouped(truth), pool)
    assert load == pytest.approx(33.0) and step == pytest.approx(0.007)


def test_fit_refuses_figures_that_cannot_separate_the_constants():
    naive = lambda c: reference_naive_s(SEL, "a", c)  # noqa: E731
    grouped = lambda c: reference_grouped_s(SEL, "a", c)  # noqa: E731
    with pytest.raises(ValueError, match="singular"):  # fixed lengths: both figures scale the same way
        fit_two(naive, grouped, 100.0, 30.0, POOL)


def test_prompts_that_quote_answers_cost_prefill_and_kv_cache():
    """The aggregator and MoA's second layer read other models' answers (their thinking stripped)."""
    think = CostConstants(load_fixed_s=0, release_s=0, step_fixed_s=0.01, step_per_seq_s=0.0, out_tokens=1000,
                          answer_tokens=200, prompt_tokens=100, prefill_s_per_token=1e-4, kv_tokens=10_000)
    plain = CostConstants(load_fixed_s=0, release_s=0, step_fixed_s=0.01, step_per_seq_s=0.0, out_tokens=100,
                          prompt_tokens=100, prefill_s_per_token=1e-4, kv_tokens=10_000)
    pool = SimulatedCosts({"r1": ModelCost(0.0, think), "p": ModelCost(0.0, plain)})
    assert pool.quoting("p", [["r1", "p"], ["p"]]) == pytest.approx(100 + (200 + 100 + 100) / 2)
    # MoA layer 2: 50 prompts of 100 + 200 + 100 tokens; the KV cache holds 10_000 / (400 + 1000) = 7 of them
    layer1 = think.generate_s(50)
    layer2 = think.generate_s(50, prompt_tokens=400)
    assert layer2 == pytest.approx(50 * 400 * 1e-4 + 50 * 1000 / 7 * 0.01)
    moa = reference_moa_s(50, ["r1", "p"], "p", pool, layers=2)
    assert moa == pytest.approx(layer1 + layer2 + plain.generate_s(50) + plain.generate_s(50, prompt_tokens=400)
                                + plain.generate_s(50, prompt_tokens=400))
