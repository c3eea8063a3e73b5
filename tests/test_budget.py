"""Cost-aware routing (budget.py): order, budget, stopping rule; the router in the pipeline; evaluate integration."""

from collections import Counter

import pytest

from skillmoe_ray.aggregation.votes import vote_settled
from skillmoe_ray.aggregation.aggregators import OrderedVoteAggregator
from skillmoe_ray.routing.budget import (
    agreement_settled,
    apply_budget,
    cascade_outcome,
    choose_prior_strength,
    expert_sizes,
    order_experts,
    ordered_vote,
    shrunk_accuracy,
    size_from_name,
)
from skillmoe_ray.config import RoutingConfig
from skillmoe_ray.engines.base import Engine
from skillmoe_ray.errors import ConfigError
from skillmoe_ray.execution import LocalExecutor
from skillmoe_ray.pipeline import Pipeline
from skillmoe_ray.profiles import build_profiles
from skillmoe_ray.routing.routers import ROUTERS, BudgetRouter, CascadeRouter, Router, make_router
from skillmoe_ray.tasks.catalogue import Question, get_task


# ------------------------------------------------------------------ pure functions


def test_shrunk_accuracy_moves_toward_the_skill_rate_with_more_evidence():
    counts = {"a": {"math": (9.0, 10.0)}, "b": {"math": (1.0, 10.0)}}
    acc = {"a": 0.5, "b": 0.5}
    est = shrunk_accuracy(counts, acc, ["math", "math"], prior_strength=10.0)  # repeated skills count once
    assert est == pytest.approx({"a": (9 + 5) / 20, "b": (1 + 5) / 20})
    assert shrunk_accuracy(counts, acc, ["law"], 10.0) == {"a": 0.5, "b": 0.5}  # unseen skill: the prior
    assert shrunk_accuracy(counts, acc, ["math"], None) == acc  # infinite prior: overall accuracy


def test_order_is_by_estimate_ties_by_rank_and_cost_weighting_prefers_cheap():
    est = {"big": 0.5, "small": 0.45, "mid": 0.5}
    assert order_experts(est, ["mid", "big", "small"]) == ["mid", "big", "small"]
    sizes = {"big": 26.0, "mid": 14.0, "small": 7.6}
    assert order_experts(est, ["big", "mid", "small"], sizes, size_weight=1.0) == ["small", "mid", "big"]
    with pytest.raises(ValueError):
        order_experts(est, ["big"], None, size_weight=1.0)


def test_budget_is_a_prefix_within_max_calls_and_size():
    order = ["a", "b", "c", "d"]
    sizes = {"a": 16.0, "b": 8.0, "c": 14.0, "d": 14.0}
    assert apply_budget(order, 2) == ["a", "b"]
    assert apply_budget(order, None, sizes, 30.0) == ["a", "b"]  # 16+8 fits, +14 does not
    assert apply_budget(order, None, sizes, 10.0) == ["a"]  # the first expert is always asked
    assert apply_budget(order, 3, sizes, 100.0) == ["a", "b", "c"]
    with pytest.raises(ValueError):
        apply_budget(order, 0)


def test_agreement_settles_on_two_votes_or_when_nothing_can_change():
    assert agreement_settled(["A", "A"], remaining=3)
    assert not agreement_settled(["A", "B"], remaining=3)
    assert agreement_settled(["A", "B"], remaining=0)
    assert agreement_settled(["A", None], remaining=1)  # the last vote can only tie A, and ties go to A
    assert not agreement_settled(["A", None], remaining=2)  # two more could agree on B
    assert agreement_settled([None, "A"], remaining=0)
    assert agreement_settled(["A", "B", "B"], remaining=2)
    assert not agreement_settled(["A", "B", "C"], remaining=2, quorum=3)
    # quorum 3 with a 2-vote lead and one expert left: the others cannot catch up
    assert agreement_settled(["A", "A", "B"], remaining=1, quorum=3)


def test_ordered_vote_and_cascade_outcome():
    assert ordered_vote(["B", "A", None, "A"]) == "A"
    assert ordered_vote(["B", "A"]) == "B"  # tie: asked first
    assert ordered_vote([None, None]) is None
    preds = {"a": "X", "b": "Y", "c": "Y", "d": "X"}
    assert cascade_outcome(["a", "b", "c", "d"], preds) == ("Y", 3)
    assert cascade_outcome(["a", "d", "b"], preds) == ("X", 2)
    assert cascade_outcome(["a", "b", "c"], preds) == ("Y", 3)
    assert cascade_outcome(["a", "b"], preds) == ("X", 1)  # the second could only tie, and ties go to the first


def test_max_calls_is_never_exceeded_by_brute_force():
    import itertools

    letters = [None, "A", "B", "C"]
    for n in range(1, 6):
        order = [f"e{i}" for i in range(n)]
        for answers in itertools.product(letters, repeat=n):
            for max_calls in range(1, n + 1):
                cut = apply_budget(order, max_calls)
                ans, calls = cascade_outcome(cut, dict(zip(order, answers)))
                assert 1 <= calls <= max_calls
                asked = answers[:calls]
                agreed = any(c >= 2 for c in Counter(a for a in asked if a).values())
                if calls < len(cut) and not agreed:  # stopped because no remaining vote could change the answer
                    for rest in itertools.product(letters, repeat=len(cut) - calls):
                        assert ordered_vote(list(asked) + list(rest)) == ans


def test_size_from_name():
    assert size_from_name("Llama-2-13b-hf") == 26.0
    assert size_from_name("Meta-Llama-3_1-8B-Instruct") == 16.0
    assert size_from_name("Qwen1.5-7B-Chat") == 14.0
    assert size_from_name("Phi-3-mini-4k-instruct") == pytest.approx(7.6)
    assert size_from_name("gpt2") is None


def test_choose_prior_strength_trusts_skills_only_when_cv_says_so():
    # expert "m" is right on math and wrong elsewhere, "g" the opposite: the skill signal is real
    skills = [["math"] if i % 2 else ["law"] for i in range(60)]
    correct = {"m": [bool(i % 2) for i in range(60)], "g": [not i % 2 for i in range(60)],
               "w": [i % 5 == 0 for i in range(60)]}
    preds = {e: ["G" if ok else f"W{e}" for ok in oks] for e, oks in correct.items()}
    m, results = choose_prior_strength(skills, correct, preds, candidates=(5.0, None), max_calls=1, repeats=2)
    assert m == 5.0 and len(results) == 2
    assert results[0].accuracy > results[1].accuracy
    # no skill signal: the global ranking (None) is the strongest prior within one SE
    flat = {e: [i % 3 != 0 for i in range(60)] if e == "m" else [i % 2 == 0 for i in range(60)] for e in correct}
    preds = {e: ["G" if ok else f"W{e}" for ok in oks] for e, oks in flat.items()}
    m, _ = choose_prior_strength([["s"]] * 60, flat, preds, candidates=(5.0, None), max_calls=2, repeats=2)
    assert m is None


def test_routing_config_budget_knobs():
    cfg = RoutingConfig(strategy="budget", max_calls=3, max_size_gb=40, size_weight=1)
    assert cfg.max_calls == 3
    with pytest.raises(Exception):
        RoutingConfig(max_calls=0)


# ------------------------------------------------------------------ the router in the pipeline


class LetterEngine(Engine):
    """Answers every question with its letter; counts prompts."""

    def __init__(self, name, letters):
        super().__init__(name)
        self.letters = letters
        self.asked = 0

    def generate(self, requests, sampling):
        self.asked += len(requests)
        return [f"... The answer is ({self.letters[int(r.key.split('/')[-1]) % len(self.letters)]})" for r in requests]


def _toy_profiles():
    experts = ["a", "b", "c", "d"]
    correct = {"a": [True] * 6 + [False] * 4, "b": [True] * 5 + [False] * 5, "c": [True] * 4 + [False] * 6,
               "d": [True] * 3 + [False] * 7}
    preds = {e: ["A" if ok else "B" for ok in oks] for e, oks in correct.items()}
    return build_profiles("GPQA", experts, [f"GPQA/train/{i}" for i in range(10)], [["s"]] * 10, preds, correct)


def test_budget_router_in_the_pipeline_stops_on_agreement_and_respects_max_calls():
    prof = _toy_profiles()
    task = get_task("GPQA")
    # question i: a answers A, b answers A on even questions (agree: 2 calls), B on odd; c, d alternate
    engines = {"a": LetterEngine("a", "A"), "b": LetterEngine("b", "AB"), "c": LetterEngine("c", "BA"),
               "d": LetterEngine("d", "C")}
    qs = [Question("GPQA", "test", i, f"q{i}") for i in range(8)]
    for max_calls in (1, 2, 3, 4):
        router = BudgetRouter(prof, max_calls, prior_strength=None)
        sols = Pipeline(task, None, router, OrderedVoteAggregator(), LocalExecutor(engines)).solve(qs)
        for s in sols:
            assert s.calls <= max_calls
            assert s.experts == ["a", "b", "c", "d"][: s.calls]
        even = [s for s in sols if s.question.index % 2 == 0]
        # two agree at the second call; with a budget of 2 the first answer already wins (a second can only tie)
        assert all(s.calls == (2 if max_calls > 2 else 1) and s.answer == "A" for s in even)
        if max_calls >= 3:  # odd: a=A, b=B, c=A -> two agree at the third call
            assert all(s.calls == 3 and s.answer == "A" for s in sols if s.question.index % 2)


def test_cascade_router_keeps_the_base_hooks_and_budget_is_registered():
    cascade = CascadeRouter("c", ["a"])
    assert cascade.first_round is None and type(cascade).settled is Router.settled
    for preds, remaining in ((["A", "B"], 1), (["A", None], 1), (["A", "A"], 3), (["A", "B", "C"], 2)):
        assert cascade.settled(preds, ["x"] * len(preds), remaining, None) == \
            vote_settled(preds, list(range(len(preds))), remaining, None)
    prof = _toy_profiles()
    assert "budget" in ROUTERS and BudgetRouter.strategy == "budget"
    router = make_router(RoutingConfig(strategy="budget", max_calls=2), prof)
    assert isinstance(router, BudgetRouter) and router.cascade and router.first_round == 2 and router.max_calls == 2
    # size knobs need every expert's size: none of the toy names says it, the pool config may
    with pytest.raises(ConfigError):
        make_router(RoutingConfig(strategy="budget", size_weight=1.0), prof)
    sized = BudgetRouter.from_config(RoutingConfig(strategy="budget", size_weight=1.0), prof,
                                     sizes_gb={"a": 26.0, "b": 14.0, "c": 7.6, "d": 16.0})
    assert sized.sizes == {"a": 26.0, "b": 14.0, "c": 7.6, "d": 16.0} and sized.size_weight == 1.0


def test_expert_sizes_prefers_the_config_and_needs_every_expert():
    assert expert_sizes(["Llama-2-13b-hf", "gpt2"], {"gpt2": 0.5}) == {"Llama-2-13b-hf": 26.0, "gpt2": 0.5}
    assert expert_sizes(["Llama-2-13b-hf", "gpt2"], {}) is None


# ------------------------------------------------------------------ evaluate integration (real recorded pool)


def test_pipeline_asks_exactly_what_the_pure_cascade_asks(recorded_runtime, mmlu_profiles):
    """Offline simulation (cascade_outcome) and the pipeline's rounds agree call for call."""
    from skillmoe_ray.aggregation.aggregators import VoteAggregator
    from skillmoe_ray.routing.routers import FixedRouter

    task = get_task("MMLU_Pro")
    qs = recorded_runtime.questions(task, "test")[:200]
    skills = recorded_runtime.skill_stage(mmlu_profiles).skills(qs)
    everyone = Pipeline(task, None, FixedRouter("all", mmlu_profiles.experts), VoteAggregator(mmlu_profiles.ranking()),
                        recorded_runtime.executor).solve(qs, skills=skills)
    preds = [{a.expert: a.pred for a in s.answers} for s in everyone]
    for max_calls in (2, 3, 5):
        router = BudgetRouter(mmlu_profiles, max_calls, prior_strength=50.0)
        sols = Pipeline(task, None, router, OrderedVoteAggregator(), recorded_runtime.executor).solve(qs, skills=skills)
        for s, p, sk in zip(sols, preds, skills):
            order = router.order(sk)
            answer, calls = cascade_outcome(order, p, same=task.same_answer)
            assert s.experts == order[:calls] and s.answer == answer


def test_budget_methods_in_evaluate_on_a_sample(recorded_runtime):
    from skillmoe_ray.offline.evaluate import evaluate

    names = ["fixed_top5_vote", "budget_max3_vote", "budget_max5_vote", "budget_rank_max5_vote",
             "budget_sized1_max5_vote"]
    report = evaluate(recorded_runtime, get_task("MMLU_Pro"), [0], methods=names, sample=150)
    m = report["methods"]
    assert set(m) == set(names)
    assert m["budget_max3_vote"]["calls_per_question"] <= 3
    assert 2 <= m["budget_max5_vote"]["calls_per_question"] < m["fixed_top5_vote"]["calls_per_question"]
    assert m["budget_rank_max5_vote"]["accuracy_mean"] > 0.35


def test_a_served_cascade_answers_in_the_same_record_the_scheduler_gives():
    """The ingress runs cascade rounds through the pipeline; its answer is the scheduler's record type,
    which /v1/solve's schema and the chat API's fields read field by field."""
    from skillmoe_ray.engines.base import GenerationRequest, SamplingSettings
    from skillmoe_ray.serving.ingress import SkillMoEIngress
    from skillmoe_ray.serving.messages import AnswerRecord
    from skillmoe_ray.serving.scheduler import Work
    from skillmoe_ray.serving.schemas import SolveResponse, skillmoe_extra

    prof = _toy_profiles()
    engines = {"a": LetterEngine("a", "A"), "b": LetterEngine("b", "AB"), "c": LetterEngine("c", "BA"),
               "d": LetterEngine("d", "C")}
    pipe = Pipeline(get_task("GPQA"), None, BudgetRouter(prof, 3, prior_strength=None), OrderedVoteAggregator(),
                    LocalExecutor(engines))
    q = Question("GPQA", "request", 1, "q1")
    work = Work(q, [], GenerationRequest.user("q1"), SamplingSettings(), 0, [])
    record = SkillMoEIngress.func_or_class._cascade(pipe, work, ["x"])
    assert isinstance(record, AnswerRecord)
    assert record.experts == ["a", "b", "c"] and record.answer == "A"
    assert [(p.expert, p.answer) for p in record.expert_answers] == [("a", "A"), ("b", "B"), ("c", "A")]
    body = SolveResponse.model_validate(record).model_dump()
    assert body["expert_answers"][1] == {"expert": "b", "answer": "B"} and body["answer"] == "A"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert skillmoe_extra(record)["experts"] == ["a", "b", "c"]
