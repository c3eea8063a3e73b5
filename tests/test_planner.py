import random

import pytest

from skillmoe_ray.scheduling.planner import CostModel, WorkerState, plan_grouped, plan_naive

COST = CostModel(default_load_s=10.0, default_per_prompt_s=1.0)


def test_each_expert_goes_to_one_worker_once():
    work = {"a": 5, "b": 3, "c": 8, "d": 1}
    a = plan_grouped(work, [WorkerState(0), WorkerState(1)], COST)
    placed = [e for jobs in a.jobs.values() for e in jobs]
    assert sorted(placed) == sorted(work) and a.loads == 4


def test_balances_finishing_times():
    work = {e: 10 for e in "abcd"}
    a = plan_grouped(work, [WorkerState(0), WorkerState(1)], COST)
    assert sorted(len(v) for v in a.jobs.values()) == [2, 2]
    assert a.finish_s[0] == a.finish_s[1] == 40.0 and a.makespan_s == 40.0


def test_split_pieces_are_sized_so_workers_finish_together():
    """One expert with most of the batch, split over workers of which some also load a second expert: equal pieces
    would leave those last; the pieces are resized instead, with the same loads and the same prompts in all."""
    cost = CostModel(load_s={"big": 36, "mid": 36, "small": 36}, per_prompt_s={"big": 8, "mid": 8, "small": 0.5},
                     batch_overhead_s=25)
    work = {"big": 422, "mid": 112, "small": 60}
    a = plan_grouped(work, [WorkerState(i) for i in range(8)], cost)
    assert {e: sum(sh.get(e, 0) for sh in a.shares.values()) for e in work} == work
    assert all(n >= 1 for sh in a.shares.values() for n in sh.values())
    spread = max(a.finish_s.values()) - min(a.finish_s.values())
    assert spread <= 8 + 8, a.finish_s  # within about one prompt of each other
    equal = sorted({a.shares[w]["big"] for w in a.shares if "big" in a.shares[w]})
    assert len(equal) > 1  # not the equal split
    # the residency prediction is that of the same job lists: one load per piece
    assert a.loads == sum(len(j) for j in a.jobs.values())


def test_prefers_the_worker_where_an_expert_is_resident():
    work = {"a": 2, "b": 2}
    a = plan_grouped(work, [WorkerState(0, frozenset({"b"})), WorkerState(1, frozenset({"a"}))], COST)
    assert a.jobs == {0: ["b"], 1: ["a"]} and a.loads == 0 and a.makespan_s == 2.0


def test_residency_with_capacity_one_is_tracked_through_the_plan():
    # one worker, 'a' resident: it runs first for free, then 'b' and 'c' must load
    a = plan_grouped({"a": 1, "b": 1, "c": 1}, [WorkerState(0, frozenset({"a"}))], COST)
    assert a.jobs[0][0] == "a" and a.loads == 2 and a.makespan_s == pytest.approx(23.0)


def test_busy_workers_get_less_new_work():
    a = plan_grouped({"a": 1, "b": 1}, [WorkerState(0, busy_s=100.0), WorkerState(1)], COST)
    assert a.jobs[0] == [] and a.jobs[1] == ["a", "b"]


def test_grouping_beats_per_question_loading():
    rng = random.Random(0)
    experts = [f"m{i}" for i in range(16)]
    selections = [rng.sample(experts, 3) for _ in range(198)]
    naive = plan_naive(selections, 1, COST)
    work: dict[str, int] = {}
    for sel in selections:
        for e in sel:
            work[e] = work.get(e, 0) + 1
    grouped = plan_grouped(work, [WorkerState(0)], COST)
    assert grouped.loads == len(work) <= 16 and naive.loads >= 198 * 2
    assert grouped.makespan_s < naive.makespan_s / 5
    four = plan_grouped(work, [WorkerState(i) for i in range(4)], COST)
    assert four.makespan_s < grouped.makespan_s / 3  # close to linear scaling at this size


def test_no_workers_is_an_error():
    with pytest.raises(ValueError):
        plan_grouped({"a": 1}, [], COST)


def test_real_engines_pay_an_engine_start():
    """A vLLM start is seconds whatever the model's size; a recording loads at once."""
    from skillmoe_ray.config import ExpertConfig, load_config
    from skillmoe_ray.serving.actors import cost_model_for

    from pathlib import Path

    experts = load_config(Path(__file__).resolve().parent.parent / "deployments" / "local-cpu.yaml").pool.experts
    cost = cost_model_for(experts + [ExpertConfig(name="rec", engine="recorded", model="x.jsonl")])
    assert all(15.0 < cost.load(e.name) < 20.0 for e in experts) and cost.load("rec") == 0.0


def test_each_task_gets_its_own_aggregator_actor():
    from skillmoe_ray.errors import ConfigError
    from skillmoe_ray.serving.scheduler_deployment import aggregator_groups

    chosen = {"GPQA": {"name": "qwen"}, "MedMCQA": {"name": "llama"}, "MMLU_Pro": {"name": "qwen"}}
    assert aggregator_groups("llm", None, chosen) == {"qwen": ["GPQA", "MMLU_Pro"], "llama": ["MedMCQA"]}
    assert aggregator_groups("llm", "phi", chosen) == {"phi": ["GPQA", "MedMCQA", "MMLU_Pro"]}
    assert aggregator_groups("vote", None, chosen) == {"vote": ["GPQA", "MedMCQA", "MMLU_Pro"]}
    with pytest.raises(ConfigError, match="GPQA"):
        aggregator_groups("llm", None, {"GPQA": {"mode": "llm"}})
