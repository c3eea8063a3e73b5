"""Prometheus metrics through Ray's metrics API, so they appear wherever Ray's export goes.

Ray exports every process's metrics on each node's metrics export port
(``ray start --metrics-export-port``, or ``_metrics_export_port`` in
``ray.init``), prefixed ``ray_``: ``skillmoe_requests_total`` is scraped as
``ray_skillmoe_requests_total``. ``deployments/grafana/skillmoe.json`` is a
dashboard over them.

Metric objects are made on first use in the process that records them (an
ingress replica, the scheduler, a worker), and recording never raises: a
metrics problem must not fail a request.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

#: seconds: from a millisecond of skills to minutes of model loads on a GPU
LATENCY_BOUNDARIES = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256]

_SPECS: dict[str, tuple[str, str, tuple[str, ...], list[float] | None]] = {
    "requests": ("counter", "HTTP requests by endpoint and status", ("endpoint", "status"), None),
    "stage_seconds": ("histogram", "seconds a request spent in each stage (skills, recruitment, queue, experts, "
                      "aggregation, request)", ("stage",), LATENCY_BOUNDARIES),
    "batch_size": ("histogram", "prompts in each call the scheduler sends an expert (joining whatever it runs already)", (), BATCH_BOUNDARIES),
    "queue_depth": ("gauge", "questions admitted by the scheduler and not yet answered", (), None),
    "expert_calls": ("counter", "prompts answered per expert", ("expert",), None),
    "tokens": ("counter", "tokens of model calls for answered requests", ("kind",), None),
    "aggregator_fallbacks": ("counter", "answers that fell back to a vote because the aggregator failed",
                             ("task",), None),
    "unhealthy_experts": ("gauge", "experts out of service (their load failed)", (), None),
    "workers_alive": ("gauge", "workers the scheduler plans on (lost ones rejoin when they answer again)", (), None),
    "worker_loads": ("counter", "models brought onto a worker's device, by how (load from disk, wake from host)",
                     ("worker", "how"), None),
    "worker_load_seconds": ("histogram", "seconds a worker spent bringing a model in", ("worker", "how"),
                            LATENCY_BOUNDARIES),
    "worker_evictions": ("counter", "models a worker took off its device (park to host, release)",
                         ("worker", "kind"), None),
}

_made: dict[str, Any] = {}


def _metric(name: str) -> Any:
    if name not in _made:
        from ray.util import metrics

        kind, desc, tags, bounds = _SPECS[name]
        full = f"skillmoe_{name}" + ("_total" if kind == "counter" else "")
        if kind == "counter":
            _made[name] = metrics.Counter(full, description=desc, tag_keys=tags)
        elif kind == "gauge":
            _made[name] = metrics.Gauge(full, description=desc, tag_keys=tags)
        else:
            _made[name] = metrics.Histogram(full, description=desc, boundaries=bounds, tag_keys=tags)
    return _made[name]


def _safe(fn: Any) -> Any:
    def wrapped(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:  # noqa: BLE001 - never fail a request for a metric
            log.debug("metric %s not recorded", fn.__name__, exc_info=True)

    wrapped.__name__ = fn.__name__
    return wrapped


@_safe
def request(endpoint: str, status: int) -> None:
    _metric("requests").inc(1, tags={"endpoint": endpoint, "status": str(status)})


@_safe
def stages(timings: dict[str, float]) -> None:
    names = {"skills": "skills", "route": "recruitment", "queue": "queue", "experts": "experts",
             "aggregate": "aggregation", "request": "request"}
    for key, stage in names.items():
        if key in timings:
            _metric("stage_seconds").observe(float(timings[key]), tags={"stage": stage})


@_safe
def batch(size: int) -> None:
    _metric("batch_size").observe(float(size))


@_safe
def queue_depth(n: int) -> None:
    _metric("queue_depth").set(float(n))


@_safe
def answered(experts: list[str], prompt_tokens: int, completion_tokens: int) -> None:
    for e in experts:
        _metric("expert_calls").inc(1, tags={"expert": e})
    if prompt_tokens:
        _metric("tokens").inc(prompt_tokens, tags={"kind": "prompt"})
    if completion_tokens:
        _metric("tokens").inc(completion_tokens, tags={"kind": "completion"})


@_safe
def aggregator_fallback(task: str) -> None:
    _metric("aggregator_fallbacks").inc(1, tags={"task": task})


@_safe
def unhealthy(n: int) -> None:
    _metric("unhealthy_experts").set(float(n))


@_safe
def workers_alive(n: int) -> None:
    _metric("workers_alive").set(float(n))


@_safe
def brought_in(worker: int, how: str, seconds: float) -> None:
    if how == "resident":
        return
    _metric("worker_loads").inc(1, tags={"worker": str(worker), "how": how})
    _metric("worker_load_seconds").observe(seconds, tags={"worker": str(worker), "how": how})


@_safe
def evicted(worker: int, kind: str) -> None:
    _metric("worker_evictions").inc(1, tags={"worker": str(worker), "kind": kind})
