"""The paper's recruitment, checked against its formulas on hand-made profiles."""

import random
from collections import Counter

import pytest

from skillmoe_ray.routing.recruitment import (
    apply_usage_floor,
    global_strength,
    local_scores,
    recruit_paper,
    recruitment_weights,
    route_paper,
    route_random,
)

PROFILES = {
    "A": {"algebra": 3, "biology": -2},  # total 1
    "B": {"algebra": -1, "biology": 4, "law": 2},  # total 5
    "C": {"algebra": -4, "law": -1},  # total -5
}


def test_global_strength_shifts_negative_totals_and_applies_temperature():
    g = global_strength(PROFILES, temperature=0.5)
    # totals 1, 5, -5 -> shifted by -min+1: 7, 11, 1 -> squared: 49, 121, 1
    assert g == pytest.approx({"A": 49 / 171, "B": 121 / 171, "C": 1 / 171})


def test_global_strength_without_negative_totals_is_not_shifted():
    g = global_strength({"A": {"x": 1}, "B": {"x": 3}}, temperature=0.5)
    assert g == pytest.approx({"A": 1 / 10, "B": 9 / 10})
    assert global_strength({"A": {"x": 2}, "B": {"x": 2}}, temperature=1.0) == pytest.approx({"A": 0.5, "B": 0.5})


def test_local_scores_sum_over_question_skills():
    assert local_scores(PROFILES, ["algebra", "law"]) == {"A": 3.0, "B": 1.0, "C": -5.0}
    assert local_scores(PROFILES, ["biology"]) == {"A": -2.0, "B": 4.0}  # C has no score for biology
    assert local_scores(PROFILES, ["unknown"]) == {}


def test_weights_keep_only_positive_local_scores():
    g = global_strength(PROFILES)
    w = recruitment_weights(local_scores(PROFILES, ["algebra", "law"]), g)
    a, b = 3 * g["A"], 1 * g["B"]
    assert w == pytest.approx({"A": a / (a + b), "B": b / (a + b)})


def test_weights_shift_all_when_none_is_positive():
    g = global_strength(PROFILES)
    local = {"A": -2.0, "B": -1.0, "C": -5.0}
    w = recruitment_weights(local, g)
    raw = {"A": 4 * g["A"], "B": 5 * g["B"], "C": 1 * g["C"]}  # s - min + 1
    total = sum(raw.values())
    assert w == pytest.approx({n: v / total for n, v in raw.items()})


def test_draws_follow_the_weights_with_replacement():
    g = global_strength(PROFILES)
    rng = random.Random(0)
    draws = Counter()
    for _ in range(6000):
        picks = recruit_paper(PROFILES, ["algebra", "law"], g, 3, rng)
        assert len(picks) == 3
        draws.update(picks)
    w = recruitment_weights(local_scores(PROFILES, ["algebra", "law"]), g)
    assert set(draws) == {"A", "B"}
    assert draws["A"] / 18000 == pytest.approx(w["A"], abs=0.015)
    # with replacement: some questions get the same expert twice
    rng = random.Random(1)
    assert any(len(set(recruit_paper(PROFILES, ["algebra"], g, 3, rng))) < 3 for _ in range(50))


def test_unknown_skills_fall_back_to_uniform_random():
    g = global_strength(PROFILES)
    picks = Counter(e for s in range(300) for e in recruit_paper(PROFILES, ["nothing"], g, 3, random.Random(s)))
    assert set(picks) == {"A", "B", "C"}


def test_route_paper_is_seedable():
    skills = [["algebra", "law"], ["biology", "algebra"]] * 20  # two positive experts each
    assert route_paper(PROFILES, skills, seed=3) == route_paper(PROFILES, skills, seed=3)
    assert route_paper(PROFILES, skills, seed=3) != route_paper(PROFILES, skills, seed=4)


def test_usage_floor_replaces_rare_experts_by_frequent_ones():
    selections = [["A", "A", "B"]] * 30 + [["C", "A", "B"]]  # C: 1 of 93 draws, about 1%
    out = apply_usage_floor(selections, 0.05, random.Random(0))
    assert all("C" not in sel for sel in out)
    assert out[:30] == [list(s) for s in selections[:30]]
    assert apply_usage_floor(selections, 0.0, random.Random(0)) == [list(s) for s in selections]


def test_random_router_draws_distinct_experts():
    sel = route_random(["A", "B", "C", "D"], 50, 3, seed=0)
    assert all(len(set(s)) == 3 for s in sel)
    assert sel == route_random(["A", "B", "C", "D"], 50, 3, seed=0)


def test_deterministic_paper_routing_takes_top_weights_then_fills_by_rank():
    from skillmoe_ray.routing.recruitment import route_top_by_weight

    ranking = ["B", "A", "C"]
    # algebra+law: A (3) and B (1) positive; weights favour A; C fills the last place
    out = route_top_by_weight(PROFILES, [["algebra", "law"]], ranking, k=3)
    g = global_strength(PROFILES)
    first = "A" if 3 * g["A"] > 1 * g["B"] else "B"
    assert out[0][0] == first and sorted(out[0]) == ["A", "B", "C"]
    assert route_top_by_weight(PROFILES, [["nothing"]], ranking, k=2) == [["B", "A"]]


def test_calibrated_routing_shrinks_per_skill_accuracy_toward_overall():
    from skillmoe_ray.routing.recruitment import route_calibrated, skill_accuracy

    skills = [["law"]] * 4 + [["math"]] * 4
    correct = {"X": [True] * 4 + [False] * 4, "Y": [False] * 4 + [True] * 4, "Z": [True, False] * 4}
    counts = skill_accuracy(skills, correct)
    assert counts["X"]["law"] == (4.0, 4.0) and counts["Y"]["law"] == (0.0, 4.0)
    acc = {"X": 0.5, "Y": 0.5, "Z": 0.5}
    assert route_calibrated(counts, acc, [["law"], ["math"]], ["Z", "X", "Y"], k=1, prior_strength=4) == [["X"], ["Y"]]
    # a huge prior washes the skill evidence out: overall accuracy decides
    overall = {"X": 0.4, "Y": 0.4, "Z": 0.6}
    assert route_calibrated(counts, overall, [["law"]], ["Z", "X", "Y"], k=1, prior_strength=1e6) == [["Z"]]


def test_keyed_paper_routing_is_independent_of_the_batch():
    skills = [["algebra", "law"], ["biology", "algebra"], ["law"], ["algebra"]] * 5
    keys = [f"q{i}" for i in range(len(skills))]
    usage = {"A": 50, "B": 48, "C": 2}  # C is under the 5% floor
    whole = route_paper(PROFILES, skills, seed=1, keys=keys, usage=usage)
    parts = [route_paper(PROFILES, skills[i : i + 3], seed=1, keys=keys[i : i + 3], usage=usage)
             for i in range(0, len(skills), 3)]
    assert whole == [sel for part in parts for sel in part]
    assert all("C" not in sel for sel in whole)


def test_every_routing_strategy_of_the_config_has_a_registered_router():
    from typing import get_args

    from skillmoe_ray.config import RoutingConfig
    from skillmoe_ray.errors import ConfigError
    from skillmoe_ray.routing.routers import ROUTERS, make_router

    assert set(ROUTERS) == set(get_args(RoutingConfig.model_fields["strategy"].annotation))
    with pytest.raises(ConfigError, match="known: .*paper"):
        make_router(RoutingConfig.model_construct(strategy="nope"), None)
