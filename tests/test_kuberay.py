"""deployments/kuberay/rayservice.yaml: a RayService KubeRay accepts, serving this project's Serve application.

The schema it is checked against, tests/data/kuberay-rayservice-v1-subset.yaml, is a
HAND-WRITTEN SUBSET of KubeRay's RayService CRD (ray.io/v1), transcribed from the CRD in
ray-project/kuberay (v1.1 line; source and what was read there vs. recalled are in its
header), not a pinned copy: no package on the registries this project reaches ships the
CRD. It is a weaker check than the real CRD for what it leaves open (most of a pod spec) and
stricter where it lists every field (unknown ones are errors here, pruned by the API server).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RAYSERVICE = ROOT / "deployments" / "kuberay" / "rayservice.yaml"
DOCKERFILE = ROOT / "deployments" / "kuberay" / "Dockerfile"
SCHEMA = Path(__file__).resolve().parent / "data" / "kuberay-rayservice-v1-subset.yaml"
SERVE_FOUR_GPU = ROOT / "deployments" / "serve-four-gpu.yaml"


@pytest.fixture(scope="module")
def manifest() -> dict:
    return yaml.safe_load(RAYSERVICE.read_text())


@pytest.fixture(scope="module")
def validator():
    jsonschema = pytest.importorskip("jsonschema")
    schema = yaml.safe_load(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def errors(validator, doc) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_rayservice_matches_the_rayservice_schema(manifest, validator):
    assert errors(validator, manifest) == []


@pytest.mark.parametrize("breakage, where", [
    (lambda m: m["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].pop("groupName"), "groupName"),
    (lambda m: m["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["rayStartParams"].update({"num-gpus": 4}),
     "rayStartParams.num-gpus"),
    (lambda m: m["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
     ["limits"].update({"memory": "16 GB"}), "resources.limits.memory"),
    (lambda m: m["spec"].update({"serveConfigV2": {"applications": []}}), "serveConfigV2"),
    (lambda m: m["spec"]["rayClusterConfig"].update({"workerGroupSpec": []}), "workerGroupSpec"),
], ids=["no groupName", "non-string rayStartParams", "bad quantity", "serveConfigV2 not a string", "typo"])
def test_the_schema_catches_what_kuberay_would_reject(manifest, validator, breakage, where):
    broken = copy.deepcopy(manifest)
    breakage(broken)
    found = errors(validator, broken)
    assert found and any(where.split(".")[-1] in e for e in found), found


def test_serve_config_is_the_four_gpu_application_and_ray_accepts_it(manifest):
    from ray.serve.schema import ServeDeploySchema

    from skillmoe_ray.config import load_config

    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    schema = ServeDeploySchema.model_validate(serve_config)
    # the same applications as deployments/serve-four-gpu.yaml: one source of truth, kept in step
    assert serve_config["applications"] == yaml.safe_load(SERVE_FOUR_GPU.read_text())["applications"]
    assert serve_config["http_options"]["host"] == "0.0.0.0"  # reached through KubeRay's serve service
    for app in schema.applications:
        assert app.import_path == "skillmoe_ray.serving.builders:build_app"
        assert (ROOT / app.args["config"]).is_file()
        cfg = load_config(ROOT / app.args["config"])
        # the worker pod has the GPUs and CPUs the pool asks for: the workers' and the LLM aggregator's own
        group = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        gpus = cfg.serving.workers * cfg.serving.gpus_per_worker
        if cfg.aggregation.mode == "llm":
            assert cfg.serving.aggregator_gpus > 0  # else its engine would take a worker's GPU
            gpus += cfg.serving.aggregator_gpus
        assert int(group["rayStartParams"]["num-gpus"]) == int(limits["nvidia.com/gpu"]) == math.ceil(gpus)
        assert float(limits["cpu"]) >= cfg.serving.workers * cfg.serving.cpus_per_worker


def test_image_placeholder_and_dockerfile_agree(manifest):
    rc = manifest["spec"]["rayClusterConfig"]
    pods = [rc["headGroupSpec"]["template"]] + [g["template"] for g in rc["workerGroupSpecs"]]
    images = {c["image"] for p in pods for c in p["spec"]["containers"]}
    assert len(images) == 1
    (image,) = images
    assert image.startswith(f"rayproject/ray:{rc['rayVersion']}-")
    docker = DOCKERFILE.read_text()
    assert f"FROM {image}" in docker and '[gpu]' in docker
    # the image's Ray is one this project supports (pyproject: ray[serve]>=2.60,<3)
    major, minor = (int(x) for x in rc["rayVersion"].split(".")[:2])
    assert major == 2 and minor >= 60
