"""The worker's residency policy: plan-aware eviction (Belady) with a model budget."""

from skillmoe_ray.engines.base import GenerationRequest, SamplingSettings
from skillmoe_ray.engines.simulated import Clock, CostConstants, SimulatedEngine, SimulatedSpec
from skillmoe_ray.serving.workers import ExpertWorker


def worker_with(names, capacity, clock):
    w = ExpertWorker(0, [], capacity=capacity)
    consts = CostConstants(load_fixed_s=10, load_gbps=1e9, step_fixed_s=0, step_per_seq_s=0.001, out_tokens=1)
    for n in names:
        w.engines[n] = SimulatedEngine(n, SimulatedSpec(size_gb=1, constants=consts), clock)
    return w


def jobs(order):
    return [(e, [(0, i, GenerationRequest.user("p", key=f"GPQA/test/{i}"))]) for i, e in enumerate(order)]


def test_evicts_the_model_needed_furthest_ahead():
    clock = Clock()
    w = worker_with("abc", capacity=2, clock=clock)
    # a b c a b: when c arrives, a is needed next and b after it, so b (furthest) goes
    w.run(jobs("abcab"), SamplingSettings())
    loads = {n: e.loads for n, e in w.engines.items()}
    assert loads == {"a": 1, "b": 2, "c": 1} and w.loads == 4


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
    assert w.loads == 3 and len([e for e in w.engines.values() if e.loaded]) == 1
    assert out["stats"]["resident"] == ["a"]
