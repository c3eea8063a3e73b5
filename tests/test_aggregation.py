import itertools
import random

import pytest

from skillmoe_ray.aggregation.votes import (
    build_aggregator_tasks,
    majority_vote,
    select_aggregator,
    vote_settled,
    weighted_vote,
)
from skillmoe_ray.prompts import aggregation_prompt
from skillmoe_ray.tasks.catalogue import get_task


def test_majority_vote_ties_go_to_the_better_ranked_expert():
    assert majority_vote(["B", "A"], rank=[1, 0]) == "A"
    assert majority_vote(["B", "A", "B"], rank=[2, 0, 1]) == "B"
    assert majority_vote([None, None, "C"]) == "C"
    assert majority_vote([None, None]) is None


def test_weighted_vote_and_equivalent_boxed_answers_pool():
    assert weighted_vote(["A", "B", "B"], [3.0, 1.0, 1.0]) == "A"
    aime = get_task("AIME24")
    assert weighted_vote(["0.5", r"\frac{1}{2}", "3"], [1, 1, 1.5], task=aime) == "0.5"
    with pytest.raises(ValueError):
        weighted_vote(["A"], [1, 2])


def test_aggregation_prompt_lists_responses_first_and_cuts_thinking():
    p = aggregation_prompt(get_task("GPQA"), "What is X?", ["<think>secret</think>R1", "R2"])
    assert p.index("### Model 1's response:\nR1") < p.index("Question: What is X?")
    assert "secret" not in p and "The answer is (X)" in p


def test_synthetic_aggregator_tasks_have_one_right_and_two_wrong():
    outputs = {"a": ["ra0", "ra1"], "b": ["rb0", "rb1"], "c": ["rc0", "rc1"], "d": ["rd0", "rd1"]}
    correct = {"a": [True, True], "b": [False, True], "c": [False, True], "d": [False, False]}
    tasks = build_aggregator_tasks(["q0", "q1"], ["Q0", "Q1"], ["A", "B"], outputs, correct, seed=0)
    assert [t.qid for t in tasks] == ["q0"]  # q1 has only one wrong answer
    t = tasks[0]
    assert t.responses[t.correct_position] == "ra0"
    assert sorted(t.responses) == ["ra0", "rb0", "rc0"] or sorted(t.responses) == sorted(["ra0", "rb0", "rd0"]) \
        or sorted(t.responses) == sorted(["ra0", "rc0", "rd0"])
    positions = {build_aggregator_tasks(["q0"], ["Q0"], ["A"], outputs, correct, seed=s)[0].correct_position
                 for s in range(30)}
    assert positions == {0, 1, 2}  # shuffled


def test_select_aggregator_best_hit_rate_then_rank():
    assert select_aggregator({"a": 0.4, "b": 0.6}) == "b"
    assert select_aggregator({"a": 0.5, "b": 0.5}, ranking=["b", "a"]) == "b"


def test_vote_settled_agrees_with_brute_force():
    """Settled means no completion of the remaining (lower-ranked) votes changes the winner."""
    letters = ["A", "B", "C", None]
    rng = random.Random(0)
    for _ in range(400):
        k = rng.randint(1, 5)
        t = rng.randint(1, k)
        preds = [rng.choice(letters) for _ in range(t)]
        remaining = k - t
        base = majority_vote(preds, list(range(t)))
        outcomes = {majority_vote(preds + list(rest), list(range(k)))
                    for rest in itertools.product(letters + ["D"], repeat=remaining)}
        assert vote_settled(preds, list(range(t)), remaining) == (outcomes == {base}), (preds, remaining)


def test_every_aggregation_mode_of_the_config_has_a_registered_aggregator():
    from typing import get_args

    from skillmoe_ray.aggregation.aggregators import AGGREGATORS, make_aggregator
    from skillmoe_ray.config import AggregationConfig
    from skillmoe_ray.errors import ConfigError

    assert set(AGGREGATORS) == set(get_args(AggregationConfig.model_fields["mode"].annotation))
    with pytest.raises(ConfigError, match="known: .*vote"):
        make_aggregator(AggregationConfig.model_construct(mode="nope"), None)


def test_aggregator_worker_streams_what_it_would_answer_whole():
    """The aggregator actor's class in-process: the LLM aggregator's stream is its text as it comes, then the
    record the non-streaming call gives for it; a vote streams only that record."""
    from skillmoe_ray.serving.aggregator_worker import AggregatorWorker
    from skillmoe_ray.solution import ExpertAnswer
    from skillmoe_ray.tasks.catalogue import Question

    sim = {"name": "agg", "engine": "simulated", "model": "sim", "size_gb": 1,
           "engine_args": {"out_tokens": 20, "step_fixed_s": 0.0, "load_fixed_s": 0.0}}
    question = Question("GPQA", "request", 1, "Which is a prime number? (A) 21 (B) 27 (C) 29 (D) 33")
    answers = [ExpertAnswer(e, f"[simulated reasoning: 9 tokens] The answer is ({x})", x)
               for e, x in (("a", "C"), ("b", "A"), ("c", "C"))]
    worker = AggregatorWorker("llm", {"GPQA": ["a", "b", "c"]}, {}, sim)
    items = list(worker.aggregate_stream("GPQA", question, answers, 0))
    deltas, (merged, usage) = items[:-1], items[-1]
    assert len(deltas) > 1 and all(isinstance(d, str) for d in deltas)
    assert worker.aggregate_with_usage("GPQA", [question], [answers], 0) == (merged, usage)
    (answer, text, who), = merged
    assert "".join(deltas) == text and answer == get_task("GPQA").extract(text) and who == "agg"
    assert usage[0][0] > 0 and usage[0][1] > 0
    vote = AggregatorWorker("vote", {"GPQA": ["a", "b", "c"]}, {})
    assert list(vote.aggregate_stream("GPQA", question, answers, 0)) == [
        vote.aggregate_with_usage("GPQA", [question], [answers], 0)]


def test_agreed_is_the_answer_every_expert_gave():
    from skillmoe_ray.aggregation.votes import agreed

    aime = get_task("AIME24")
    assert agreed(["B", "B", "B"]) == "B" and agreed(["B", "C", "B"]) is None
    assert agreed(["B", None, "B"]) is None and agreed(["B"]) is None and agreed([]) is None
    assert agreed(["\\frac{1}{2}", "0.5"], aime) == "\\frac{1}{2}"  # equal as the task compares answers


class _CountingExecutor:
    """Stands in for the pool in a unit test of the aggregator's logic: records what the model is asked."""

    expert_names = ["agg"]
    unhealthy: dict = {}

    def __init__(self):
        self.asked = []

    def run(self, plan, sampling):
        out = {}
        for _, work in plan.items():
            for qi, slot, req in work:
                self.asked.append(qi)
                out[(qi, slot)] = "Weighing them, the answer is (C)"
        return out


def test_an_llm_aggregator_skips_questions_whose_experts_agree_when_set():
    from skillmoe_ray.aggregation.aggregators import LLMAggregator
    from skillmoe_ray.solution import ExpertAnswer
    from skillmoe_ray.tasks.catalogue import load_questions

    task = get_task("GPQA")
    questions = load_questions(task, "test")[:3]
    answers = [[ExpertAnswer(e, f"{e} thinks. The answer is ({p})", p) for e, p in zip("xyz", preds)]
               for preds in (("A", "A", "A"), ("A", "B", "A"), ("D", "D", None))]
    ex = _CountingExecutor()
    merged = LLMAggregator("agg", skip_when_agreed=True).aggregate(task, questions, answers, ex, 0)
    assert ex.asked == [1, 2]  # only the questions without a unanimous answer reach the model
    assert merged[0] == ("A", "x thinks. The answer is (A)", "agreement (3 of 3)")
    assert [m[0] for m in merged[1:]] == ["C", "C"] and merged[1][2] == "agg"
    ex = _CountingExecutor()
    assert [m[2] for m in LLMAggregator("agg").aggregate(task, questions, answers, ex, 0)] == ["agg"] * 3
    assert ex.asked == [0, 1, 2]  # off by default
