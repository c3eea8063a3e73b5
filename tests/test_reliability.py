"""Faults, overload, deadlines and access, against the real server on simulated experts.

Simulated experts sleep real (short) time per batch, so a batch is in flight
long enough to kill a worker or the aggregator under it.
"""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from conftest import deploy
from httpclient import get, post

pytestmark = pytest.mark.slow


def sim_config(path, name, **serving):
    experts = [
        {"name": f"sim{i}", "engine": "simulated", "model": "sim", "size_gb": 1,
         "engine_args": {"accuracy": acc, "clock": "real", "time_scale": 1.0, "load_fixed_s": 0.0,
                         "load_gbps": 1000.0, "step_fixed_s": step, "step_per_seq_s": 0.0, "out_tokens": 1}}
        for i, (acc, step) in enumerate([(0.8, 0.6), (0.6, 0.6), (0.5, 0.6)])
    ]
    cfg = {"name": name, "pool": {"experts": experts}, "skills": {"extractor": "embedding"},
           "routing": {"strategy": "fixed", "k": 3},
           "serving": {"workers": 2, "cpus_per_worker": 0.5, "tasks": ["GPQA"], "batch_window_s": 0.05, **serving}}
    path.write_text(yaml.safe_dump(cfg))
    return path




@pytest.fixture(scope="module")
def fault_app(served_recorded, state_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    (d / "key").write_text("s3cret-key\n")
    cfg = sim_config(d / "faults.yaml", "faults", api_key_file=str(d / "key"))
    deploy(cfg, "faults", state_dir)
    yield served_recorded + "/faults"
    from ray import serve

    serve.delete("faults")


@pytest.fixture(scope="module")
def tight_app(served_recorded, state_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("tight")
    cfg = sim_config(d / "tight.yaml", "tight", max_pending=3, request_timeout_s=1.0, max_batch_size=1)
    deploy(cfg, "tight", state_dir)
    yield served_recorded + "/tight"
    from ray import serve

    serve.delete("tight")


AUTH = {"authorization": "Bearer s3cret-key"}


def gpqa_questions(n):
    from skillmoe_ray.tasks.catalogue import load_questions

    return [q.text for q in load_questions("GPQA", "test")[:n]]


def test_api_key_guards_everything_but_health(fault_app):
    q = gpqa_questions(1)[0]
    assert post(f"{fault_app}/v1/solve", {"question": q})[0] == 401
    status, r = post(f"{fault_app}/v1/solve", {"question": q}, headers={"authorization": "Bearer wrong"})
    assert status == 401 and "s3cret" not in json.dumps(r)
    assert post(f"{fault_app}/v1/solve", {"question": q}, headers=AUTH)[0] == 200
    assert get(f"{fault_app}/healthz")[0] == 200
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{fault_app}/v1/pool", timeout=30)
    assert e.value.code == 401


def test_api_key_never_reaches_the_logs(fault_app):
    import ray

    post(f"{fault_app}/v1/solve", {"question": gpqa_questions(1)[0]}, headers={"authorization": "Bearer s3cret-key"})
    post(f"{fault_app}/v1/solve", {"question": gpqa_questions(1)[0]}, headers={"authorization": "Bearer guess"})
    from pathlib import Path

    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    offenders = [str(p) for p in logs.rglob("*") if p.is_file() and p.stat().st_size < 50_000_000
                 and b"s3cret-key" in p.read_bytes()]
    assert offenders == []


def test_killed_worker_mid_batch_loses_no_request(fault_app):
    import os
    import signal

    qs = gpqa_questions(8)
    status, pool = get(f"{fault_app}/v1/pool", AUTH)
    victim_pid = pool["workers"][0]["pid"]
    with ThreadPoolExecutor(8) as ex:
        futures = [ex.submit(post, f"{fault_app}/v1/solve", {"question": q}, AUTH) for q in qs]
        time.sleep(0.4)  # the batch is in the experts' hands now
        os.kill(victim_pid, signal.SIGKILL)
        replies = [f.result() for f in futures]
    assert [s for s, _ in replies] == [200] * 8
    assert all(r["answer"] in "ABCD" and r["aggregator"] == "vote" for _, r in replies)
    status, pool = get(f"{fault_app}/v1/pool", AUTH)
    assert victim_pid not in [w["pid"] for w in pool["workers"]]  # Ray restarted it


def test_overload_gets_503_with_retry_after_and_deadline_504(tight_app):
    qs = gpqa_questions(12)
    import urllib.error
    import urllib.request

    def call(q):
        req = urllib.request.Request(f"{tight_app}/v1/solve", data=json.dumps({"question": q}).encode(),
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.headers, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, e.headers, json.loads(e.read())

    with ThreadPoolExecutor(12) as ex:
        replies = list(ex.map(call, qs))
    codes = [c for c, _, _ in replies]
    assert 503 in codes and 504 in codes and set(codes) <= {200, 503, 504}
    for c, headers, body in replies:
        if c == 503:
            assert headers.get("Retry-After") == "1" and "capacity" in body["error"]["message"]
        if c == 504:
            assert "no answer within 1 s" in body["error"]["message"]


def test_aggregator_failure_falls_back_to_a_vote(fault_app):
    """Runs last against this deployment: the aggregator is killed for good."""
    import ray

    status, pool = get(f"{fault_app}/v1/pool", AUTH)
    agg = pool["aggregators"]["GPQA"]
    ray.kill(ray.get_actor(agg["actor_name"], namespace=agg["namespace"]), no_restart=True)
    status, r = post(f"{fault_app}/v1/solve", {"question": gpqa_questions(3)[2]}, headers=AUTH)
    assert status == 200 and r["answer"] in "ABCD"
    assert r["aggregator"].startswith("vote (fallback: aggregator")


def test_model_that_fails_to_load_is_marked_unhealthy_and_avoided(served_recorded, state_dir, tmp_path):
    """A recording vanishes and its worker restarts: the expert is out of service, requests still answered."""
    import os
    import shutil
    import signal

    from ray import serve

    from skillmoe_ray.engines.recorded import builtin_recorded_dir
    from skillmoe_ray.tasks.catalogue import load_questions

    pool = tmp_path / "mmlu_pro"
    pool.mkdir()
    for f in builtin_recorded_dir().glob("*.jsonl.gz"):
        shutil.copy(f, pool)
    cfg_path = tmp_path / "sick.yaml"
    cfg_path.write_text(yaml.safe_dump({"name": "sick", "pool": {"recorded_dir": str(pool)},
                                        "routing": {"strategy": "fixed", "k": 3},
                                        "serving": {"workers": 1, "cpus_per_worker": 0.5}}))
    deploy(cfg_path, "sick", state_dir)
    url = served_recorded + "/sick"
    try:
        status, pool_view = get(f"{url}/v1/pool")
        top = [e for e in pool_view["experts"]]
        # the best-ranked expert's weights vanish, then its worker dies and comes back without them
        ranking_first = post(f"{url}/v1/solve", {"question": load_questions("MMLU_Pro", "test")[0].text})[1]["experts"][0]
        (pool / f"{ranking_first}.jsonl.gz").unlink()
        os.kill(pool_view["workers"][0]["pid"], signal.SIGKILL)
        qs = [q.text for q in load_questions("MMLU_Pro", "test")[1:6]]
        replies = [post(f"{url}/v1/solve", {"question": q}) for q in qs]
        assert [s for s, _ in replies] == [200] * 5
        assert all(ranking_first not in r["experts"] and len(r["experts"]) == 3 for _, r in replies)
        status, pool_view = get(f"{url}/v1/pool")
        sick = next(e for e in pool_view["experts"] if e["name"] == ranking_first)
        assert sick["healthy"] is False and "load failed" in sick["unhealthy_reason"]
        assert all(e["healthy"] for e in pool_view["experts"] if e["name"] != ranking_first)
        assert len(top) == 8
    finally:
        serve.delete("sick")
