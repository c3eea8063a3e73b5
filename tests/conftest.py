"""Shared fixtures. The recorded pool and the packaged MiniLM are real; nothing here fakes them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECORDED_CONFIG = ROOT / "deployments" / "recorded-mmlu-pro.yaml"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory) -> Path:
    """Profiles built once per test session, outside the working tree."""
    return tmp_path_factory.mktemp("skillmoe-state")


@pytest.fixture(scope="session")
def recorded_cfg(state_dir):
    from skillmoe_ray.config import load_config

    cfg = load_config(RECORDED_CONFIG)
    cfg.state_dir = str(state_dir)
    return cfg


@pytest.fixture(scope="session")
def recorded_runtime(recorded_cfg):
    from skillmoe_ray.runtime import Runtime

    return Runtime.from_config(recorded_cfg, progress=False)


@pytest.fixture(scope="session")
def mmlu_profiles(recorded_runtime):
    from skillmoe_ray.tasks.catalogue import get_task

    return recorded_runtime.profiles(get_task("MMLU_Pro"))


@pytest.fixture(scope="session")
def ray_cluster():
    """One private local Ray cluster per test session, with logical GPUs for placement tests."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    # Ray's Prometheus export on a private port (tests/test_metrics.py scrapes it)
    os.environ["SKILLMOE_TEST_METRICS_PORT"] = str(free_port())
    ray.init(address="local", num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False, _metrics_export_port=int(os.environ["SKILLMOE_TEST_METRICS_PORT"]))
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    finally:
        ray.shutdown()


def deploy(cfg_path, name, state_dir, route_prefix=None, **overrides):
    """Deploy a deployment file as a Serve application, through the same builder `serve run` uses."""
    from ray import serve

    from skillmoe_ray.config import load_config
    from skillmoe_ray.serving.builders import build_application

    cfg = load_config(cfg_path)
    cfg.state_dir = str(state_dir)
    for k, v in overrides.items():
        setattr(cfg.serving, k, v)
    serve.run(build_application(cfg), name=name, route_prefix=route_prefix or f"/{name}")


class ServeProcess:
    """`skillmoe serve` in a process of its own (its own private Ray cluster), its output collected."""

    def __init__(self, config, port: int, cwd=None, state_dir=None):
        import subprocess
        import sys
        import threading

        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
        exe = Path(sys.executable).with_name("skillmoe")
        self.url = f"http://127.0.0.1:{port}"
        extra = ["--state-dir", str(state_dir)] if state_dir else []
        self.proc = subprocess.Popen([str(exe), "serve", "--config", str(config), "--port", str(port), *extra], cwd=cwd,
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")),
                                       daemon=True)
        self.reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self) -> int:
        """Ctrl-C, as a user stops it; killed (its whole process group) if it does not end. Its exit status."""
        import signal

        self.proc.send_signal(signal.SIGINT)
        code = self.wait_exit(180)
        if code is None:
            self.kill()
        self.reader.join(timeout=10)
        return self.proc.returncode

    def signal(self, sig: int, group: bool = False) -> None:
        """Send ``sig`` to the server, or to its whole process group as a terminal's Ctrl-C does (nothing if
        it has ended already)."""
        try:
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
        except ProcessLookupError:
            pass

    def wait_exit(self, timeout: float) -> int | None:
        """Its exit status once it ends within ``timeout`` seconds, else None (still running)."""
        import subprocess

        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def wait_for(self, ready, timeout: float, interval: float = 0.05) -> bool:
        """Poll ``ready()`` until true (True), or until it exits or ``timeout`` passes (False)."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if ready():
                return True
            time.sleep(interval)
        return False

    def printed(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def health(self) -> int:
        """/healthz's status code; 0 while nothing answers."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return 0

    def session(self) -> list:
        """The live processes of its session (it is the leader: Ray's processes inherit the session)."""
        import psutil

        found = []
        for p in psutil.process_iter(["status"]):
            try:
                if os.getsid(p.pid) == self.proc.pid and p.info["status"] != psutil.STATUS_ZOMBIE:
                    found.append(p)
            except (ProcessLookupError, PermissionError, psutil.Error):
                pass
        return found

    def kill(self) -> None:
        """SIGKILL to its process group and anything left of its session (cleanup after a failure)."""
        import signal

        for target in [*self.session(), None]:
            try:
                if target is None:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                else:
                    target.kill()
            except Exception:  # noqa: BLE001 - best effort: it may be gone already
                pass
        self.proc.wait()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def served_recorded(ray_cluster, state_dir):
    """The recorded-pool deployment served on loopback; yields its base URL."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    deploy(RECORDED_CONFIG, "skillmoe", state_dir, route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.delete("skillmoe")


def stream_beside_generate(engine, request, sampling):
    """``engine.generate`` of one request, then ``engine.stream`` of it, checked to be that text in several
    pieces, the first well before the last. Returns (whole text, generate's usage, the pieces, each
    piece's arrival in seconds from the stream's start)."""
    import time

    (whole,) = engine.generate([request], sampling)
    usage = engine.usage([request], [whole])
    t0 = time.perf_counter()
    pieces, arrivals = [], []
    for piece in engine.stream(request, sampling):
        arrivals.append(time.perf_counter() - t0)
        pieces.append(piece)
    assert "".join(pieces) == whole and len(pieces) > 1, pieces
    assert arrivals[0] < arrivals[-1] / 2, arrivals  # the first piece long before the whole
    return whole, usage, pieces, arrivals
