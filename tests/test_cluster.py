"""Worker placement on a multi-node Ray cluster: ``serving.placement_strategy``.

The cluster is Ray's own ``ray.cluster_utils.Cluster``: a head node with two CPUs
and no GPU, and two nodes with two (logical) GPUs and two CPUs each, all
processes on this machine. It runs in a subprocess (this file, run as a script)
with a private RAY_TMPDIR: the test session already has a Ray runtime of its
own (conftest's session-scoped ``ray_cluster``), and one process can only be
connected to one cluster. The subprocess prints what it saw as JSON; the
assertions are made here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECORDED_CONFIG = ROOT / "deployments" / "recorded-mmlu-pro.yaml"

#: (strategy, workers): each started with one GPU and one CPU a worker
CASES = [("SPREAD", 2), ("PACK", 2), ("STRICT_SPREAD", 2), ("PACK", 3)]


def test_placement_strategy_is_a_serving_setting(tmp_path):
    from skillmoe_ray.config import load_config
    from skillmoe_ray.errors import ConfigError

    assert load_config(RECORDED_CONFIG).serving.placement_strategy == "PACK"
    p = tmp_path / "spread.yaml"
    p.write_text("pool: {recorded_dir: builtin:mmlu_pro}\nserving: {workers: 4, placement_strategy: SPREAD}\n")
    assert load_config(p).serving.placement_strategy == "SPREAD"
    p.write_text("pool: {recorded_dir: builtin:mmlu_pro}\nserving: {placement_strategy: spread}\n")
    with pytest.raises(ConfigError, match="serving.placement_strategy"):
        load_config(p)


def test_pool_name_changes_with_the_placement_strategy():
    """A scheduler started with another strategy must not attach to workers placed under the old one."""
    from skillmoe_ray.config import load_config
    from skillmoe_ray.pool import pool_experts
    from skillmoe_ray.serving.scheduler_deployment import pool_name

    cfg = load_config(RECORDED_CONFIG)
    experts = pool_experts(cfg)
    before = pool_name(cfg, experts, "app")
    cfg.serving.placement_strategy = "SPREAD"
    assert pool_name(cfg, experts, "app") != before


def run_scenario(name: str, timeout_s: float = 400) -> dict:
    """This file run as a script with ``name``, on a private Ray temp dir; the JSON it prints last."""
    tmp = tempfile.mkdtemp(prefix="smc", dir="/tmp")  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_TMPDIR": tmp, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RAY_ADDRESS", None)
    try:
        proc = subprocess.run([sys.executable, __file__, name], env=env, cwd=str(ROOT), capture_output=True,
                              text=True, timeout=timeout_s)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    # Ray's own log lines (a raylet's, at shutdown) may follow the scenario's JSON on stdout
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


@pytest.mark.slow
def test_workers_spread_or_pack_over_nodes_and_answer_a_plan():
    out = run_scenario("placement")
    head, gpu_nodes = out["head"], out["gpu_nodes"]
    assert len(set(gpu_nodes)) == 2 and head not in gpu_nodes
    for case in out["cases"]:
        where = case["nodes"]  # one node id per worker, in worker order
        label = f"{case['strategy']} x{case['workers']}: {where}"
        assert len(where) == case["workers"] and set(where) <= set(gpu_nodes), label  # never the GPU-less head
        if case["strategy"] in ("SPREAD", "STRICT_SPREAD"):
            assert len(set(where)) == 2, label
        elif case["workers"] == 2:  # PACK: both fit on one node, so they share it
            assert len(set(where)) == 1, label
        else:  # PACK x3: a node's two GPUs, then the other node for the third
            assert sorted(where.count(n) for n in set(where)) == [1, 2], label
        # each worker owns one logical GPU of its node: two on one node never share a device
        for node in set(where):
            devices = [d for d, n in zip(case["cuda_visible_devices"], where) if n == node]
            assert sorted(devices) == sorted(set(devices)) and all(d in ("0", "1") for d in devices), label
        # the plan was answered, by the workers the planner assigned, wherever they were placed
        assert case["answered"] == case["asked"] and case["all_text"], label
        assert case["usage"] == case["planned"], label
        assert len([w for w, e in case["planned"].items() if e]) >= 2, label
    assert "cannot place 3 workers" in out["unplaceable"] and "STRICT_SPREAD" in out["unplaceable"]
    print(f"cluster placement subprocess: {out['seconds']:.1f} s")


@pytest.mark.slow
def test_replicas_on_another_node_answer_with_what_the_deployer_shipped():
    """The deploying process (a driver on the head node) loads the profiles and the config; then its state
    folder and its copy of the deployment file are deleted, and the ingress and scheduler replicas start on
    another node. They answer, so everything they needed came with the application, and nothing was built
    or written again (the state folder stays gone)."""
    out = run_scenario("elsewhere")
    assert out["ingress_nodes"] and set(out["ingress_nodes"]) == {out["other_node"]}, out
    assert out["scheduler_nodes"] == [out["other_node"]], out
    assert out["other_node"] != out["deployer_node"]
    assert out["status"] == 200 and out["answer"] and len(out["experts"]) >= 1, out
    assert not out["state_dir_exists"] and not out["config_exists"], out
    print(f"replicas elsewhere subprocess: {out['seconds']:.1f} s")


def replicas_elsewhere() -> None:
    """Run in the subprocess: a head and one other node; the application is built on the head, its files
    deleted, and its replicas placed on the other node by a custom resource."""
    import json as _json
    import socket
    import time
    import urllib.request

    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from skillmoe_ray.config import load_config
    from skillmoe_ray.serving.builders import app_spec
    from skillmoe_ray.serving.ingress import SkillMoEIngress
    from skillmoe_ray.serving.scheduler_deployment import SkillMoEScheduler
    from skillmoe_ray.tasks.catalogue import load_questions

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="skillmoe-elsewhere-"))
    config = work / "deployment.yaml"
    shutil.copy(RECORDED_CONFIG, config)
    cluster = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=2, num_gpus=0, include_dashboard=False, dashboard_agent_listen_port=free_port()))
    try:
        other = cluster.add_node(num_cpus=2, resources={"elsewhere": 1}, dashboard_agent_listen_port=free_port())
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        cfg = load_config(config)
        cfg.state_dir = str(work / "state")
        cfg.serving.control_on_head = False
        spec = app_spec(cfg, build_profiles=True)  # what `skillmoe profile` leaves, loaded by the deployer
        shutil.rmtree(work / "state")
        config.unlink()
        there = {"num_cpus": 0, "resources": {"elsewhere": 0.01}}  # what a Serve config's ray_actor_options says
        scheduler = SkillMoEScheduler.options(ray_actor_options=there).bind(spec)
        app = SkillMoEIngress.options(num_replicas=2, ray_actor_options=there).bind(scheduler, spec)
        serve.run(app, name="elsewhere", route_prefix="/")
        question = load_questions("MMLU_Pro", "test")[5].text
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/solve", method="POST",
                                     data=_json.dumps({"question": question}).encode(),
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            status, body = r.status, _json.loads(r.read())
        from ray._private import state as ray_state

        placed: dict[str, list[str]] = {"SkillMoEIngress": [], "SkillMoEScheduler": []}
        for actor in ray_state.actors().values():
            for cls in placed:
                if actor.get("State") == "ALIVE" and actor.get("ActorClassName", "").endswith(cls):
                    placed[cls].append(actor["Address"]["NodeID"])
        print(_json.dumps({
            "deployer_node": ray.get_runtime_context().get_node_id(), "other_node": other.node_id,
            "ingress_nodes": placed["SkillMoEIngress"], "scheduler_nodes": placed["SkillMoEScheduler"],
            "status": status, "answer": body.get("answer"), "experts": body.get("experts", []),
            "state_dir_exists": (work / "state").exists(), "config_exists": config.exists(),
            "seconds": time.monotonic() - t0}))
        serve.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    """Run in the subprocess: a three-node Cluster, workers under each strategy, a plan through them."""
    import socket
    import time

    import ray
    from ray.cluster_utils import Cluster

    from skillmoe_ray.config import load_config
    from skillmoe_ray.engines.base import GenerationRequest, SamplingSettings
    from skillmoe_ray.errors import EngineError
    from skillmoe_ray.execution import group_by_expert
    from skillmoe_ray.pool import pool_experts
    from skillmoe_ray.scheduling.planner import CostModel
    from skillmoe_ray.serving.actors import start_workers, stop_actors
    from skillmoe_ray.serving.scheduler import RayExecutor, Scheduler, limits_for
    from skillmoe_ray.tasks.catalogue import load_questions

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    t0 = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=2, num_gpus=0, include_dashboard=False, dashboard_agent_listen_port=free_port()))
    try:
        gpu_nodes = [cluster.add_node(num_cpus=2, num_gpus=2, dashboard_agent_listen_port=free_port())
                     for _ in range(2)]
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        experts = pool_experts(load_config(RECORDED_CONFIG))
        names = [e.name for e in experts][:4]
        qs = load_questions("MMLU_Pro", "test")[:6]
        reqs = [GenerationRequest.user("p", key=q.qid) for q in qs]
        cases = []
        for strategy, n in CASES:
            workers, pg, _ = start_workers(experts, n, gpus_per_worker=1, cpus_per_worker=1,
                                           strategy=strategy, timeout_s=60)
            ex = None
            try:
                infos = ray.get([w.info.remote() for w in workers], timeout=60)
                budgets = ray.get([h.budgets.remote() for h in workers])
                limits = limits_for(ray.get(workers[0].traits.remote()), budgets, False)
                # loads are expensive here, so the planner splits the experts over the workers
                ex = RayExecutor(Scheduler(workers, limits, CostModel(default_load_s=5.0, default_per_prompt_s=0.1)))
                texts = ex.run(group_by_expert([names] * len(qs), reqs), SamplingSettings())
                planned = {str(w): sorted(e) for w, e in ex.last_assignment.jobs.items()}
                after = ray.get([w.info.remote() for w in workers], timeout=60)
                usage = {str(i["wid"]): sorted(i["usage"]) for i in after}
                cases.append({
                    "strategy": strategy, "workers": n,
                    "nodes": [i["node_id"] for i in infos],
                    "cuda_visible_devices": [i["cuda_visible_devices"] for i in infos],
                    "asked": len(qs) * len(names), "answered": len(texts),
                    "all_text": all(isinstance(t, str) and t for t in texts.values()),
                    "planned": {w: e for w, e in planned.items() if e},
                    "usage": {w: e for w, e in usage.items() if e},
                })
            finally:
                if ex is not None:
                    ex.close()
                stop_actors(workers, pg)
                # the next case starts from an empty cluster: wait until the GPUs are given back
                deadline = time.monotonic() + 30
                while ray.available_resources().get("GPU", 0) < 4 and time.monotonic() < deadline:
                    time.sleep(0.2)
        # three workers, one a node, on two GPU nodes: not placed, and the error says why
        try:
            start_workers(experts, 3, gpus_per_worker=1, cpus_per_worker=1, strategy="STRICT_SPREAD", timeout_s=3)
            unplaceable = "placed"
        except EngineError as exc:
            unplaceable = str(exc)
        print(json.dumps({"head": cluster.head_node.node_id, "gpu_nodes": [g.node_id for g in gpu_nodes],
                          "cases": cases, "unplaceable": unplaceable, "seconds": time.monotonic() - t0}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    {"placement": main, "elsewhere": replicas_elsewhere}[sys.argv[1] if len(sys.argv) > 1 else "placement"]()
