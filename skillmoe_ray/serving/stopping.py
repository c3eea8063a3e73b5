"""Ctrl-C and SIGTERM as a request to stop `skillmoe serve`, answered where stopping is safe.

Python's own answer to SIGINT is a ``KeyboardInterrupt`` raised at whatever
line the main thread is running, and Ray's driver answers SIGTERM with
``sys.exit`` the same way. In a Ray driver that line is often inside Ray or Ray
Serve (deploying, polling the controller, a finaliser), where the exception
can be swallowed (the stop is lost: a second Ctrl-C is needed) or leave a
half-made call behind. So ``skillmoe serve`` takes both signals itself, from
its first line, and only notes them; the start-up checks the note between
steps and the serving loop waits on it, and one orderly shutdown follows. Only
work of our own that may run for minutes (building profiles) is interrupted
where it runs.

Two things in Ray would still get in the way, and :func:`ray_leaves_signals_alone`
keeps them out while ``ray.init`` runs:

* ``ray.init`` replaces the SIGTERM handler with ``sys.exit(signum)``
  (ray/_private/worker.py, ``init``: "terminate any signal before connecting
  driver"), so a SIGTERM while Ray starts ended the process with status 15;
* the driver's C++ core worker installs Abseil's failure-signal handler, which
  covers SIGTERM too (``options.install_failure_signal_handler = not
  ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER`` in _raylet.pyx,
  ray/_private/ray_constants.py:24): a SIGTERM then printed
  ``*** SIGTERM received at time=... ***`` and a C++ stack trace before passing
  the signal on. That is the "stack dump" a SIGTERM at start-up produced. It is
  switched off for the driver only (Ray's processes and workers keep it), and
  Ray enables Python's faulthandler in the driver, so a real crash there still
  prints a stack.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(KeyboardInterrupt):
    """Raised only inside :meth:`StopRequest.interrupting` sections.

    A ``KeyboardInterrupt`` so that code which already handles Ctrl-C (Ray's
    ``ray.get`` turns one into a clean return) treats it as one.
    """


class StopRequest:
    """SIGINT/SIGTERM noted as a request to stop; the second one asks to hurry (skip draining)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signals = 0
        self._interrupting = False

    def install(self) -> StopRequest:
        """Take SIGINT and SIGTERM from now on (main thread only, as Python requires)."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals += 1
        first = not self._event.is_set()
        self._event.set()
        if first and self._interrupting:
            self._interrupting = False
            raise StopRequested()

    def request(self) -> None:
        """Ask to stop without a signal (tests, an embedding program)."""
        self.signals += 1
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    @property
    def hurried(self) -> bool:
        """A second signal came: the user wants out now, not after in-flight requests finish."""
        return self.signals > 1

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until a stop is requested or ``timeout`` passes; whether one was requested."""
        return self._event.wait(timeout)

    @contextlib.contextmanager
    def interrupting(self) -> Iterator[None]:
        """Inside, the first signal raises :class:`StopRequested` where the main thread is.

        For long work of our own only (pure Python, with no Ray call that could
        swallow it); the request is noted as well, so a swallowed raise still stops
        at the next check.
        """
        if self.requested:
            raise StopRequested()
        self._interrupting = True
        try:
            yield
        finally:
            self._interrupting = False


@contextlib.contextmanager
def ray_leaves_signals_alone(stop: StopRequest) -> Iterator[None]:
    """Around ``ray.init``: Ray neither replaces the SIGTERM handler nor adds its C++ dump to it.

    Private hooks of Ray, so each is used only where it exists; our handlers are
    installed again afterwards in any case, which alone would leave only the last
    moments of ``ray.init`` uncovered.
    """
    from ray._private import ray_constants
    from ray._private import utils as ray_utils

    saved_setter = getattr(ray_utils, "set_sigterm_handler", None)
    saved_flag = getattr(ray_constants, "RAY_DISABLE_FAILURE_SIGNAL_HANDLER", None)
    if saved_setter is not None:
        ray_utils.set_sigterm_handler = _keep_our_sigterm_handler
    if saved_flag is not None:
        ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
    try:
        yield
    finally:
        if saved_setter is not None:
            ray_utils.set_sigterm_handler = saved_setter
        if saved_flag is not None:
            ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = saved_flag
        stop.install()


def _keep_our_sigterm_handler(handler: Any) -> None:
    """Stands in for Ray's ``set_sigterm_handler`` during ``ray.init``: the driver's SIGTERM stays ours."""
