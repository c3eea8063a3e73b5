"""The scheduler on real Ray actors: its predictions hold, answers leave early, replicas come and go.

Worker actors are real; engines are simulated (a cost model on a virtual or
real clock) or the recorded pool.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import RECORDED_CONFIG, deploy
from httpclient import get, post

from skillmoe_ray.config import ExpertConfig
from skillmoe_ray.engines.base import GenerationRequest, SamplingSettings
from skillmoe_ray.scheduling.planner import CostModel

pytestmark = pytest.mark.slow


def sim_expert(name: str, size_gb: float, **args) -> ExpertConfig:
    return ExpertConfig(name=name, model=f"sim:{name}", engine="simulated", size_gb=size_gb,
                        engine_args={"out_tokens": 1, "step_fixed_s": 0.001, "step_per_seq_s": 0.0, **args})


def random_plan(rng: random.Random, names: list[str], tag: int) -> dict:
    experts = rng.sample(names, rng.randint(1, len(names)))
    plan = {}
    for j, e in enumerate(experts):
        plan[e] = [(q, j, GenerationRequest.user(f"q{tag}-{q}", key=f"GPQA/test/{q}")) for q in range(rng.randint(1, 4))]
    return plan


def test_planner_predicts_what_the_workers_do(ray_cluster):
    """Random pools, plans, device capacities, host budgets and prefetch: predicted loads and wakes are exact."""
    import asyncio

    import ray

    from skillmoe_ray.serving.actors import start_workers, stop_actors
    from skillmoe_ray.serving.scheduler import RayExecutor, Scheduler, limits_for

    rng = random.Random(11)
    for trial in range(4):
        names = [f"m{i}" for i in range(rng.randint(3, 6))]
        experts = [sim_expert(n, rng.choice([1.0, 2.0, 3.0])) for n in names]
        w = rng.randint(1, 3)
        capacity = rng.randint(1, 3)
        budget = rng.choice([None, 0.0, 2.0, 4.0])
        prefetch = rng.random() < 0.5
        workers, pg, _ = start_workers(experts, w, cpus_per_worker=0.25, capacity=capacity, host_budget_gb=budget,
                                       prefetch=prefetch)
        ex = None
        try:
            budgets = ray.get([h.budgets.remote() for h in workers])
            limits = limits_for(ray.get(workers[0].traits.remote()), budgets, prefetch)
            cost = CostModel(load_s={n: 2.0 * e.size_gb for n, e in zip(names, experts)}, default_per_prompt_s=0.5)
            ex = RayExecutor(Scheduler(workers, limits, cost))
            for step in range(5):
                if step % 2:  # two batches planned while the first is still queued on the workers
                    plans = [random_plan(rng, names, 10 * step + i) for i in range(2)]

                    async def both(ps=plans):
                        return await asyncio.gather(*[ex.scheduler.run_plan(p, SamplingSettings()) for p in ps])

                    outs = ex.call(both())
                    assert [len(o) for o in outs] == [sum(len(v) for v in p.values()) for p in plans]
                else:
                    plan = random_plan(rng, names, 10 * step)
                    assert len(ex.run(plan, SamplingSettings())) == sum(len(v) for v in plan.values())
            infos = ray.get([h.info.remote() for h in workers])
            actual = {i["wid"]: (i["loads"], i["wakes"]) for i in infos}
            setting = dict(trial=trial, workers=w, capacity=capacity, host_budget_gb=budget, prefetch=prefetch)
            assert actual == ex.scheduler.predicted_counts(), setting
        finally:
            if ex is not None:
                ex.close()
            stop_actors(workers, pg)


def test_a_question_with_resident_experts_returns_before_a_slow_one_of_the_same_batch(ray_cluster):
    """Real sleeps: one question's experts are resident, the other's must be loaded (2 s)."""
    import asyncio

    import ray

    from skillmoe_ray.serving.actors import start_aggregator, start_workers, stop_actors
    from skillmoe_ray.serving.scheduler import RayExecutor, Scheduler, Work, limits_for
    from skillmoe_ray.tasks.catalogue import Question, load_questions

    real = {"clock": "real", "time_scale": 1.0, "load_fixed_s": 2.0, "load_gbps": 1e9, "out_tokens": 1}
    experts = [sim_expert("fast", 1.0, **real), sim_expert("slow", 1.0, **real)]
    workers, pg, _ = start_workers(experts, 1, cpus_per_worker=0.25, capacity=2)
    agg, _ = start_aggregator("vote", {"GPQA": ["fast", "slow"]}, {}, None, None)
    ex = None
    try:
        budgets = ray.get([h.budgets.remote() for h in workers])
        limits = limits_for(ray.get(workers[0].traits.remote()), budgets, False)
        cost = CostModel(load_s={"fast": 2.0, "slow": 2.0}, default_per_prompt_s=0.01)
        sched = Scheduler(workers, limits, cost, {"GPQA": agg}, {"GPQA": "vote"})
        ex = RayExecutor(sched)
        warm = {"fast": [(0, 0, GenerationRequest.user("warm", key="GPQA/test/0"))]}
        ex.run(warm, SamplingSettings())  # "fast" is now resident on the worker
        qs = load_questions("GPQA", "test")[:2]

        def work(q, expert):
            question = Question("GPQA", "request", q.index, q.text)
            req = GenerationRequest.user(q.text, key=q.qid, question=q.text)
            return Work(question, [expert] * 3, req, SamplingSettings(seed=0), 0, ["fast", "slow"])

        async def race():
            t0 = time.perf_counter()
            done: dict[str, float] = {}

            async def one(name, w):
                r = await sched.solve(w)
                done[name] = time.perf_counter() - t0
                return r

            results = await asyncio.gather(one("slow", work(qs[0], "slow")), one("fast", work(qs[1], "fast")))
            return results, done

        (slow_r, fast_r), done = ex.call(race())
        # the fast one joined its resident expert at once; the slow one's load came after the fast one's answers
        assert fast_r.experts == ["fast"] * 3 and slow_r.experts == ["slow"] * 3
        assert done["fast"] < 1.0 and done["slow"] >= 2.0, done
        assert fast_r.aggregator == "vote"
    finally:
        if ex is not None:
            ex.close()
        stop_actors(workers + [agg], pg)


def _replicas(app: str, deployment: str) -> list[str]:
    import ray

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"].startswith(f"SERVE_REPLICA::{app}#{deployment}#"))


def _pool_pids(url: str) -> tuple[dict, dict]:
    status, pool = get(f"{url}/v1/pool")
    assert status == 200, pool
    workers = {w["wid"]: (w["pid"], w["loads"]) for w in pool["workers"]}
    aggs = {t: (a["pid"], a["loads"]) for t, a in pool["aggregators"].items()}
    return workers, aggs


def test_losing_an_ingress_replica_under_load_keeps_the_pool(served_recorded, state_dir):
    """2 ingress replicas, 500 requests from 32 clients, one replica killed mid-way."""
    import ray
    from ray import serve

    from skillmoe_ray.tasks.catalogue import load_questions

    deploy(RECORDED_CONFIG, "two", state_dir,
           ingress_replicas=2, workers=2, cpus_per_worker=0.25)
    url = served_recorded + "/two"
    try:
        assert len(_replicas("two", "SkillMoEIngress")) == 2
        texts = [q.text for q in load_questions("MMLU_Pro", "test")]
        # warm: every recording loaded on every worker, so load counts can only change if a worker restarts
        with ThreadPoolExecutor(32) as pool:
            warm = list(pool.map(lambda t: post(f"{url}/v1/solve", {"question": t}, timeout=60)[0], texts[:200]))
        assert warm == [200] * 200
        before = _pool_pids(url)

        results: list[tuple[int, float]] = []
        killed_at: list[float] = []

        def client(i: int) -> tuple[int, float]:
            t0 = time.perf_counter()
            try:
                status, _ = post(f"{url}/v1/solve", {"question": texts[200 + i]}, timeout=60)
            except Exception:  # noqa: BLE001 - a dropped connection counts as a failed request
                status = 599
            return status, time.perf_counter() - t0

        def killer() -> None:
            while len(results) < 150:
                time.sleep(0.01)
            victim = _replicas("two", "SkillMoEIngress")[0]
            ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=False)
            killed_at.append(time.perf_counter())

        with ThreadPoolExecutor(33) as pool:
            k = pool.submit(killer)
            for r in pool.map(client, range(500)):
                results.append(r)
            k.result(timeout=120)
        statuses = [s for s, _ in results]
        assert len(statuses) == 500 and max(t for _, t in results) < 60  # nothing hung
        failed = [s for s in statuses if s != 200]
        assert all(s >= 500 for s in failed), failed  # the killed replica's requests fail as 5xx, nothing else
        assert len(failed) <= 32, f"{len(failed)} failures: more than the requests one replica can hold"
        # every worker and aggregator is the same process, with the same models loaded
        deadline = time.time() + 60
        while time.time() < deadline and len(_replicas("two", "SkillMoEIngress")) < 2:
            time.sleep(0.5)
        after = _pool_pids(url)
        # the same worker and aggregator processes (a restarted one would count its loads from 0 again);
        # continuous scheduling may have brought an expert to a second worker meanwhile
        assert {w: p for w, (p, _) in after[0].items()} == {w: p for w, (p, _) in before[0].items()}
        assert all(after[0][w][1] >= before[0][w][1] for w in before[0]) and after[1] == before[1]
        with ThreadPoolExecutor(16) as pool:
            later = list(pool.map(lambda t: post(f"{url}/v1/solve", {"question": t}, timeout=60)[0], texts[700:764]))
        assert later == [200] * 64
        print(f"\n500 requests, one of 2 ingress replicas killed after 150: {len(failed)} failed (5xx), "
              f"{statuses.count(200)} answered")
    finally:
        serve.delete("two")


def test_a_restarted_scheduler_attaches_to_the_same_workers(served_recorded, state_dir):
    import ray
    from ray import serve

    from skillmoe_ray.tasks.catalogue import load_questions

    deploy(RECORDED_CONFIG, "again", state_dir, workers=1, cpus_per_worker=0.25)
    url = served_recorded + "/again"
    try:
        texts = [q.text for q in load_questions("MMLU_Pro", "test")[:40]]
        assert all(post(f"{url}/v1/solve", {"question": t})[0] == 200 for t in texts[:20])
        before = _pool_pids(url)
        [victim] = _replicas("again", "SkillMoEScheduler")
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=False)
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                status, _ = post(f"{url}/v1/solve", {"question": texts[20]}, timeout=30)
                if status == 200:
                    break
            except Exception:  # noqa: BLE001 - the proxy may drop connections while the replica restarts
                pass
            time.sleep(0.5)
        assert _replicas("again", "SkillMoEScheduler") != [victim]
        assert all(post(f"{url}/v1/solve", {"question": t})[0] == 200 for t in texts[21:])
        assert _pool_pids(url) == before  # the same worker and aggregator processes, nothing reloaded
    finally:
        serve.delete("again")
    # deleting the application on purpose takes its pool with it
    deadline = time.time() + 30
    while time.time() < deadline and any(":again:" in a["name"] for a in ray.util.list_named_actors(True)):
        time.sleep(0.5)
    assert not any(":again:" in a["name"] for a in ray.util.list_named_actors(True))


@pytest.fixture(scope="module")
def streaming_pool(ray_cluster):
    """One worker of quick simulated experts, and an LLM aggregator (simulated) that writes for about 1 s."""
    import ray

    from skillmoe_ray.serving.actors import start_aggregator, start_workers, stop_actors
    from skillmoe_ray.serving.scheduler import RayExecutor, Scheduler, limits_for

    experts = [sim_expert(n, 1.0, load_fixed_s=0.0) for n in ("e1", "e2")]
    writer = sim_expert("writer", 1.0, clock="real", out_tokens=20, step_fixed_s=0.05, load_fixed_s=0.0)
    workers, pg, _ = start_workers(experts, 1, cpus_per_worker=0.25, capacity=2)
    started: list = []

    def new_aggregator():
        agg, _ = start_aggregator("llm", {"GPQA": ["e1", "e2"]}, {}, writer, None)
        started.append(agg)
        return agg

    budgets = ray.get([h.budgets.remote() for h in workers])
    limits = limits_for(ray.get(workers[0].traits.remote()), budgets, False)
    sched = Scheduler(workers, limits, CostModel(load_s={"e1": 0.0, "e2": 0.0}, default_per_prompt_s=0.01),
                      {"GPQA": new_aggregator()}, {"GPQA": "writer"}, aggregate_timeout_s=20)
    ex = RayExecutor(sched)
    yield ex, new_aggregator
    ex.close()
    stop_actors(workers + started, pg)


def _work(i: int):
    from skillmoe_ray.serving.scheduler import Work
    from skillmoe_ray.tasks.catalogue import Question, load_questions

    q = load_questions("GPQA", "test")[i]
    question = Question("GPQA", "request", i, q.text)
    req = GenerationRequest.user(q.text, key=question.qid, question=q.text)
    return Work(question, ["e1", "e2", "e1"], req, SamplingSettings(seed=0), 0, ["e1", "e2"])


async def _events(sched, work, stop_after_deltas: int | None = None) -> list[tuple[float, dict]]:
    t0 = time.perf_counter()
    out = []
    stream = sched.solve_stream(work)
    async for event in stream:
        out.append((time.perf_counter() - t0, event))
        if stop_after_deltas is not None and sum("delta" in e for _, e in out) >= stop_after_deltas:
            await stream.aclose()
            break
    return out


def test_a_streamed_question_reports_its_stages_then_the_aggregators_text_as_it_is_written(streaming_pool):
    ex, _ = streaming_pool
    sched = ex.scheduler
    events = ex.call(_events(sched, _work(0)))
    kinds = [next(iter(e)) for _, e in events]
    stages = [e["stage"] if "stage" in e else k for (_, e), k in zip(events, kinds)]
    assert stages[0] == "queued" and stages[-1] == "result"
    assert [e for _, e in events if e.get("stage") == "experts"][-1] == {"stage": "experts", "done": 3, "of": 3}
    first_delta = kinds.index("delta")
    assert stages[first_delta - 1] == "aggregating" and set(kinds[first_delta:-1]) == {"delta"}
    deltas = [(t, e["delta"]) for t, e in events if "delta" in e]
    result = events[-1][1]["result"]
    assert len(deltas) > 3 and "".join(d for _, d in deltas) == result.response
    # the first words arrive well before the aggregator has written the last (~1 s of modelled writing)
    assert deltas[-1][0] - deltas[0][0] > 0.5, deltas
    # the same question, not streamed: the same answer, text and usage
    whole = ex.call(sched.solve(_work(0)))
    assert (whole.answer, whole.response, whole.aggregator, whole.usage) == \
        (result.answer, result.response, result.aggregator, result.usage)
    assert result.aggregator == "writer" and result.usage.completion_tokens > 0
    assert sched.pending == 0


def test_closing_a_stream_frees_its_place_and_stops_the_aggregator(streaming_pool):
    ex, _ = streaming_pool
    sched = ex.scheduler
    events = ex.call(_events(sched, _work(1), stop_after_deltas=1))
    assert "delta" in events[-1][1] and sched.pending == 0
    # the aggregator stopped writing the abandoned answer: the next one starts at once
    t0 = time.perf_counter()
    events = ex.call(_events(sched, _work(2)))
    first = next(t for t, e in events if "delta" in e)
    assert first < 0.6, events
    assert "result" in events[-1][1] and time.perf_counter() - t0 < 3.0


def test_an_aggregator_lost_mid_stream_falls_back_to_a_vote(streaming_pool):
    """Runs last on this pool: the aggregator is killed part-way through its answer."""
    import asyncio

    import ray

    ex, new_aggregator = streaming_pool
    sched = ex.scheduler
    agg = sched.aggregation.actors["GPQA"]

    async def kill_mid_way():
        out = []
        async for event in sched.solve_stream(_work(3)):
            out.append(event)
            if sum("delta" in e for e in out) == 2:
                ray.kill(agg, no_restart=True)
        return out

    events = ex.call(asyncio.wait_for(kill_mid_way(), timeout=30))
    fallback = [e for e in events if e.get("stage") == "fallback"]
    result = events[-1]["result"]
    assert fallback and "aggregator writer failed" in fallback[0]["why"]
    assert result.aggregator == "vote (fallback: aggregator writer failed)" and result.answer in "ABCD"
    assert sum("delta" in e for e in events) >= 2 and sched.pending == 0
    sched.aggregation.actors["GPQA"] = new_aggregator()


def test_a_generation_five_times_slower_than_predicted_keeps_its_worker(ray_cluster):
    """Deadlines come from measured times; one that passes makes the scheduler look at the worker, and a
    worker alive and working is given more time, however slow, instead of being declared lost."""
    import ray

    from skillmoe_ray.scheduling.planner import CostModel
    from skillmoe_ray.serving.actors import start_workers, stop_actors
    from skillmoe_ray.serving.scheduler import RayExecutor, Scheduler, limits_for

    # 400 decode steps of 10 ms on a real clock: 4 s a job
    experts = [sim_expert("slow", 1.0, clock="real", load_fixed_s=0.0, out_tokens=400, step_fixed_s=0.01)]
    workers, pg, _ = start_workers(experts, 1, cpus_per_worker=0.25)
    ex = None
    try:
        budgets = ray.get([h.budgets.remote() for h in workers])
        limits = limits_for(ray.get(workers[0].traits.remote()), budgets, False)
        sched = Scheduler(workers, limits, CostModel(load_s={"slow": 0.0}, default_per_prompt_s=0.01),
                          job_timeout_factor=1.0, job_timeout_min_s=0.5, probe_interval_s=0.2)
        # what it measured before: 400 steps in 0.16 s; this job's prediction is 0.16 s, its deadline 0.66 s
        sched.times.observe("slow", {"bring": "resident", "generate_s": 0.16}, [400])
        predicted = sched.times.predict("slow", "resident", 400)
        ex = RayExecutor(sched)
        t0 = time.perf_counter()
        texts = ex.run({"slow": [(0, 0, GenerationRequest.user("q", key="GPQA/test/0"))]},
                       SamplingSettings(max_tokens=400))
        took = time.perf_counter() - t0
        assert len(texts) == 1 and took >= 5 * (0.5 + predicted)  # well past its deadline
        assert sched.pool.slow_jobs >= 1 and sched.pool.views[0].alive
        assert not [e for e in sched.events if e["event"] == "lost"], sched.events
        # and it learned: the next deadline is counted from what this job took
        assert sched.times.experts["slow"].step_s > 0.16 / 400
    finally:
        if ex is not None:
            ex.close()
        stop_actors(workers, pg)


def test_job_times_are_learned_per_expert_and_generous_before_a_measurement():
    from skillmoe_ray.scheduling.timing import UNMEASURED_STEP_S, JobTimes

    times = JobTimes({"a": 30.0}, {"a": 3.0})
    assert times.predict("a", "load", 4096) == pytest.approx(30.0 + 4096 * UNMEASURED_STEP_S)
    assert times.predict("b", "resident", 100) == pytest.approx(100 * UNMEASURED_STEP_S)
    times.observe("a", {"bring": "load", "load_s": 12.0, "generate_s": 20.0}, [100, 400, 250])
    assert times.measured("a") and not times.measured("b")
    assert times.predict("a", "load", 1000) == pytest.approx(12.0 + 1000 * 20.0 / 400)  # the longest answer paces it
    assert times.predict("a", "wake", 0) == pytest.approx(3.0) and times.predict("a", "resident", 0) == 0.0
    times.observe("a", {"bring": "wake", "load_s": 1.0, "generate_s": 10.0}, [400])
    assert times.bring_s("a", "wake") == 1.0 and times.experts["a"].step_s < 20.0 / 400
