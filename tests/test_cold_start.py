"""`skillmoe serve` from nothing: it says what it is doing, and /healthz is 503 `starting` until it is ready."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
import yaml
from conftest import RECORDED_CONFIG, ServeProcess, free_port

pytestmark = pytest.mark.slow


def _health(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:  # the proxy answers plain text before any app is deployed
        data = e.read()
        try:
            return e.code, json.loads(data or b"{}")
        except ValueError:
            return e.code, {"raw": data.decode("utf-8", "replace")}
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, {}


def test_serve_reports_progress_and_readiness(tmp_path):
    cfg = yaml.safe_load(RECORDED_CONFIG.read_text())
    cfg["state_dir"] = str(tmp_path / "state")  # no profiles yet: they are built before serving
    path = tmp_path / "cold.yaml"
    path.write_text(yaml.safe_dump(cfg))
    server = ServeProcess(path, free_port())
    url, proc, lines = server.url, server.proc, server.lines
    seen: list[tuple[int, dict]] = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            status, body = _health(url)
            if status:
                seen.append((status, body))
            if status == 200 or proc.poll() is not None:
                break
            time.sleep(0.2)
        assert seen and seen[-1][0] == 200, seen[-3:]
        starting = [b for s, b in seen if s == 503 and "raw" not in b]
        assert starting and all(b["status"] == "starting" and b.get("stage") for b in starting), seen[:5]
        deadline = time.time() + 60
        while time.time() < deadline and not any(line.startswith("skillmoe: serving") for line in lines):
            time.sleep(0.2)
        req = urllib.request.Request(f"{url}/v1/models")
        with urllib.request.urlopen(req, timeout=30) as r:
            assert json.loads(r.read())["data"][0]["id"] == "skillmoe"
    finally:
        server.stop()
    out = server.output
    assert "starting" in out and "loading profiles" in out and "skillmoe: serving" in out, out[-2000:]
    assert "Traceback" not in out, out[-3000:]
    assert proc.returncode == 0


def test_ctrl_c_the_moment_it_answers_stops_it_cleanly(tmp_path):
    """The application answers /healthz a moment before `serve.run` returns to the CLI: a Ctrl-C that lands
    then stops the server as one later would (exit 0, no traceback), not as an interrupted start."""
    from conftest import ROOT

    server = ServeProcess(ROOT / "examples" / "arithmetic" / "recorded.yaml", free_port(), cwd=tmp_path,
                          state_dir=tmp_path / ".skillmoe")  # not the example's own folder
    try:
        deadline = time.time() + 240
        while time.time() < deadline and server.proc.poll() is None and _health(server.url)[0] != 200:
            time.sleep(0.05)
        assert _health(server.url)[0] == 200, server.output[-3000:]
    finally:
        code = server.stop()
    assert code == 0 and "skillmoe: stopping" in server.output, server.output[-3000:]
    assert "Traceback" not in server.output and "interrupted" not in server.output, server.output[-3000:]
