"""Starting and stopping a served deployment on a private local Ray cluster (or a given one).

``skillmoe serve`` (:func:`serve_forever`) stops cleanly at any moment: SIGINT
and SIGTERM are noted (see :mod:`.stopping`), the start-up checks between steps
and waits for the application without blocking on Serve, and one shutdown path
removes the application and then everything ``ray.init`` started.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..config import Config
from ..errors import SkillMoEError
from .stopping import StopRequest, ray_leaves_signals_alone

T = TypeVar("T")

RAY_QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
APP_NAME = "skillmoe"
#: how often the start-up and the stop look at the application's status
POLL_S = 0.2
#: the most a stop waits for the application to finish its in-flight requests (Serve's own
#: graceful_shutdown_timeout_s is 20 s a replica) before the cluster goes regardless
DRAIN_TIMEOUT_S = 45.0

#: whether init_ray started the cluster (its shutdown then ends every process of it)
_private_cluster = False


def ensure_ray_env() -> None:
    """Ray offline and quiet; no colour codes in Ray's "(raylet)"/"(pid=...)" lines unless on a terminal.

    Ray colours those prefixes whatever the output is, unless RAY_COLOR_PREFIX=0
    (ray/_private/worker.py, ``print_worker_logs``); it is read at each line, and
    set only where the user has not chosen.
    """
    for k, v in RAY_QUIET_ENV.items():
        os.environ.setdefault(k, v)
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")


def init_ray(cfg: Config, address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
             stop: StopRequest | None = None) -> None:
    """A private local cluster unless ``address`` names one; logical CPUs enough for the workers.

    With ``stop``, Ray leaves SIGINT/SIGTERM to it (a signal while Ray starts is
    answered once ``ray.init`` returns).
    """
    global _private_cluster
    ensure_ray_env()
    import ray

    if ray.is_initialized():
        return
    if address:
        kwargs: dict[str, Any] = dict(address=address, include_dashboard=False, log_to_driver=False)
    else:
        sv = cfg.serving
        need = int(sv.workers * sv.cpus_per_worker + 0.999) + 1
        kwargs = dict(address="local", include_dashboard=False, num_cpus=num_cpus or max(os.cpu_count() or 1, need),
                      num_gpus=num_gpus, log_to_driver=False, configure_logging=False)
    if stop is None:
        ray.init(**kwargs)
    else:
        with ray_leaves_signals_alone(stop):
            ray.init(**kwargs)
    _private_cluster = not address


class _DropLine(logging.Filter):
    """Drops the log records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def _start_serve(host: str, port: int) -> None:
    """Serve's controller and proxy, listening on ``host:port``.

    Every later ``serve.run`` calls Serve's start again without HTTP options (serve.run has
    none: ray/serve/api.py, ``_run_many``) and Serve then logs "Connecting to existing Serve
    app ... New http_options/controller_options will not be applied" (ray/serve/_private/api.py,
    ``serve_start``), though this instance is the one just started with these options. That
    line is dropped once Serve is ours; one from this call itself (joining a cluster whose
    Serve already runs) is true and still printed.
    """
    from ray import serve
    from ray.serve._private.constants import SERVE_LOGGER_NAME

    serve.start(http_options={"host": host, "port": port})
    serve_logger = logging.getLogger(SERVE_LOGGER_NAME)
    if not any(isinstance(f, _DropLine) for f in serve_logger.filters):
        serve_logger.addFilter(_DropLine("Connecting to existing Serve app"))


def start_serving(config_path: str | Path, cfg: Config, host: str, port: int, recorded_dir: str | None = None,
                  state_dir: str | None = None, blocking: bool = False, announce: bool = False,
                  stop: StopRequest | None = None) -> str | None:
    """Deploy the application; returns its URL once it answers (None if ``stop`` came first).

    With ``announce``, it says what it is doing as it goes, and a placeholder answers ``/healthz`` with
    503 ``starting`` and the stage reached until the application replaces it.
    """
    from .builders import build_application

    if state_dir:
        cfg.state_dir = state_dir
    _start_serve(host, port)
    url = f"http://{host}:{port}"
    starting = None
    if announce and not _stopped(stop):
        from .starting import Starting

        starting = _deploy(Starting.bind(cfg.name), stop)
        if starting is None:
            return None
        print(f"skillmoe: {url}/healthz answers 503 'starting' until the deployment is ready", flush=True)

    def stage(text: str) -> None:
        if announce:
            print(f"skillmoe: {text}", flush=True)
        if starting is not None:
            starting.set_progress.remote({"stage": text})

    if _stopped(stop):
        return None
    stage(f"loading profiles of {', '.join(cfg.serving.tasks)} (built on the validation split if missing)")
    app = _interruptible(stop, lambda: build_application(cfg, recorded_dir, progress=announce, cluster_check=True))
    if app is None:
        return None
    stage(f"starting {cfg.serving.workers} worker(s) and the scheduler; models load as the first questions need them")
    return url if _deploy(app, stop) is not None else None


def _stopped(stop: StopRequest | None) -> bool:
    return stop is not None and stop.requested


def _interruptible(stop: StopRequest | None, work: Callable[[], T]) -> T | None:
    """``work()``, cut short by a stop request (then None): profiles may take minutes to build.

    Any KeyboardInterrupt after a stop request counts: a Ray call inside ``work`` turns
    the one raised into a plain KeyboardInterrupt of its own (``ray.get``'s signal check).
    """
    if stop is None:
        return work()
    try:
        with stop.interrupting():
            return work()
    except KeyboardInterrupt:
        if stop.requested:
            return None
        raise


def _deploy(app: Any, stop: StopRequest | None) -> Any:
    """Deploy ``app`` as the application; its handle once it runs, or None if a stop came first.

    ``serve.run`` blocks until the application runs, which on a real pool can be
    long (or forever, if its resources never appear); here the wait is ours, so a
    stop request ends it at once.
    """
    from ray import serve

    try:
        if stop is None:
            return serve.run(app, name=APP_NAME, route_prefix="/")
        (handle,) = serve.run_many([serve.RunTarget(app, name=APP_NAME, route_prefix="/")],
                                   wait_for_applications_running=False)
        while not stop.wait(POLL_S):
            if _running(handle.deployment_name):
                return handle
        return None
    except SkillMoEError:
        raise
    except Exception as exc:  # deployment constructor errors arrive wrapped
        raise SkillMoEError(f"the deployment failed to start: {_root_message(_failure_text(exc))}") from None


def _running(ingress: str) -> bool:
    """Whether the application, with ``ingress`` as its ingress, runs; raises if it failed to deploy."""
    from ray import serve

    status = serve.status().applications.get(APP_NAME)
    if status is None:
        return False
    if status.status == "DEPLOY_FAILED":
        raise SkillMoEError(f"the deployment failed to start: {_root_message(_failure_text(status.message))}")
    return status.status == "RUNNING" and ingress in status.deployments


def _failure_text(first: BaseException | str) -> str:
    """Why the deployment failed: the application's message only says which deployments did; the
    deployments' own messages carry their constructors' errors (the ConfigError to show)."""
    from ray import serve

    texts = [str(first)]
    try:
        status = serve.status().applications.get(APP_NAME)
        texts += [d.message for d in (status.deployments.values() if status else ()) if d.message]
    except Exception:  # noqa: BLE001 - the first message is still worth showing
        pass
    return "\n".join(texts)


def _root_message(exc: BaseException | str) -> str:
    text = str(exc)
    for marker in ("ConfigError: ", "DataError: ", "EngineError: ", "SkillMoEError: "):
        if marker in text:
            return text.split(marker, 1)[1].splitlines()[0]
    return text.strip().splitlines()[-1] if text.strip() else type(exc).__name__


def stop_serving(stop: StopRequest | None = None) -> None:
    """Stop what init_ray and start_serving started, in order, quietly.

    On a private cluster a running application is deleted first, so in-flight
    requests finish (up to Serve's graceful timeout; a second signal skips the
    wait); one still deploying has none, and its replicas still starting would only
    hold the stop up. Then ``ray.shutdown`` ends every process of the cluster and
    waits for them. Serve's
    own ``serve.shutdown`` is not used there: it waits on the controller until the
    controller kills itself, and that wait fails as "ServeController.graceful_shutdown
    failed ... killed by `ray.kill`" (ray/serve/_private/controller.py,
    ``graceful_shutdown``; the controller's tasks retry without end,
    ray/serve/_private/default_impl.py), which Ray prints on the driver at every stop.
    The controller and proxies end with the cluster. On a cluster joined with
    ``--address`` Serve is shut down as before, and Ray only disconnects.
    """
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    try:
        if _private_cluster:
            _drain(stop)
        else:
            serve.shutdown()
    except Exception as exc:  # noqa: BLE001 - the cluster goes next regardless
        logging.getLogger(__name__).debug("stopping the application: %s", exc)
    finally:
        ray.shutdown(wait_for_processes=_private_cluster)


def _drain(stop: StopRequest | None) -> None:
    """Delete the running application and wait (bounded; a second signal ends the wait) until it is gone."""
    from ray import serve

    status = serve.status().applications.get(APP_NAME)
    if status is None or status.status != "RUNNING":
        return
    serve.delete(APP_NAME, _blocking=False)
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline and not (stop is not None and stop.hurried):
        if APP_NAME not in serve.status().applications:
            return
        time.sleep(POLL_S)


def serve_forever(config_path: str | Path, cfg: Config, host: str, port: int, address: str | None,
                  recorded_dir: str | None = None, stop: StopRequest | None = None) -> None:
    """Serve until SIGINT or SIGTERM, at any moment of start-up or serving; then stop everything, quietly.

    ``stop`` is the request the CLI installed before reading the config (one is
    installed here otherwise).
    """
    stop = stop or StopRequest().install()
    try:
        if stop.requested:
            return
        where = f"joining the Ray cluster at {address}" if address else "starting a private local Ray cluster"
        print(f"skillmoe: {where}", flush=True)
        init_ray(cfg, address, stop=stop)
        url = None if stop.requested else start_serving(config_path, cfg, host, port, recorded_dir, announce=True,
                                                        stop=stop)
        if url is not None and not stop.requested:
            print(f"skillmoe: serving {cfg.name} at {url}  (POST {url}/v1/solve, {url}/v1/chat/completions; "
                  f"GET {url}/v1/pool, {url}/healthz) - Ctrl-C to stop", flush=True)
            stop.wait()
    finally:
        if stop.requested:
            print("skillmoe: stopping", flush=True)
        stop_serving(stop)
