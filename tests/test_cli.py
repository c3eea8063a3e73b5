"""The CLI end to end on the real recorded pool, through the installed console script."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from skillmoe_ray.engines.recorded import builtin_recorded_dir

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "deployments" / "recorded-mmlu-pro.yaml"


def skillmoe(*args, cwd):
    exe = shutil.which("skillmoe", path=str(Path(sys.executable).parent)) or "skillmoe"
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_evaluate_prints_the_table_and_writes_json(tmp_path):
    r = skillmoe("evaluate", "--config", str(CONFIG), "--task", "MMLU_Pro", "--seeds", "0,1,2", "--out",
                 "results.json", "--quiet", "--state-dir", ".skillmoe", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "fixed_top5_vote" in r.stdout and "calls/question" in r.stdout
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["task"] == "MMLU_Pro" and report["n_questions"] == 2100
    methods = report["methods"]
    expected = {"single_best", "random3_vote", "all_vote", "skillmoe_paper"} | {f"fixed_top{k}_vote" for k in range(1, 9)}
    assert expected <= set(methods)
    for m in methods.values():
        assert set(m) == {"accuracy_mean", "accuracy_std", "per_seed", "calls_per_question"}
        assert len(m["per_seed"]) == 3 and 0 < m["accuracy_mean"] < 1
    # deterministic methods give the same answer for every seed; the paper's recruitment samples
    assert methods["fixed_top5_vote"]["accuracy_std"] == 0
    assert methods["skillmoe_paper"]["accuracy_std"] > 0
    assert methods["skillmoe_paper"]["calls_per_question"] == 3
    # sanity of the recorded pool: top-3..5 votes beat the single best model, which beats random trios
    fixed = {k: methods[f"fixed_top{k}_vote"]["accuracy_mean"] for k in range(1, 9)}
    assert fixed[5] > fixed[3] > fixed[1] > methods["random3_vote"]["accuracy_mean"]
    assert methods["cascade_top5_vote"]["accuracy_mean"] == fixed[5]
    assert methods["cascade_top5_vote"]["calls_per_question"] < 4.5
    assert (tmp_path / ".skillmoe" / "profiles").is_dir()  # --state-dir, relative to the working directory
    # each expert alone, the best of them and the oracle
    experts = report["experts"]
    assert sorted(experts) == sorted(report["pool"]) and len(experts) == 8
    best = max(e["test_accuracy"] for e in experts.values())
    assert report["best_single_expert"]["test_accuracy"] == best < report["oracle_accuracy"] < 1
    assert experts[report["best_single_expert"]["name"]]["test_accuracy"] == best
    # single_best is the best on validation, one of the experts
    top = max(experts, key=lambda e: experts[e]["validation_accuracy"])
    assert methods["single_best"]["accuracy_mean"] == pytest.approx(experts[top]["test_accuracy"])
    assert "oracle (any expert of the pool right)" in r.stdout and "best single expert on test" in r.stdout


@pytest.mark.slow
def test_recorded_dir_replaces_the_pool(tmp_path):
    pool = tmp_path / "my-pool"  # any folder name: the --task says which questions
    pool.mkdir()
    for name in ("gemma-7b", "Yi-6b-Chat", "mathstral-7B"):
        shutil.copy(builtin_recorded_dir() / f"{name}.jsonl.gz", pool)
    r = skillmoe("evaluate", "--config", str(CONFIG), "--task", "MMLU_Pro", "--seeds", "0", "--recorded-dir", str(pool),
                 "--out", "r.json", "--quiet", "--state-dir", ".skillmoe", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert sorted(report["pool"]) == ["Yi-6b-Chat", "gemma-7b", "mathstral-7B"]
    assert "fixed_top3_vote" in report["methods"] and "fixed_top4_vote" not in report["methods"]


@pytest.mark.slow
def test_profile_saves_profiles_with_provenance(tmp_path):
    r = skillmoe("profile", "--config", str(CONFIG), "--task", "MMLU_Pro", "--state-dir", ".skillmoe", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "validation accuracy" in r.stdout
    files = list((tmp_path / ".skillmoe" / "profiles").rglob("MMLU_Pro.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert set(data["experts"]) == {p.name.removesuffix(".jsonl.gz") for p in builtin_recorded_dir().glob("*.gz")}
    meta = data["meta"]
    assert meta["dataset"] == "MMLU_Pro/train" and meta["skills"]["extractor"] == "embedding" and meta["created"]
    assert data["aggregator"]["mode"] == "vote"
    first = data["experts"][0]
    assert sum(data["scores"][first].values()) == sum(
        (1 if ok else -1) * len(set(sk)) for ok, sk in zip(data["correct"][first], data["question_skills"]))


def test_bad_config_is_one_line_naming_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pool: {recorded_dir: 'builtin:mmlu_pro'}\nrouting: {k: -1}\n")
    r = skillmoe("evaluate", "--config", str(bad), "--task", "MMLU_Pro", cwd=tmp_path)
    assert r.returncode == 2
    assert "bad.yaml: routing.k" in r.stderr and "Traceback" not in r.stderr
    r = skillmoe("evaluate", "--config", str(CONFIG), "--task", "NOPE", cwd=tmp_path)
    assert r.returncode == 2 and "unknown task 'NOPE'" in r.stderr
    r = skillmoe("evaluate", "--config", str(CONFIG), "--task", "MMLU_Pro", "--recorded-dir", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and "no <model>.jsonl.gz recordings" in r.stderr
    r = skillmoe("evaluate", "--config", str(CONFIG), "--task", "MMLU_Pro", "--seeds", "a,b", cwd=tmp_path)
    assert r.returncode == 2 and "--seeds" in r.stderr
