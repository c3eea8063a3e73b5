"""The worker's residency policy: device, host and disk tiers, plan-aware eviction (Belady), prefetch."""

import pytest

from skillmoe_ray.engines.base import GenerationRequest, SamplingSettings
from skillmoe_ray.engines.simulated import Clock, CostConstants, SimulatedEngine, SimulatedSpec
from skillmoe_ray.serving.workers import ExpertWorker


def worker_with(names, capacity, clock, host_budget_gb=None, prefetch=False):
    w = ExpertWorker(0, [], capacity=capacity, host_budget_gb=host_budget_gb, prefetch=prefetch)
    consts = CostConstants(load_fixed_s=10, load_gbps=1e9, wake_fixed_s=1, h2d_gbps=1e9, step_fixed_s=0,
                           step_per_seq_s=0.001, out_tokens=1)
    for n in names:
        w.add_engine(SimulatedEngine(n, SimulatedSpec(size_gb=1, constants=consts), clock))
    return w


def jobs(order):
    return [(e, [(0, i, GenerationRequest.user("p", key=f"GPQA/test/{i}"))]) for i, e in enumerate(order)]


def test_evicts_the_model_needed_furthest_ahead():
    clock = Clock()
    w = worker_with("abc", capacity=2, clock=clock)
    # a b c a b: when c arrives, a is needed next and b after it, so b (furthest) goes
    w.run(jobs("abcab"), SamplingSettings())
    loads = {n: e.loads + e.wakes for n, e in w.engines.items()}
    assert loads == {"a": 1, "b": 2, "c": 1} and w.loads + w.wakes == 4
    # b was parked in host memory (no budget set), so coming back was a wake, not a cold load
    assert w.engines["b"].wakes == 1 and w.loads == 3


def test_lru_would_do_worse_on_the_same_plan():
    """For comparison: evicting the least recently used (a) would cost an extra load."""
    order, capacity = "abcab", 2
    resident, loads = [], 0
    for e in order:
        if e in resident:
            resident.remove(e)
        else:
            loads += 1
            if len(resident) >= capacity:
                resident.pop(0)
        resident.append(e)
    assert loads == 5  # Belady: 4 (previous test)


def test_capacity_one_swaps_every_change_and_never_exceeds_budget():
    clock = Clock()
    w = worker_with("ab", capacity=1, clock=clock)
    out = w.run(jobs("aabba"), SamplingSettings())
    assert len(out["texts"]) == 5
    assert w.loads + w.wakes == 3 and len([e for e in w.engines.values() if e.loaded]) == 1
    assert out["stats"]["resident"] == ["a"]


def test_no_host_budget_means_every_swap_is_a_cold_load():
    clock = Clock()
    w = worker_with("ab", capacity=1, clock=clock, host_budget_gb=0)
    w.run(jobs("abab"), SamplingSettings())
    assert (w.loads, w.wakes) == (4, 0) and not any(e.parked for e in w.engines.values())
    assert clock.elapsed_s == pytest.approx(4 * 10 + 4 * 0.001, rel=1e-3)


def test_host_tier_turns_cold_loads_into_wakes_within_its_budget():
    clock = Clock()
    # room for two parked 1 GB models: a swap parks the outgoing one before the incoming one's host copy is
    # freed by its wake, so for a moment both are pinned
    w = worker_with("ab", capacity=1, clock=clock, host_budget_gb=2.0)
    w.run(jobs("abab"), SamplingSettings())
    assert (w.loads, w.wakes) == (2, 2)
    assert clock.elapsed_s == pytest.approx(2 * 10 + 2 * 1 + 4 * 0.001, rel=1e-3)


def test_a_swap_never_holds_more_host_memory_than_the_budget():
    clock = Clock()
    w = worker_with("ab", capacity=1, clock=clock, host_budget_gb=1.0)  # one parked model, not two at once
    w.run(jobs("abab"), SamplingSettings())
    assert (w.loads, w.wakes) == (3, 1)  # b cannot be parked while a's copy still waits to wake


def test_host_budget_keeps_the_parked_model_needed_soonest():
    clock = Clock()
    w = worker_with("abc", capacity=1, clock=clock, host_budget_gb=1.0)
    # after a, b: parked {a}; c arrives: b must go to host, a is needed later than b, so a is released
    w.run(jobs("abcba"), SamplingSettings())
    assert w.engines["b"].wakes == 1 and w.engines["a"].loads == 2 and sum(e.host_bytes() for e in w.engines.values()) <= 1e9


def test_prefetch_reads_the_next_model_while_the_current_one_generates():
    clock = Clock()
    w = worker_with("abc", capacity=1, clock=clock, host_budget_gb=2.0, prefetch=True)
    w.run(jobs("abc"), SamplingSettings())
    # a loads cold; b and c were read into host memory during the job before theirs, so they only wake
    assert (w.loads, w.wakes, w.prefetches) == (1, 2, 2)


def test_prefetch_respects_the_host_budget():
    clock = Clock()
    w = worker_with("abc", capacity=1, clock=clock, host_budget_gb=0, prefetch=True)
    w.run(jobs("abc"), SamplingSettings())
    assert (w.loads, w.wakes, w.prefetches) == (3, 0, 0)


# ---------------------------------------------------------------- memory counted in bytes

from skillmoe_ray.scheduling.residency import Limits, ModelTraits, Tiers, simulate, step  # noqa: E402

#: an 8B model on vLLM: 26.6 GB awake (weights, 8 GiB of KV, activations, context), 1.07 GB asleep, 16 GB pinned
EIGHT_B = ModelTraits(size_gb=16.1, device_gb=26.6, asleep_gb=1.07)


def _limits(names, device_gb, host_budget_gb=None, traits=EIGHT_B, capacity=1000):
    return Limits(capacity=capacity, host_budget_gb=host_budget_gb, traits={n: traits for n in names},
                  device_gb=device_gb)


@pytest.mark.parametrize("device_gb,resident", [(0.95 * 141, 5), (0.95 * 80, 2), (0.95 * 24, 0)])
def test_a_device_holds_as_many_models_as_their_bytes_allow(device_gb, resident):
    names = "abcdefg"
    out = simulate(Tiers(), list(names), _limits(names, device_gb, host_budget_gb=0))
    if resident:
        assert len(out.tiers.device) == resident and out.loads == len(names)
        # a second pass over the first models of the plan: the ones still resident cost nothing
    else:  # too large even alone: it still comes in (its load fails and says why), alone
        assert len(out.tiers.device) == 1


def test_parked_engines_keep_their_context_on_the_device_and_count_against_it():
    # 55 GB: two awake 8B models (53.2 GB) fit beside one parked leftover (1.07 GB), not beside two
    limits = _limits("abcd", 55.0)
    tiers, parked = Tiers(), []
    for i, name in enumerate("abcdabcd"):
        step(tiers, name, list("abcdabcd"[i + 1:]), limits)
        used = limits.device_used(tiers.device, tiers.host)
        assert used <= 55.0 + 1e-9, (name, tiers, used)
        assert len(tiers.device) <= 2
        parked.append(len(tiers.host))
    assert max(parked) >= 1  # models were parked (a wake later), their leftovers counted


def test_leftovers_of_parked_models_are_freed_when_they_are_what_is_in_the_way():
    big = ModelTraits(size_gb=16, device_gb=50.0, asleep_gb=3.0)
    limits = _limits("abc", 55.0, traits=big)
    tiers = Tiers(device=[], host=["a", "b"])  # 6 GB of leftovers: 50 + 6 > 55
    st = step(tiers, "c", ["a", "b"], limits)
    assert ("release", "b") in st.evictions or ("release", "a") in st.evictions
    assert limits.device_used(tiers.device, tiers.host) <= 55.0


def test_bytes_never_exceed_the_device_or_host_budget_on_random_plans():
    import random

    rng = random.Random(7)
    for trial in range(200):
        names = "abcdef"[: rng.randint(2, 6)]
        traits = {n: ModelTraits(size_gb=rng.uniform(1, 20), device_gb=rng.uniform(5, 40),
                                 asleep_gb=rng.choice([0.0, 0.5, 1.0])) for n in names}
        device = rng.uniform(41, 120)
        host = rng.choice([None, 0.0, rng.uniform(5, 40)])
        limits = Limits(capacity=1000, host_budget_gb=host, traits=traits, device_gb=device)
        plan = [rng.choice(names) for _ in range(rng.randint(1, 30))]
        tiers = Tiers()
        for i, name in enumerate(plan):
            step(tiers, name, plan[i + 1:], limits)
            assert limits.device_used(tiers.device, tiers.host) <= device + 1e-9, (trial, tiers)
            if host is not None:
                assert sum(traits[n].size_gb for n in tiers.host) <= host + 1e-9, (trial, tiers)
            assert name in tiers.device
