"""Prometheus metrics through Ray's metrics API: scraped from Ray's own export port, with the values the test caused."""

from __future__ import annotations

import os
import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from httpclient import get, post

pytestmark = pytest.mark.slow

_LINE = re.compile(r'^(\w+)(?:\{(.*)\})?\s+([0-9.eE+-]+|NaN|\+Inf)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
#: Ray's own labels on every series: not what a test selects by
_RAY_LABELS = {"Component", "NodeAddress", "SessionName", "Version", "WorkerId", "JobId", "otel_scope_name",
               "otel_scope_schema_url", "otel_scope_version"}


def scrape() -> dict[tuple[str, frozenset], float]:
    """The export as {(metric, labels): value}, summed over Ray's per-process series."""
    port = os.environ["SKILLMOE_TEST_METRICS_PORT"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[tuple[str, frozenset], float] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m or not m.group(1).startswith("ray_skillmoe_"):
            continue
        labels = frozenset((k, v) for k, v in _LABEL.findall(m.group(2) or "") if k not in _RAY_LABELS)
        key = (m.group(1), labels)
        out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


def total(snap: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in snap.items() if n == name and want <= set(ls))


def test_metrics_are_exported_with_the_values_caused(ray_cluster, served_recorded, recorded_runtime):
    from skillmoe_ray.tasks.catalogue import get_task

    qs = [q.text for q in recorded_runtime.questions(get_task("MMLU_Pro"), "test")[300:312]]
    before = scrape()
    with ThreadPoolExecutor(12) as pool:
        assert list(pool.map(lambda q: post(f"{served_recorded}/v1/solve", {"question": q})[0], qs)) == [200] * 12
    for _ in range(3):
        assert post(f"{served_recorded}/v1/solve", {"question": "  "})[0] == 422
    assert get(f"{served_recorded}/v1/no-such-thing")[0] == 404

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    deadline = time.time() + 90  # Ray exports every few seconds
    while True:
        after = scrape()
        ok = (delta("ray_skillmoe_requests_total", endpoint="/v1/solve", status="200") >= 12
              and delta("ray_skillmoe_requests_total", endpoint="/v1/solve", status="422") >= 3
              and delta("ray_skillmoe_requests_total", endpoint="unmatched", status="404") >= 1
              and delta("ray_skillmoe_stage_seconds_count", stage="experts") >= 12
              and delta("ray_skillmoe_expert_calls_total") >= 36
              and delta("ray_skillmoe_tokens_total", kind="completion") > 0)
        if ok or time.time() > deadline:
            break
        time.sleep(2)
    assert delta("ray_skillmoe_requests_total", endpoint="/v1/solve", status="200") >= 12
    assert delta("ray_skillmoe_requests_total", endpoint="/v1/solve", status="422") >= 3
    assert delta("ray_skillmoe_requests_total", endpoint="unmatched", status="404") >= 1
    for stage in ("skills", "recruitment", "queue", "experts", "aggregation", "request"):
        assert delta("ray_skillmoe_stage_seconds_count", stage=stage) >= 12, stage
    assert delta("ray_skillmoe_expert_calls_total") >= 36  # k = 3 experts for each of 12 questions
    assert delta("ray_skillmoe_tokens_total", kind="prompt") > 0
    assert delta("ray_skillmoe_batch_size_count") >= 1
    # series that exist once the pool has run: worker loads, the queue gauge
    assert total(after, "ray_skillmoe_worker_loads_total", how="load") >= 1
    assert any(n == "ray_skillmoe_queue_depth" for n, _ in after)


def test_grafana_dashboard_queries_only_metrics_that_exist():
    import json
    from pathlib import Path

    from skillmoe_ray.serving.metrics import _SPECS

    dash = json.loads((Path(__file__).resolve().parent.parent / "deployments/grafana/skillmoe.json").read_text())
    exported = set()
    for name, (kind, *_rest) in _SPECS.items():
        base = f"ray_skillmoe_{name}"
        exported |= {base + "_total"} if kind == "counter" else {base} if kind == "gauge" else \
            {base + s for s in ("_bucket", "_sum", "_count")}
    used = {m for p in dash["panels"] for t in p["targets"] for m in re.findall(r"ray_skillmoe_\w+", t["expr"])}
    assert used and used <= exported, used - exported
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
