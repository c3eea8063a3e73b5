from collections import Counter

from skillmoe_ray.aggregation.aggregators import VoteAggregator
from skillmoe_ray.engines.base import Engine, GenerationRequest
from skillmoe_ray.execution import LocalExecutor, group_by_expert
from skillmoe_ray.pipeline import Pipeline
from skillmoe_ray.routing.routers import CascadeRouter, FixedRouter, PaperRouter
from skillmoe_ray.tasks.catalogue import Question, get_task


class CountingEngine(Engine):
    """Answers with a fixed letter and counts loads (scheduling unit test)."""

    loads = Counter()

    def __init__(self, name, letter):
        super().__init__(name)
        self.letter = letter

    def load(self):
        CountingEngine.loads[self.name] += 1
        super().load()

    def generate(self, requests, sampling):
        return [f"reasoning... The answer is ({self.letter})" for _ in requests]


def test_group_by_expert_puts_each_expert_once_with_all_its_prompts():
    reqs = [GenerationRequest.user(f"q{i}") for i in range(3)]
    plan = group_by_expert([["a", "b", "a"], ["b", "c", "c"], ["a", "a", "a"]], reqs)
    assert list(plan) == ["a", "b", "c"]
    assert [(qi, slot) for qi, slot, _ in plan["a"]] == [(0, 0), (0, 2), (2, 0), (2, 1), (2, 2)]
    assert sum(len(v) for v in plan.values()) == 9


def test_batch_loads_each_expert_once_and_votes():
    CountingEngine.loads.clear()
    engines = {n: CountingEngine(n, l) for n, l in [("a", "A"), ("b", "B"), ("c", "A")]}
    task = get_task("GPQA")
    qs = [Question("GPQA", "test", i, f"question {i}") for i in range(10)]
    pipe = Pipeline(task, None, FixedRouter("all", ["a", "b", "c"]), VoteAggregator(["b", "a", "c"]),
                    LocalExecutor(engines))
    sols = pipe.solve(qs)
    assert CountingEngine.loads == {"a": 1, "b": 1, "c": 1}
    assert all(s.answer == "A" and s.experts == ["a", "b", "c"] and s.calls == 3 for s in sols)
    assert set(sols[0].timings) == {"skills", "route", "experts", "aggregate", "total"}


def test_cascade_matches_the_full_vote_with_fewer_calls(recorded_runtime, mmlu_profiles):
    task = get_task("MMLU_Pro")
    qs = recorded_runtime.questions(task, "test")[:400]
    top5 = mmlu_profiles.ranking()[:5]
    vote = VoteAggregator(mmlu_profiles.ranking())
    full = Pipeline(task, None, FixedRouter("top5", top5), vote, recorded_runtime.executor).solve(qs, skills=[[]] * 400)
    casc = Pipeline(task, None, CascadeRouter("c5", top5), vote, recorded_runtime.executor).solve(qs, skills=[[]] * 400)
    assert [s.answer for s in casc] == [s.answer for s in full]
    calls = [s.calls for s in casc]
    assert min(calls) == 3 and max(calls) == 5 and sum(calls) < 0.9 * 5 * len(qs)
    for s in casc:  # experts are asked in rank order
        assert s.experts == top5[: s.calls]


def test_paper_router_on_real_profiles_recruits_k_and_is_seedable(recorded_runtime, mmlu_profiles):
    task = get_task("MMLU_Pro")
    qs = recorded_runtime.questions(task, "test")[:200]
    skills = recorded_runtime.skill_stage(mmlu_profiles).skills(qs)
    assert all(1 <= len(s) <= 3 and set(s) <= set(mmlu_profiles.skills) for s in skills)
    router = PaperRouter(mmlu_profiles)
    a, b = router.route(qs, skills, 0), router.route(qs, skills, 0)
    assert a == b and all(len(sel) == 3 for sel in a)
    assert len({e for sel in a for e in sel}) >= 3


class BrokenEngine(CountingEngine):
    def load(self):
        raise OSError("weights file is missing")


def test_local_executor_holds_one_model_and_parks_it_only_for_another():
    CountingEngine.loads.clear()
    engines = {n: CountingEngine(n, "A") for n in "ab"}
    ex = LocalExecutor(engines)
    req = GenerationRequest.user("q")
    for _ in range(5):  # e.g. the keyword LLM's samples: one load
        ex.run({"a": [(0, 0, req)]}, None)
    assert CountingEngine.loads == {"a": 1} and engines["a"].loaded
    ex.run({"b": [(0, 0, req)]}, None)
    assert not engines["a"].loaded and engines["b"].loaded  # one model in memory at a time
    ex.run({"a": [(0, 0, req)], "b": [(0, 1, req)]}, None)
    assert CountingEngine.loads == {"a": 2, "b": 2} and [e.loaded for e in engines.values()] == [False, True]


def test_expert_that_fails_to_load_is_routed_around_and_reported():
    engines = {"a": BrokenEngine("a", "A"), "b": CountingEngine("b", "B"), "c": CountingEngine("c", "C"),
               "d": CountingEngine("d", "D")}
    ex = LocalExecutor(engines)
    task = get_task("GPQA")
    qs = [Question("GPQA", "test", i, f"q{i}") for i in range(4)]
    pipe = Pipeline(task, None, FixedRouter("top3", ["a", "b", "c"]), VoteAggregator(["a", "b", "c", "d"]), ex)
    sols = pipe.solve(qs)
    assert "weights file is missing" in ex.unhealthy["a"]
    assert all(s.experts == ["d", "b", "c"] and s.calls == 3 for s in sols)
    # the next batch avoids it from the start
    sols = pipe.solve(qs)
    assert all("a" not in s.experts for s in sols)
    casc = Pipeline(task, None, CascadeRouter("c", ["a", "b", "c"]), VoteAggregator(["a", "b", "c", "d"]), ex)
    assert all("a" not in s.experts and s.answer for s in casc.solve(qs))
