"""`skillmoe serve` stops cleanly at any moment (issue 21).

One Ctrl-C (SIGINT, sent to the process group as a terminal does) or one SIGTERM
(to the process alone, as Kubernetes or a test harness sends it) at any moment of
start-up or serving ends the server with exit status 0: no traceback, no C++
stack dump, no colour codes or Serve chatter in its output, and no process of its
private Ray cluster left behind. The recorded pool serves; its profiles are built
once for the module, so each start takes seconds.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import RECORDED_CONFIG, ServeProcess, free_port
from httpclient import post

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform != "linux", reason="signals and /proc: Linux")]

START_TIMEOUT_S = 240
STOP_TIMEOUT_S = 120
#: the most the cluster's processes may outlive the server (ray.shutdown waits for them, so 0 is expected)
LEFTOVER_TIMEOUT_S = 30

#: what a clean stop never prints
FORBIDDEN = {
    "a Python traceback": re.compile(r"Traceback|Exception ignored"),
    "a C++ stack dump": re.compile(r"\*\*\* (SIG\w+|Signal \d+) received|Stack trace|logging\.cc|Aborted|core dumped"),
    "a colour code": re.compile(r"\x1b\["),
    "Serve's 'will not be applied' line": re.compile(r"will not be applied"),
    "the controller's 'killed by ray.kill' failures": re.compile(r"killed by `?ray\.kill"),
    "an interrupted start": re.compile(r"skillmoe: interrupted"),
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The servers run here; the profiles `skillmoe profile` builds in its .skillmoe serve every start."""
    folder = tmp_path_factory.mktemp("signals")
    exe = Path(sys.executable).with_name("skillmoe")
    r = subprocess.run([str(exe), "profile", "--config", str(RECORDED_CONFIG), "--task", "MMLU_Pro", "--quiet",
                        "--state-dir", str(folder / ".skillmoe")],
                       cwd=folder, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return folder


@pytest.fixture
def server(workdir):
    """A `skillmoe serve` of the recorded pool; whatever is left of it is killed after the test."""
    proc = ServeProcess(RECORDED_CONFIG, free_port(), cwd=workdir, state_dir=workdir / ".skillmoe")
    try:
        yield proc
    finally:
        if proc.proc.poll() is None or proc.session():
            proc.kill()


def takes_sigterm(server: ServeProcess) -> bool:
    """Whether the process catches SIGTERM yet: `skillmoe serve` installs its handler on its first line."""
    try:
        status = Path(f"/proc/{server.proc.pid}/status").read_text()
    except OSError:
        return False
    caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)", status, re.M).group(1), 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def assert_stopped_cleanly(server: ServeProcess, sig: int) -> float:
    """Exit 0 within the timeout, clean output, nothing of its cluster left. Seconds the stop took."""
    t0 = time.monotonic()
    code = server.wait_exit(STOP_TIMEOUT_S)
    took = time.monotonic() - t0
    server.reader.join(timeout=10)
    out = server.output
    assert code == 0, f"{signal.Signals(sig).name}: exit {code}\n{out[-3000:]}"
    found = [what for what, rx in FORBIDDEN.items() if rx.search(out)]
    assert not found, f"{signal.Signals(sig).name}: the output has {', '.join(found)}:\n{out[-3000:]}"
    assert "skillmoe: stopping" in out, out[-3000:]
    deadline = time.monotonic() + LEFTOVER_TIMEOUT_S
    while server.session() and time.monotonic() < deadline:
        time.sleep(0.5)
    left = [(p.pid, " ".join(p.cmdline())[:80]) for p in server.session()]
    assert not left, f"{signal.Signals(sig).name}: processes of the server's session left: {left}"
    return took


def stage(text: str):
    """The moment the server prints a stage line containing ``text``."""
    return lambda server: server.printed(text)


def healthy(server: ServeProcess) -> bool:
    return server.health() == 200


MOMENTS = {
    # the first moment it can answer a signal: its handler is in place, the config still loading
    "launched": takes_sigterm,
    "ray-starting": stage("skillmoe: starting a private local Ray cluster"),
    "profiles-loading": stage("skillmoe: loading profiles"),
    "app-deploying": stage("skillmoe: starting 1 worker(s)"),
    "healthz-200": healthy,
}


@pytest.mark.parametrize("moment,sig", [
    pytest.param(moment, sig, id=f"{moment}-{sig.name}") for moment, sig in [
        ("launched", signal.SIGTERM),
        ("ray-starting", signal.SIGINT),
        ("profiles-loading", signal.SIGTERM),
        ("app-deploying", signal.SIGINT),
        ("healthz-200", signal.SIGTERM),
        ("healthz-200", signal.SIGINT),
    ]])
def test_a_signal_during_start_up_stops_it_cleanly(server, moment, sig):
    assert server.wait_for(lambda: MOMENTS[moment](server), START_TIMEOUT_S, interval=0.02), \
        f"never reached {moment}:\n{server.output[-3000:]}"
    server.signal(sig, group=sig == signal.SIGINT)
    assert_stopped_cleanly(server, sig)


class Load:
    """A few clients posting MMLU-Pro questions to /v1/solve in a loop until told to stop (loopback, bounded)."""

    def __init__(self, url: str, clients: int = 4) -> None:
        from skillmoe_ray.tasks.catalogue import load_questions

        self.url = url
        self.questions = [q.text for q in load_questions("MMLU_Pro", "test")[:200]]
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.started = self.finished = 0
        self.statuses: list[int] = []
        #: (sent, answered, status) of every request, in monotonic seconds
        self.log: list[tuple[float, float, int]] = []
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]
        for t in self.threads:
            t.start()

    def _client(self, i: int) -> None:
        n = i
        while not self.done.is_set():
            with self.lock:
                self.started += 1
            sent = time.monotonic()
            try:
                status = post(f"{self.url}/v1/solve", {"question": self.questions[n % len(self.questions)]},
                              timeout=30)[0]
            except Exception:  # noqa: BLE001 - refused or reset once the server goes
                status = 0
            with self.lock:
                self.finished += 1
                self.statuses.append(status)
                self.log.append((sent, time.monotonic(), status))
            n += len(self.threads)
            if status != 200:  # stopping: no route (404), then nothing listening
                time.sleep(0.1)

    def in_flight(self) -> int:
        with self.lock:
            return self.started - self.finished

    def answered(self) -> int:
        with self.lock:
            return self.statuses.count(200)

    def answered_across(self, moment: float) -> list[int]:
        """The statuses of the requests sent before ``moment`` and answered after it."""
        with self.lock:
            return [status for sent, answered, status in self.log if sent < moment < answered]

    def stop(self) -> None:
        self.done.set()
        for t in self.threads:
            t.join(timeout=40)


@pytest.mark.parametrize("sig,again", [(signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["SIGTERM", "SIGINT-twice"])
def test_a_signal_under_load_stops_it_cleanly(server, sig, again):
    """Requests in flight when the signal comes are answered (the application drains before the cluster goes);
    a second Ctrl-C while it stops skips that wait, and it still stops cleanly."""
    assert server.wait_for(lambda: healthy(server), START_TIMEOUT_S), server.output[-3000:]
    load = Load(server.url)
    try:
        assert server.wait_for(lambda: load.answered() >= 20, 120), (load.statuses[-10:], server.output[-3000:])
        busy = server.wait_for(lambda: load.in_flight() > 0, 10, interval=0.001)
        signalled = time.monotonic()
        server.signal(sig, group=sig == signal.SIGINT)
        assert busy, "no request was in flight"
        if again:
            assert server.wait_for(lambda: server.printed("skillmoe: stopping"), 30), server.output[-3000:]
            server.signal(sig, group=True)
        assert_stopped_cleanly(server, sig)
    finally:
        load.stop()
    assert not any(t.is_alive() for t in load.threads)
    in_flight = load.answered_across(signalled)
    assert in_flight, "no request was in flight when the signal came"
    if not again:
        assert in_flight == [200] * len(in_flight), in_flight
