"""An own task whose models answer in JSON: read as they wrote it, loud when the format does not fit,
evaluate reporting each expert, the best of them and the oracle (tests/json_task.py holds the data)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from json_task import EXPERTS, write_task

from skillmoe_ray.tasks.answers import format_number
from skillmoe_ray.config import load_config
from skillmoe_ray.errors import DataError
from skillmoe_ray.pool import pool_experts
from skillmoe_ray.runtime import Runtime
from skillmoe_ray.tasks.catalogue import Catalogue


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("json-task") / "shop"
    return folder, write_task(folder)


def _gold(folder: Path, split: str) -> list[int]:
    name = "validation" if split == "train" else "test"
    return [json.loads(line)["gold"] for line in (folder / f"{name}.jsonl").read_text().splitlines()]


def _accuracy(meant: list, gold: list) -> float:
    return sum(m == g for m, g in zip(meant, gold)) / len(gold)


def test_every_response_is_read_as_its_answer_field_says(task_dir):
    folder, meant = task_dir
    rt = Runtime.from_config(load_config(folder / "deployment.yaml"), progress=False)
    task = rt.task("shop")
    for expert in EXPERTS:
        engine = rt.engines[expert]
        for split in ("train", "test"):
            for q, value in zip(rt.questions(task, split), meant[expert][split]):
                from skillmoe_ray.engines.base import GenerationRequest

                (text,) = engine.generate([GenerationRequest.user(q.text, key=q.qid, question=q.text)], None)
                assert "</s>" not in text  # end-of-sequence tokens are not part of a response
                expected = None if value is None else format_number(value)
                assert task.extract(text) == expected, (expert, q.qid, text)


def test_evaluate_reports_each_expert_the_best_and_the_oracle_as_read_independently(task_dir, tmp_path):
    folder, meant = task_dir
    exe = Path(sys.executable).with_name("skillmoe")
    # run from elsewhere: the state folder is the deployment file's, not the working directory's
    r = subprocess.run([str(exe), "evaluate", "--config", str(folder / "deployment.yaml"), "--task", "Shop_Json",
                        "--seeds", "0", "--out", "r.json", "--quiet"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert list((folder / "state" / "profiles").rglob("shop_json.json")) and not (tmp_path / "state").exists()

    val, test = _gold(folder, "train"), _gold(folder, "test")
    expected = {e: (_accuracy(meant[e]["train"], val), _accuracy(meant[e]["test"], test)) for e in EXPERTS}
    for e in EXPERTS:
        got = report["experts"][e]
        assert (got["validation_accuracy"], got["test_accuracy"]) == pytest.approx(expected[e]), e
        no_answer = sum(m is None for m in meant[e]["test"]) / len(test)
        assert got["test_no_answer"] == pytest.approx(no_answer), e
    assert report["experts"]["truncated"]["test_no_answer"] > 0 and report["experts"]["hedger"]["test_no_answer"] > 0
    oracle = sum(any(meant[e]["test"][i] == g for e in EXPERTS) for i, g in enumerate(test)) / len(test)
    assert report["oracle_accuracy"] == pytest.approx(oracle)
    best = max(expected[e][1] for e in EXPERTS)
    assert report["best_single_expert"]["test_accuracy"] == pytest.approx(best)
    assert expected[report["best_single_expert"]["name"]][1] == best
    # the printed table says the same
    for e in EXPERTS:
        assert f"{100 * expected[e][1]:.2f}" in r.stdout
    assert f"oracle (any expert of the pool right): {100 * oracle:.2f}" in r.stdout
    assert "best single expert on test" in r.stdout and "truncated: no answer in" in r.stdout


def _variant(folder: Path, answer: str, name: str) -> Path:
    text = (folder / "deployment.yaml").read_text().replace("answer: {type: number}", f"answer: {answer}")
    path = folder / name
    path.write_text(text.replace("state_dir: state", f"state_dir: state-{path.stem}"))
    return path


def test_a_format_that_reads_nothing_fails_profiling_naming_expert_field_and_example(task_dir):
    folder, _ = task_dir
    path = _variant(folder, '{type: number, field: "Final answer", json_key: null}', "wrong-field.yaml")
    rt = Runtime.from_config(load_config(path), progress=False)
    with pytest.raises(DataError) as err:
        rt.profiles(rt.task("shop_json"))
    message = str(err.value)
    assert all(f"'{e}'" in message for e in EXPERTS) and "'Final answer'" in message and "json_key" in message
    assert '{"reasoning":' in message and "shop_json/train/" in message, message
    # the CLI says the same as an error, not a stack trace
    exe = Path(sys.executable).with_name("skillmoe")
    r = subprocess.run([str(exe), "profile", "--config", str(path), "--task", "shop", "--quiet"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "skillmoe: error:" in r.stderr and "'Final answer'" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("field", ['"answer":', "answer:", "**Answer:**"])
def test_a_field_written_as_json_writes_it_reads_the_last_number_of_its_value(task_dir, field):
    folder, meant = task_dir
    path = _variant(folder, f"{{type: number, field: '{field}', json_key: null}}", "field.yaml")
    rt = Runtime.from_config(load_config(path), progress=False)
    prof = rt.build_profiles(rt.task("shop"))
    val = _gold(folder, "train")
    for e in EXPERTS:
        assert prof.accuracy[e] == pytest.approx(_accuracy(meant[e]["train"], val)), e


def test_a_recorded_pool_knows_its_task_from_record_json_or_the_deployment(task_dir, tmp_path):
    folder, _ = task_dir
    cfg = load_config(folder / "deployment.yaml")
    assert {e.engine_args.get("task") for e in pool_experts(cfg)} == {"shop_json"}  # the one task it serves
    # serving two tasks, the folder's record.json says which one its recordings answer
    two = folder / "two.yaml"
    two.write_text((folder / "deployment.yaml").read_text() + "serving: {tasks: [MMLU_Pro, shop_json]}\n")
    (folder / "outputs" / "record.json").write_text(json.dumps({"task": "shop_json"}))
    try:
        assert {e.engine_args.get("task") for e in pool_experts(load_config(two))} == {"shop_json"}
    finally:
        (folder / "outputs" / "record.json").unlink()
    # or the deployment's pool.task does
    three = folder / "three.yaml"
    three.write_text((folder / "deployment.yaml").read_text().replace(
        "recorded_dir: outputs", "recorded_dir: outputs\n  task: Shop") + "serving: {tasks: [MMLU_Pro, shop_json]}\n")
    assert {e.engine_args.get("task") for e in pool_experts(load_config(three))} == {"Shop"}
    rt = Runtime.from_config(load_config(three), progress=False)
    assert rt.engines["tidy"].task.name == "shop_json"
    # so a question that arrives as text (as over HTTP) is found in the task's data
    from skillmoe_ray.engines.base import GenerationRequest

    q = rt.questions("shop", "test")[3]
    (text,) = rt.engines["tidy"].generate([GenerationRequest.user("prompt", question=q.text)], None)
    assert rt.task("shop").extract(text) is not None


def test_names_and_aliases_match_regardless_of_case(task_dir):
    folder, _ = task_dir
    cat = Catalogue.from_config(load_config(folder / "deployment.yaml"))
    assert cat.get("SHOP") is cat.get("shop_json") is cat.get("Shop_JSON")
