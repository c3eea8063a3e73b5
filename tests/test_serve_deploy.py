"""Ray's own deploy path: `ray start` a head and a second node, `serve deploy` a config file, answer, `serve shutdown`.

Everything this test starts is its own: a private temp dir (RAY_TMPDIR and
--temp-dir), private ports for every server `ray start` opens (GCS, dashboard,
client server, each node's agents and metrics), the dashboard and Serve's HTTP
proxy on 127.0.0.1. It never runs `ray stop` (that would stop every Ray on the
machine): it ends the processes of its own two nodes by id, found by the
private temp dir in their command lines.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SERVE_CONFIG = ROOT / "deployments" / "serve-recorded-mmlu-pro.yaml"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pids_under(marker: str) -> list[int]:
    """Processes whose command line names ``marker`` (this test's private temp dir), not this one."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if marker in cmd:
            found.append(int(d))
    return found


def stop_processes(marker: str, grace_s: float = 10.0) -> list[int]:
    """SIGTERM the nodes' processes, then SIGKILL whatever is left; returns what had to be killed."""
    for pid in pids_under(marker):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while pids_under(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    killed: list[int] = []
    for _ in range(5):  # a dying raylet may still start a worker: kill in rounds until none is left
        left = pids_under(marker)
        if not left:
            break
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        killed += left
        deadline = time.monotonic() + 10  # SIGKILL is not instant: wait for them to be gone
        while pids_under(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
    return killed


def run(args: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def cluster_view(gcs: str, env: dict) -> dict:
    """Alive nodes and the pool's named actors, asked by a driver of its own (this process may have a Ray already)."""
    code = ("import json, ray; ray.init(address=%r, log_to_driver=False, configure_logging=False); "
            "print(json.dumps({'nodes': sum(n['Alive'] for n in ray.nodes()), 'actors': [a['name'] for a in "
            "ray.util.list_named_actors(all_namespaces=True) if a['name'].startswith('skillmoe:')]}))" % gcs)
    return json.loads(run([sys.executable, "-c", code], env, timeout=60).stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_serve_deploy_on_a_two_node_cluster_answers_and_shuts_down_cleanly():
    from skillmoe_ray.tasks.catalogue import load_questions

    t0 = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="smd", dir="/tmp")  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_TMPDIR": tmp, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    for var in ("RAY_ADDRESS", "RAY_DASHBOARD_ADDRESS"):
        env.pop(var, None)
    ray_cli, serve_cli = str(BIN / "ray"), str(BIN / "serve")
    dash = free_port()
    dashboard = f"http://127.0.0.1:{dash}"
    gcs_port = free_port()

    def node_ports() -> list[str]:
        return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]

    # the Serve config file as shipped, with a free port, the deployment file by absolute path, a private
    # state dir for the profiles, and the proxy on the head only (both nodes share this machine's loopback)
    conf = yaml.safe_load(SERVE_CONFIG.read_text())
    http_port = free_port()
    conf["http_options"].update(host="127.0.0.1", port=http_port)
    conf["proxy_location"] = "HeadOnly"
    app = conf["applications"][0]
    # the deployment file with a private state dir; its profiles are built by `skillmoe profile` beforehand,
    # as a deployment never builds them itself
    deployment = yaml.safe_load((ROOT / app["args"]["config"]).read_text())
    deployment["state_dir"] = os.path.join(tmp, "state")
    deployment_path = Path(tmp) / "deployment.yaml"
    deployment_path.write_text(yaml.safe_dump(deployment))
    app["args"]["config"] = str(deployment_path)
    conf_path = Path(tmp) / "serve.yaml"
    conf_path.write_text(yaml.safe_dump(conf))
    run([str(BIN / "skillmoe"), "profile", "--config", str(deployment_path), "--task", "MMLU_Pro"], env)
    question = load_questions("MMLU_Pro", "test")[0].text
    try:
        run([ray_cli, "start", "--head", f"--port={gcs_port}", "--num-cpus=2", "--num-gpus=0", f"--temp-dir={tmp}",
             "--disable-usage-stats", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={dash}", f"--ray-client-server-port={free_port()}", *node_ports()], env)
        gcs = Path(tmp, "ray_current_cluster").read_text().strip()
        assert gcs.endswith(f":{gcs_port}"), gcs
        run([ray_cli, "start", f"--address={gcs}", "--num-cpus=2", "--num-gpus=0", "--disable-usage-stats",
             *node_ports()], env)
        started = time.monotonic() - t0

        run([serve_cli, "deploy", str(conf_path), "--address", dashboard], env)
        deadline, status = time.monotonic() + 150, {}
        while time.monotonic() < deadline:
            out = subprocess.run([serve_cli, "status", "--address", dashboard], env=env, capture_output=True,
                                 text=True, timeout=60).stdout
            status = (yaml.safe_load(out) or {}).get("applications", {}).get("skillmoe", {})
            if status.get("status") in ("RUNNING", "DEPLOY_FAILED", "UNHEALTHY"):
                break
            time.sleep(2)
        assert status.get("status") == "RUNNING", status
        deployed = time.monotonic() - t0

        req = urllib.request.Request(f"http://127.0.0.1:{http_port}/v1/solve", method="POST",
                                     data=json.dumps({"question": question, "task": "MMLU_Pro"}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            assert resp.status == 200
            body = json.loads(resp.read())
        assert body["answer"] and len(body["experts"]) >= 1, body
        assert set(status["deployments"]) == {"SkillMoEIngress", "SkillMoEScheduler"}

        # while it runs: two nodes, and the pool's workers and aggregator are named actors on the cluster
        view = cluster_view(gcs, env)
        assert view["nodes"] == 2 and any(":worker:" in n for n in view["actors"]), view
        run([serve_cli, "shutdown", "--address", dashboard, "-y"], env)
        # Serve deletes the scheduler, whose __del__ removes the pool: no skillmoe actor outlives it
        deadline, left = time.monotonic() + 60, ["?"]
        while left and time.monotonic() < deadline:
            left = cluster_view(gcs, env)["actors"]
            if left:
                time.sleep(1)
        assert left == [], left
        print(f"serve deploy: nodes up {started:.1f} s, RUNNING at {deployed:.1f} s, "
              f"down at {time.monotonic() - t0:.1f} s")
    finally:
        stop_processes(tmp)  # SIGTERM, then SIGKILL for stragglers: by process id, never `ray stop`
        alive = pids_under(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    assert not alive, f"processes of the test's nodes still alive: {alive}"
