from pathlib import Path

import pytest

from skillmoe_ray.config import load_config
from skillmoe_ray.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


DEPLOYMENTS = sorted(p for p in (ROOT / "deployments").glob("*.yaml") if not p.name.startswith("serve-"))
SERVE_CONFIGS = sorted((ROOT / "deployments").glob("serve-*.yaml"))


@pytest.mark.parametrize("path", DEPLOYMENTS, ids=lambda p: p.name)
def test_shipped_deployments_validate(path):
    cfg = load_config(path)
    assert cfg.pool.experts or cfg.pool.recorded_dir


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=lambda p: p.name)
def test_serve_config_files_name_valid_deployments(path):
    """Ray Serve config files: the schema Ray itself checks, and the deployment file they point to."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    data = yaml.safe_load(path.read_text())
    schema = ServeDeploySchema.model_validate(data) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(data)
    for app in schema.applications:
        assert app.import_path == "skillmoe_ray.serving.builders:build_app"
        load_config(ROOT / app.args["config"])
        # deployment overrides name real deployments; the scheduler owns the pool and is never scaled
        names = {d.name for d in app.deployments}
        assert names <= {"SkillMoEIngress", "SkillMoEScheduler"}
        assert all(d.num_replicas == 1 for d in app.deployments if d.name == "SkillMoEScheduler")


def write(tmp_path, text):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    return p


def test_wrong_type_names_file_field_and_expectation(tmp_path):
    p = write(tmp_path, "pool: {recorded_dir: builtin:mmlu_pro}\nrouting:\n  k: three\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "routing.k" in msg and "integer" in msg and "'three'" in msg


def test_unknown_field_is_an_error_not_a_silent_default(tmp_path):
    p = write(tmp_path, "pool: {recorded_dir: builtin:mmlu_pro}\nrouting:\n  temprature: 0.5\n")
    with pytest.raises(ConfigError, match=r"routing.temprature: unknown field"):
        load_config(p)


def test_x_keys_hold_shared_anchors(tmp_path):
    cfg = load_config(write(tmp_path, "x-fast: &fast {max_model_len: 2048}\n"
                                      "pool: {experts: [{name: a, engine: vllm, model: m, engine_args: {<<: *fast, threads: 1}}]}\n"))
    assert cfg.pool.experts[0].engine_args == {"max_model_len": 2048, "threads": 1}
    sim = load_config(ROOT / "deployments" / "paper-scale-sim.yaml")
    assert all(e.engine_args["kv_tokens"] == 200000 for e in sim.pool.experts)


def test_missing_pool_and_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="pool: required field is missing"):
        load_config(write(tmp_path, "name: x\n"))
    with pytest.raises(ConfigError, match=r"routing.k: .*greater than or equal to 1"):
        load_config(write(tmp_path, "pool: {recorded_dir: x}\nrouting: {k: 0}\n"))
    with pytest.raises(ConfigError, match=r"pool.experts.0.engine"):
        load_config(write(tmp_path, "pool:\n  experts:\n    - {name: a, engine: tpu, model: m}\n"))
    with pytest.raises(ConfigError, match="keyword_model"):
        load_config(write(tmp_path, "pool: {recorded_dir: x}\nskills: {extractor: keyword_llm}\n"))


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "pool: [unclosed\n"))
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_cluster_yaml_matches_rays_cluster_schema():
    import json
    import os

    import jsonschema
    import ray
    import yaml

    schema = json.loads(Path(os.path.dirname(ray.__file__), "autoscaler", "ray-schema.json").read_text())
    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    jsonschema.validate(cluster, schema)
    assert any(t["max_workers"] >= 1 for n, t in cluster["available_node_types"].items() if n != cluster["head_node_type"])


def test_a_deployment_without_profiles_fails_fast_naming_the_command(tmp_path):
    """`serve run` / `serve deploy` never build profiles: the builder says which command does."""
    import yaml

    from skillmoe_ray.serving.builders import build_app

    cfg = yaml.safe_load((ROOT / "deployments" / "recorded-mmlu-pro.yaml").read_text())
    cfg["state_dir"] = str(tmp_path / "empty")
    path = tmp_path / "no-profiles.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as e:
        build_app({"config": str(path)})
    msg = str(e.value)
    assert "no profiles of task MMLU_Pro" in msg and f"skillmoe profile --config {path} --task MMLU_Pro" in msg
    assert not (tmp_path / "empty").exists()  # nothing was built
