"""A Ray node removed under load (real raylets, Ray's `Cluster`): nothing hangs, the pool shrinks and grows back.

Runs `benchmarks/node_loss.py` in a subprocess, so its multi-node cluster stays apart from the test
session's own Ray.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_losing_a_gpu_node_under_load_hangs_nothing_and_the_pool_grows_back():
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "node_loss.py"), "--requests", "240",
                           "--remove-after", "60", "--no-write"], env=env, capture_output=True, text=True,
                          timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[len("RESULT "):])
    statuses = result["statuses"]
    # every request got an answer, or a 503/504 that says why; none hung (client timeout 60 s)
    assert set(statuses) <= {"200", "503", "504"}, statuses
    assert result["slowest_request_s"] < 60
    assert statuses.get("200", 0) >= 240 - 32  # at most what was in flight when the node went
    # the pool shrank to the surviving node, served, then grew back when a node joined
    assert result["workers_alive_after_removal"] == 2
    assert result["grow_back_s"] == result["grow_back_s"] and result["grow_back_s"] < 120  # not NaN
    assert result["later_requests"] == {"200": 20}
