"""Starting and stopping a served deployment on a private local Ray cluster (or a given one)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import SkillMoEError

RAY_QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def ensure_ray_env() -> None:
    for k, v in RAY_QUIET_ENV.items():
        os.environ.setdefault(k, v)


def init_ray(cfg: Config, address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """A private local cluster unless ``address`` names one; logical CPUs enough for the workers."""
    ensure_ray_env()
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        return
    sv = cfg.serving
    need = int(sv.workers * sv.cpus_per_worker + 0.999) + 1
    ray.init(
        address="local",
        include_dashboard=False,
        num_cpus=num_cpus or max(os.cpu_count() or 1, need),
        num_gpus=num_gpus,
        log_to_driver=False,
        configure_logging=False,
    )


def start_serving(config_path: str | Path, cfg: Config, host: str, port: int, recorded_dir: str | None = None,
                  state_dir: str | None = None, blocking: bool = False, announce: bool = False) -> str:
    """Deploy the application; returns its URL once it answers.

    With ``announce``, it says what it is doing as it goes, and a placeholder answers ``/healthz`` with
    503 ``starting`` and the stage reached until the application replaces it.
    """
    from ray import serve

    from .builders import build_application

    if state_dir:
        cfg.state_dir = state_dir
    serve.start(http_options={"host": host, "port": port}, detached=False)
    url = f"http://{host}:{port}"
    starting = None
    if announce:
        from .starting import Starting

        starting = serve.run(Starting.bind(cfg.name), name="skillmoe", route_prefix="/", blocking=False)
        print(f"skillmoe: {url}/healthz answers 503 'starting' until the deployment is ready", flush=True)

    def stage(text: str) -> None:
        if announce:
            print(f"skillmoe: {text}", flush=True)
        if starting is not None:
            starting.set_progress.remote({"stage": text})

    stage(f"loading profiles of {', '.join(cfg.serving.tasks)} (built on the validation split if missing)")
    app = build_application(cfg, recorded_dir, progress=announce, cluster_check=True)
    stage(f"starting {cfg.serving.workers} worker(s) and the scheduler; models load as the first batches need them")
    try:
        serve.run(app, name="skillmoe", route_prefix="/", blocking=False)
    except Exception as exc:  # deployment constructor errors arrive wrapped
        raise SkillMoEError(f"the deployment failed to start: {_root_message(exc)}") from None
    return url


def _root_message(exc: BaseException) -> str:
    text = str(exc)
    for marker in ("ConfigError: ", "DataError: ", "EngineError: ", "SkillMoEError: "):
        if marker in text:
            return text.split(marker, 1)[1].splitlines()[0]
    return text.strip().splitlines()[-1] if text.strip() else type(exc).__name__


def stop_serving() -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        if ray.is_initialized():
            ray.shutdown()


def serve_forever(config_path: str | Path, cfg: Config, host: str, port: int, address: str | None,
                  recorded_dir: str | None = None) -> Any:
    import signal
    import threading

    init_ray(cfg, address)
    try:
        url = start_serving(config_path, cfg, host, port, recorded_dir, announce=True)
    except KeyboardInterrupt:
        # Ctrl-C while starting (or in the moment between the application answering and serve.run returning,
        # before the handlers below are in place): the same clean stop as once it serves
        print("skillmoe: stopping", flush=True)
        stop_serving()
        return None
    print(f"skillmoe: serving {cfg.name} at {url}  (POST {url}/v1/solve, {url}/v1/chat/completions; "
          f"GET {url}/v1/pool, {url}/healthz) - Ctrl-C to stop", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        print("skillmoe: stopping", flush=True)
        stop_serving()
