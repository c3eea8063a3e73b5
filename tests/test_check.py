"""`skillmoe check`: the shipped GPU deployments pass; each class of defect the review found, put back into a
copy of a deployment file, is refused naming the expert and the field; `skillmoe serve`'s builder refuses the
same way. The models' configs come from tests/fixtures/models, standing in for the hub."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from skillmoe_ray.config import load_config
from skillmoe_ray.errors import ConfigError
from skillmoe_ray.pool import pool_experts
from skillmoe_ray.preflight import preflight

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "tests" / "fixtures" / "models"
ONE, FOUR = ROOT / "deployments" / "one-gpu.yaml", ROOT / "deployments" / "four-gpu.yaml"


def check(path: Path, gpu_gb: float = 80, nodes=None):
    cfg = load_config(path)
    return preflight(cfg, pool_experts(cfg), MODELS, gpu_gb, nodes)


def skillmoe(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("skillmoe")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("path", [ONE, FOUR], ids=["one-gpu", "four-gpu"])
@pytest.mark.parametrize("gpu_gb", [80, 141])
def test_the_shipped_gpu_deployments_pass(path, gpu_gb):
    report = check(path, gpu_gb)
    assert report.errors == [], [f.render(path) for f in report.errors]
    assert len(report.rows) == 16 and all(r.footprint and r.per_worker >= 1 for r in report.rows)
    # an H200 holds more experts at once than an H100
    llama = next(r for r in report.rows if r.name == "Llama")
    assert llama.per_worker >= (4 if gpu_gb == 141 and path == FOUR else 1)


def test_the_command_prints_the_table_and_exits_0_on_a_clean_file():
    r = skillmoe("check", "--config", str(FOUR), "--gpu-memory-gb", "80", "--model-configs", str(MODELS))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Llama" in r.stdout and "LlamaForCausalLM" in r.stdout and "0 error(s)" in r.stdout
    assert "a worker's models get 73.6 GB" in r.stdout


def _copy(tmp_path: Path, source: Path, edit) -> Path:
    data = yaml.safe_load(source.read_text())
    edit(data)
    path = tmp_path / source.name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _expert(data: dict, name: str) -> dict:
    return next(e for e in data["pool"]["experts"] if e["name"] == name)


DEFECTS = {
    # the LLM aggregator with no GPU of its own takes GPU 0, a worker's
    "aggregator without GPU memory": (
        lambda d: d["serving"].update(aggregator_gpus=0), "serving.aggregator_gpus", "GPU 0"),
    # a context beyond the model's limit
    "max_model_len beyond the model": (
        lambda d: _expert(d, "QwenMath")["engine_args"].update(max_model_len=8192),
        "pool.experts.8.engine_args.max_model_len", "'QwenMath'"),
    # remote code the installed transformers does not have
    "remote code without trust_remote_code": (
        lambda d: _expert(d, "Exaone")["engine_args"].pop("trust_remote_code"),
        "pool.experts.6.engine_args.trust_remote_code", "'Exaone'"),
    "a remote-code tokenizer without trust_remote_code": (
        lambda d: _expert(d, "GLM")["engine_args"].pop("trust_remote_code"),
        "pool.experts.5.engine_args.trust_remote_code", "ChatGLM4Tokenizer"),
    # a footprint no worker's GPU holds
    "a footprint too large for the GPU": (
        lambda d: _expert(d, "Llama")["engine_args"].update(kv_cache_gb=80), "pool.experts.0", "'Llama' needs"),
    # tensor parallelism a one-GPU worker cannot give
    "tensor parallel beyond the worker": (
        lambda d: _expert(d, "Granite")["engine_args"].update(tensor_parallel_size=2),
        "pool.experts.7.engine_args.tensor_parallel_size", "'Granite'"),
    # a flat reservation too small for the model (and in general: flat ones are warned about)
    "a flat gpu_memory_utilization too small": (
        lambda d: _expert(d, "Phi")["engine_args"].update(gpu_memory_utilization=0.05),
        "pool.experts.3.engine_args.gpu_memory_utilization", "'microsoft/Phi-3.5-mini-instruct'"),
    # an aggregator candidate that does not fit the aggregator's share
    "an aggregator candidate too large": (
        lambda d: d["aggregation"].update(candidates=["Qwen", "Mistral"]), "aggregation.candidates", "Mistral"),
    # sleep-mode engines in the worker's own process: one CuMem allocator per process
    "in-process engines with sleep mode": (
        lambda d: _expert(d, "Qwen")["engine_args"].update(multiprocessing=False),
        "pool.experts.1.engine_args.multiprocessing", "CuMem"),
}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_each_defect_put_back_is_refused_naming_the_field(tmp_path, defect):
    edit, field, says = DEFECTS[defect]
    path = _copy(tmp_path, ONE, edit)
    report = check(path)
    lines = [f.render(path) for f in report.errors]
    assert any(f"{path}: {field}: " in line and says in line for line in lines), lines
    # that defect and what follows from it (a too-large Llama is also too large an aggregator), nothing else
    subject = says.split("'")[1] if "'" in says else says
    assert all(subject in line or field in line for line in lines), lines


def test_an_architecture_vllm_does_not_serve_is_refused(tmp_path):
    model = tmp_path / "odd-model"
    model.mkdir()
    (model / "config.json").write_text((MODELS / "Qwen--Qwen2.5-7B-Instruct" / "config.json").read_text()
                                       .replace("Qwen2ForCausalLM", "OddForCausalLM"))
    path = _copy(tmp_path, ONE, lambda d: _expert(d, "Qwen").update(model=str(model)))
    lines = [f.render(path) for f in check(path).errors]
    assert any("pool.experts.1.model: " in line and "OddForCausalLM" in line and "vLLM 0.33.0" in line
               for line in lines), lines


def test_a_cluster_without_the_resources_the_placement_asks_for_is_refused():
    report = check(FOUR, nodes=[{"CPU": 8.0}, {"CPU": 16.0, "GPU": 2.0}])
    lines = [f.render(FOUR) for f in report.errors]
    assert any("serving.workers: " in line and "need 4 GPUs; the cluster has 2" in line for line in lines), lines
    assert check(FOUR, nodes=[{"CPU": 8.0}, {"CPU": 16.0, "GPU": 4.0}]).errors == []


def test_a_missing_model_config_is_an_error_naming_the_expert(tmp_path):
    path = _copy(tmp_path, FOUR, lambda d: _expert(d, "Phi").update(model="nobody/no-such-model"))
    lines = [f.render(path) for f in check(path).errors]
    assert any("pool.experts.3.model: " in line and "'nobody/no-such-model'" in line for line in lines), lines


def test_the_command_exits_2_with_the_messages(tmp_path):
    path = _copy(tmp_path, ONE, DEFECTS["max_model_len beyond the model"][0])
    r = skillmoe("check", "--config", str(path), "--gpu-memory-gb", "80", "--model-configs", str(MODELS))
    assert r.returncode == 2 and f"error: {path}: pool.experts.8.engine_args.max_model_len: 8192 is beyond" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr


def test_serve_s_builder_refuses_with_the_same_messages(tmp_path, monkeypatch):
    """The Serve builder (what `skillmoe serve`, `serve run` and `serve deploy` call) runs the same checks first."""
    from skillmoe_ray.serving.builders import build_application

    monkeypatch.setenv("SKILLMOE_MODEL_CONFIGS", str(MODELS))
    path = _copy(tmp_path, ONE, DEFECTS["remote code without trust_remote_code"][0])
    expected = [f.render(path) for f in check(path).errors]
    with pytest.raises(ConfigError) as err:
        build_application(load_config(path))
    assert all(line in str(err.value) for line in expected) and "skillmoe check" in str(err.value)
