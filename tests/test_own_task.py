"""Bring your own task: examples/arithmetic end to end.

A JSONL task with a numeric answer, defined in a task file; its recorded pool made with
`skillmoe record` on the real CPU pool (the four packaged models on vLLM CPU); then
`skillmoe profile`, `skillmoe evaluate` and `skillmoe serve` on the recordings, as the
example's README runs them.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import ServeProcess, free_port
from httpclient import get, post

from skillmoe_ray.config import load_config
from skillmoe_ray.tasks.catalogue import Catalogue

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "arithmetic"
RECORDED = EXAMPLE / "recorded.yaml"
EXPERTS = ["gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "smollm2-135m"]


def skillmoe(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("skillmoe")
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The commands run here, on a copy of the example: its profiles go to the .skillmoe folder beside the
    copy's deployment file (state_dir is relative to it), shared by the tests of this module."""
    work = tmp_path_factory.mktemp("own-task")
    shutil.copytree(EXAMPLE, work / "example", ignore=shutil.ignore_patterns(".skillmoe"))
    return work


def test_the_example_data_is_what_make_data_computes():
    spec = importlib.util.spec_from_file_location("make_data", EXAMPLE / "make_data.py")
    make_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_data)
    make_data.check()
    cat = Catalogue.from_config(load_config(RECORDED))
    task = cat.get("arithmetic")
    assert task.answer_format == "number" and cat.get("arith") == task
    got = [(q.category, q.text, q.gold) for split in ("train", "test") for q in cat.questions(task, split)]
    assert got == [(c, q, str(g)) for c, q, g in make_data.PROBLEMS]
    assert len(cat.questions(task, "train")) == 40 and len(cat.questions(task, "test")) == 20


def test_the_recordings_were_made_by_skillmoe_record_with_the_example_settings():
    """Every expert answered all 60 questions, with the prompt and sampling of record-cpu.yaml."""
    from skillmoe_ray.runtime import Runtime

    rt = Runtime.from_config(load_config(EXAMPLE / "record-cpu.yaml"), progress=False)
    task = rt.task("arithmetic")
    folder = EXAMPLE / "recorded" / "arithmetic"
    manifest = json.loads((folder / "record.json").read_text())
    assert manifest["task_definition"] == task.digest() and manifest["instruction"] == task.instruction()
    assert manifest["sampling"]["max_tokens"] == rt.cfg.generation.max_tokens
    assert sorted(manifest["experts"]) == EXPERTS == sorted(e.name for e in rt.experts)
    assert sorted(p.name.removesuffix(".jsonl.gz") for p in folder.glob("*.jsonl.gz")) == EXPERTS
    assert not list(folder.glob("*.partial"))
    for name in EXPERTS:
        with gzip.open(folder / f"{name}.jsonl.gz", "rt", encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh]
        assert sorted((r["split"], r["index"]) for r in rows) == \
            [("test", i) for i in range(20)] + [("train", i) for i in range(40)]
        assert all(r["pred"] == task.extract(r["response"]) for r in rows)


@pytest.mark.slow
def test_profile_and_evaluate_the_example(workdir):
    config = workdir / "example" / "recorded.yaml"
    r = skillmoe("profile", "--config", str(config), "--task", "arithmetic", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert "validation accuracy" in r.stdout and all(e in r.stdout for e in EXPERTS)
    profiles = list((workdir / "example" / ".skillmoe" / "profiles").rglob("arithmetic.json"))
    assert len(profiles) == 1 and not (workdir / ".skillmoe").exists()
    meta = json.loads(profiles[0].read_text())["meta"]
    assert meta["dataset"] == "arithmetic/train" and meta["n_questions"] == 40 and meta["task"]["definition"]

    r = skillmoe("evaluate", "--config", str(config), "--task", "arith", "--seeds", "0,1", "--out", "r.json",
                 "--quiet", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert "arithmetic test, 20 questions" in r.stdout and "skillmoe_paper" in r.stdout
    report = json.loads((workdir / "r.json").read_text())
    methods = report["methods"]
    assert report["task"] == "arithmetic" and sorted(report["pool"]) == EXPERTS
    assert {"single_best", "fixed_top3_vote", "all_vote", "skillmoe_paper"} <= set(methods)
    assert all(0 <= m["accuracy_mean"] <= 1 for m in methods.values())
    assert methods["single_best"]["accuracy_mean"] > 0  # the real models get some right
    experts = report["experts"]
    assert sorted(experts) == EXPERTS and report["oracle_accuracy"] >= max(e["test_accuracy"] for e in experts.values())
    assert report["best_single_expert"]["test_accuracy"] == max(e["test_accuracy"] for e in experts.values())
    assert "oracle (any expert of the pool right)" in r.stdout
    (workdir / "evaluate.json").write_text(json.dumps(report))


def _health(url: str) -> int:
    try:
        return get(f"{url}/healthz")[0]
    except Exception:  # noqa: BLE001 - not listening yet
        return 0


@pytest.mark.slow
def test_serve_the_example_over_http(workdir):
    # profiles from the test above, if it ran
    server = ServeProcess(workdir / "example" / "recorded.yaml", free_port(), cwd=workdir)
    url = server.url
    try:
        deadline = time.time() + 300
        while time.time() < deadline and server.proc.poll() is None and _health(url) != 200:
            time.sleep(0.5)
        assert _health(url) == 200, server.output[-3000:]

        cat = Catalogue.from_config(load_config(RECORDED))
        task = cat.get("arithmetic")
        questions = cat.questions(task, "test")
        with ThreadPoolExecutor(20) as pool:
            replies = list(pool.map(lambda q: post(f"{url}/v1/solve", {"question": q.text}), questions))
        assert [s for s, _ in replies] == [200] * 20, replies
        for _, r in replies:
            assert r["task"] == "arithmetic" and r["aggregator"] == "vote" and len(r["experts"]) == 3
            assert set(r["experts"]) <= set(EXPERTS) and r["skills"]
        served = sum(task.is_correct(r["answer"], q.gold) for q, (_, r) in zip(questions, replies)) / 20
        report_path = workdir / "evaluate.json"
        if report_path.is_file():  # the server answers what `skillmoe evaluate` answered (same seed, pool)
            report = json.loads(report_path.read_text())
            assert served == report["methods"]["skillmoe_paper"]["per_seed"][0]

        # the OpenAI endpoint with the task's alias; a question the recordings do not hold is a 422
        status, chat = post(f"{url}/v1/chat/completions", {"model": "skillmoe", "task": "arith", "messages": [
            {"role": "user", "content": questions[0].text}]})
        assert status == 200 and chat["skillmoe"]["answer"] == replies[0][1]["answer"]
        status, body = post(f"{url}/v1/solve", {"question": "What is 2 + 2?"})
        assert status == 422 and "60 arithmetic questions" in body["error"]["message"]
        status, body = post(f"{url}/v1/solve", {"question": questions[0].text, "task": "GPQA"})
        assert status == 400 and "not served here" in body["error"]["message"]
    finally:
        assert server.stop() == 0
    assert "skillmoe: serving" in server.output and "Traceback" not in server.output, server.output[-3000:]
