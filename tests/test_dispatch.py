"""The dispatch policy of continuous scheduling, as pure functions (no Ray)."""

from __future__ import annotations

import random

from skillmoe_ray.scheduling.dispatch import Policy, Queue, WorkerView, decide, predicted_bring, queues_of
from skillmoe_ray.scheduling.residency import Limits, ModelTraits, Tiers, step

LIMITS = Limits(capacity=1, host_budget_gb=100.0, traits={n: ModelTraits(size_gb=16.0) for n in "ABCDE"})


def w(wid, device=(), host=(), running=None, bringing=None, draining=False):
    return WorkerView(wid, Tiers(list(device), list(host)), running or {}, bringing, draining)


def test_prompts_join_a_model_that_is_generating_without_a_swap():
    d = decide([Queue("A", 3, 1.0)], [w(0, ["A"], running={"A": 2}), w(1, ["B"], running={"B": 1})], LIMITS)
    assert [(s.wid, s.expert, s.n, s.bring) for s in d.sends] == [(0, "A", 3, "resident")]


def test_an_idle_worker_brings_a_parked_model_before_a_cold_one_and_takes_all_its_prompts():
    workers = [w(0, ["C"], host=["B"]), w(1, ["A"], running={"A": 1})]
    d = decide([Queue("B", 2, 1.0), Queue("D", 5, 1.0)], workers, LIMITS)
    assert [(s.wid, s.expert, s.n, s.bring) for s in d.sends] == [(0, "B", 2, "wake")]


def test_more_prompts_win_when_both_are_cold():
    d = decide([Queue("B", 2, 3.0), Queue("D", 5, 1.0)], [w(0, ["C"])], LIMITS)
    assert [(s.expert, s.n, s.bring) for s in d.sends] == [("D", 5, "load")]


def test_aged_work_goes_first_and_drains_a_busy_worker_when_none_is_idle():
    policy = Policy(join_limit=4, max_wait_s=60.0)
    d = decide([Queue("B", 2, 3.0), Queue("D", 1, 90.0)], [w(0, ["C"])], LIMITS, policy)
    assert [(s.expert, s.bring) for s in d.sends] == [("D", "load")]
    busy = [w(0, ["A"], running={"A": 5}), w(1, ["C"], running={"C": 1})]
    d = decide([Queue("D", 1, 90.0)], busy, LIMITS, policy)
    assert d.sends == [] and d.drain == [1]  # the worker running fewest prompts empties first
    # drained, it takes no joins; once empty it brings the aged expert
    d = decide([Queue("C", 1, 1.0), Queue("D", 1, 95.0)], [busy[0], w(1, ["C"], running={"C": 1}, draining=True)],
               LIMITS, policy)
    assert d.sends == []
    d = decide([Queue("C", 1, 1.0), Queue("D", 1, 95.0)], [busy[0], w(1, ["C"], draining=True)], LIMITS, policy)
    assert [(s.wid, s.expert) for s in d.sends] == [(1, "D")]


def test_a_crowded_expert_gets_a_second_copy_on_an_idle_worker():
    policy = Policy(join_limit=4)
    d = decide([Queue("A", 6, 1.0)], [w(0, ["A"], running={"A": 4}), w(1, ["C"])], LIMITS, policy)
    assert [(s.wid, s.expert, s.n, s.bring) for s in d.sends] == [(1, "A", 6, "load")]
    # no idle worker: everything joins the copy there is
    d = decide([Queue("A", 6, 1.0)], [w(0, ["A"], running={"A": 4}), w(1, ["C"], running={"C": 1})], LIMITS, policy)
    assert [(s.wid, s.expert, s.n) for s in d.sends] == [(0, "A", 6)]


def test_nothing_is_brought_where_it_would_displace_a_model_that_is_generating():
    two = Limits(capacity=2, host_budget_gb=0.0, traits=LIMITS.traits)
    d = decide([Queue("C", 1, 1.0)], [w(0, ["A", "B"], running={"A": 1})], two)
    assert d.sends == []  # busy: not idle, and only idle workers bring


def test_a_model_being_brought_collects_its_prompts_rather_than_a_second_copy():
    d = decide([Queue("A", 3, 1.0)], [w(0, ["C"], bringing="A", running={"A": 1}), w(1, ["D"])], LIMITS)
    assert d.sends == []


def test_predictions_match_what_a_worker_applying_the_same_step_holds():
    """A simulation of workers that apply residency.step as the worker actors do: predicted brings are exact."""
    rng = random.Random(3)
    names = list("ABCDE")
    limits = Limits(capacity=2, host_budget_gb=40.0, traits={n: ModelTraits(size_gb=rng.choice([8.0, 16.0]))
                                                             for n in names})
    actual = {0: Tiers(), 1: Tiers()}
    seen = {0: Tiers(), 1: Tiers()}
    loads = {"predicted": 0, "actual": 0}
    for _ in range(200):
        queues = [Queue(e, rng.randint(1, 5), rng.random() * 100) for e in rng.sample(names, rng.randint(1, 3))]
        views = [WorkerView(i, seen[i]) for i in (0, 1)]
        for s in decide(queues, views, limits).sends:
            if s.bring != "resident":
                bring, seen[s.wid] = predicted_bring(seen[s.wid], s.expert, limits)
                loads["predicted"] += bring == "load"
                st = step(actual[s.wid], s.expert, [], limits)
                loads["actual"] += st.bring == "load"
                assert bring == st.bring
        assert {i: (t.device, t.host) for i, t in seen.items()} == {i: (t.device, t.host) for i, t in actual.items()}
    assert loads["predicted"] == loads["actual"] > 0


def test_queues_of_reports_counts_and_the_oldest_wait():
    assert queues_of({"A": [1.0, 3.0], "B": []}, 10.0) == [Queue("A", 2, 9.0)]


def test_a_failing_policy_fails_the_queued_questions_rather_than_leaving_them_waiting(monkeypatch):
    """No Ray: a scheduler over one worker handle it never gets to call."""
    import asyncio

    import pytest

    from skillmoe_ray.engines.base import GenerationRequest, SamplingSettings
    from skillmoe_ray.errors import EngineError
    from skillmoe_ray.scheduling.planner import CostModel
    from skillmoe_ray.serving import scheduler as S
    from skillmoe_ray.tasks.catalogue import Question

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the policy")

    monkeypatch.setattr(S, "decide", broken)
    sched = S.Scheduler([object()], LIMITS, CostModel(), probe_interval_s=0)
    work = S.Work(Question("GPQA", "request", 0, "q?"), ["A", "B"], GenerationRequest.user("q?"),
                  SamplingSettings(), 0, ["A", "B"])

    async def ask():
        return await asyncio.wait_for(sched.solve(work), timeout=5)

    with pytest.raises(EngineError, match="failed to place"):
        asyncio.run(ask())
    assert sched.pending == 0
