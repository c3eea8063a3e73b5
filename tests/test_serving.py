"""The served system on a real private Ray cluster, with the real recorded pool."""

import json
import random
from concurrent.futures import ThreadPoolExecutor

import pytest
from httpclient import get, post

from skillmoe_ray.pipeline import Pipeline
from skillmoe_ray.scheduling.planner import CostModel
from skillmoe_ray.aggregation.aggregators import VoteAggregator
from skillmoe_ray.routing.routers import make_router
from skillmoe_ray.tasks.catalogue import Question, get_task


@pytest.mark.slow
def test_64_concurrent_requests_match_offline_evaluation(served_recorded, recorded_runtime, mmlu_profiles,
                                                         recorded_cfg):
    task = get_task("MMLU_Pro")
    test_qs = recorded_runtime.questions(task, "test")
    sample = random.Random(7).sample(test_qs, 64)
    with ThreadPoolExecutor(64) as pool:
        replies = list(pool.map(lambda q: post(f"{served_recorded}/v1/solve", {"question": q.text, "task": "MMLU_Pro"}),
                                sample))
    assert [s for s, _ in replies] == [200] * 64
    for _, r in replies:
        assert set(r["timings"]) >= {"skills", "route", "experts", "aggregate", "total", "request"}
        assert r["experts"] and r["skills"] and r["aggregator"] == "vote"
    served_acc = sum(task.is_correct(r["answer"], q.gold) for q, (_, r) in zip(sample, replies)) / 64

    # the same questions through the offline pipeline, as `skillmoe evaluate` runs it
    offline_qs = [Question("MMLU_Pro", "request", i, q.text) for i, q in enumerate(sample)]
    pipe = Pipeline(task, recorded_runtime.skill_stage(mmlu_profiles), make_router(recorded_cfg.routing, mmlu_profiles),
                    VoteAggregator(mmlu_profiles.ranking()), recorded_runtime.executor)
    offline = pipe.solve(offline_qs, seed=recorded_cfg.routing.seed)
    assert [r["answer"] for _, r in replies] == [s.answer for s in offline]
    assert [r["experts"] for _, r in replies] == [s.experts for s in offline]
    assert served_acc == sum(task.is_correct(s.answer, q.gold) for s, q in zip(offline, sample)) / 64
    # the scheduler had them all at once: the burst's questions were admitted side by side, not one by one
    assert sum(r["timings"]["queue"] < 5.0 for _, r in replies) == 64


@pytest.mark.slow
def test_openai_chat_endpoint_pool_and_health(served_recorded, recorded_runtime):
    q = recorded_runtime.questions(get_task("MMLU_Pro"), "test")[3]
    status, r = post(f"{served_recorded}/v1/chat/completions",
                     {"model": "skillmoe", "messages": [{"role": "user", "content": q.text}], "temperature": 0})
    assert status == 200 and r["object"] == "chat.completion"
    assert r["choices"][0]["message"]["role"] == "assistant" and r["choices"][0]["message"]["content"]
    assert r["skillmoe"]["task"] == "MMLU_Pro"
    status, pool = get(f"{served_recorded}/v1/pool")
    assert status == 200 and len(pool["experts"]) == 8 and pool["served"] >= 1
    assert all(set(e) >= {"name", "resident_on_workers", "usage"} for e in pool["experts"])
    status, health = get(f"{served_recorded}/healthz")
    assert status == 200 and health["status"] == "ok" and health["workers"] >= 1


@pytest.mark.slow
def test_bad_requests_get_4xx_and_do_not_hurt_others(served_recorded, recorded_runtime):
    good = recorded_runtime.questions(get_task("MMLU_Pro"), "test")[11].text
    bodies = [{"question": "  "}, {"question": 5}, {"question": good, "task": "NOPE"}, {"question": good, "task": "GPQA"},
              {"question": "What is the airspeed of an unladen swallow?"}, {"question": good}]
    with ThreadPoolExecutor(len(bodies)) as pool:
        replies = list(pool.map(lambda b: post(f"{served_recorded}/v1/solve", b), bodies))
    statuses = [s for s, _ in replies]
    assert statuses == [422, 422, 400, 400, 422, 200]
    for s, r in replies[:-1]:
        assert r["error"]["message"] and "Traceback" not in r["error"]["message"]
    assert "no recording" in replies[4][1]["error"]["message"]
    status, r = post(f"{served_recorded}/v1/solve", b"{not json", raw=True)
    assert status == 400 and "not valid JSON" in r["error"]["message"]
    status, r = post(f"{served_recorded}/v1/solve", b'{"question": "\xff\xfe"}', raw=True)
    assert status == 400 and "UTF-8" in r["error"]["message"]
    status, r = post(f"{served_recorded}/v1/solve", json.dumps({"question": good}).encode(), raw=True,
                     headers={"content-type": "text/plain"})
    assert status == 415 and "application/json" in r["error"]["message"]
    status, r = post(f"{served_recorded}/v1/solve", {"question": "x" * 30_000})
    assert status == 413
    assert post(f"{served_recorded}/v1/solve", {"question": good})[0] == 200  # still serving


def test_workers_own_their_logical_gpus_and_follow_the_plan(ray_cluster, recorded_runtime):
    import ray

    from skillmoe_ray.engines.base import GenerationRequest, SamplingSettings
    from skillmoe_ray.execution import group_by_expert
    from skillmoe_ray.serving.actors import start_workers, stop_actors
    from skillmoe_ray.serving.scheduler import RayExecutor, Scheduler, limits_for

    workers, pg, _ = start_workers(recorded_runtime.experts, 2, gpus_per_worker=1, cpus_per_worker=0.5)
    ex = None
    try:
        infos = ray.get([w.info.remote() for w in workers])
        assert sorted(i["cuda_visible_devices"] for i in infos) == ["0", "1"]
        # a plan where loads are expensive: the planner splits experts across both workers
        budgets = ray.get([h.budgets.remote() for h in workers])
        limits = limits_for(ray.get(workers[0].traits.remote()), budgets, False)
        ex = RayExecutor(Scheduler(workers, limits, CostModel(default_load_s=5.0, default_per_prompt_s=0.1)))
        names = recorded_runtime.expert_names[:4]
        qs = recorded_runtime.questions(get_task("MMLU_Pro"), "test")[:6]
        reqs = [GenerationRequest.user("p", key=q.qid) for q in qs]
        texts = ex.run(group_by_expert([names] * len(qs), reqs), SamplingSettings())
        assert len(texts) == 24 and all(isinstance(t, str) for t in texts.values())
        planned = ex.last_assignment.jobs
        assert all(len(v) == 2 for v in planned.values())
        infos = ray.get([w.info.remote() for w in workers])
        assert {i["wid"]: set(i["usage"]) for i in infos} == {w: set(e) for w, e in planned.items()}
        # and they ran it as predicted: each worker loaded exactly what the planner said it would
        assert {i["wid"]: (i["loads"], i["wakes"]) for i in infos} == ex.scheduler.predicted_counts()
    finally:
        if ex is not None:
            ex.close()
        stop_actors(workers, pg)
