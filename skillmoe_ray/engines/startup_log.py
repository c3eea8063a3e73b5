"""Why an engine failed to start, when the reason is only written to stderr.

On a GPU, vLLM runs its engine core in a process of its own. When that process
fails to start (the free-memory check, a KV cache too small for one sequence,
CUDA running out), the caller gets only "Engine core initialization failed. See
root cause above."; the cause was logged by the child to the stderr it
inherited. So while an engine starts, stderr (the file descriptor, which the
child inherits) is a pipe: a thread passes every byte on to the real stderr, as
before, and keeps the last lines, from which a failed start's root cause is read.
The thread lives as long as anything holds the pipe (the engine core process
keeps logging through it), so nothing written later is lost.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections import deque
from typing import Any

#: an exception line as Python (or vLLM's logger) writes it: "ValueError: Free memory on device ..."
_EXCEPTION = re.compile(r"\b((?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception)): (.+)")
#: what the caller is told anyway: not a root cause
_WRAPPERS = ("Engine core initialization failed", "See root cause above")


class StartupLog:
    """A context manager: stderr through a pipe while it is open; ``root_cause()`` after a failure."""

    def __init__(self, keep_lines: int = 400):
        self._lines: deque[str] = deque(maxlen=keep_lines)
        self._partial = b""
        self._saved: int | None = None
        self._thread: threading.Thread | None = None
        self._stream: Any = None
        self._old_stream: Any = None

    def __enter__(self) -> "StartupLog":
        try:
            sys.stderr.flush()
            self._saved = os.dup(2)
            out = os.dup(2)  # where the pump writes, for as long as it runs
            read, write = os.pipe()
            os.dup2(write, 2)
            os.close(write)
        except OSError:  # no stderr to redirect (a closed fd 2): nothing to keep
            self._saved = None
            return self
        self._thread = threading.Thread(target=self._pump, args=(read, out), name="engine-startup-log",
                                        daemon=True)
        self._thread.start()
        # Python's own writes too, where sys.stderr is not fd 2 (a test runner's capture): an engine core run
        # in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) logs through it
        self._old_stream = sys.stderr
        self._stream = open(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
        sys.stderr = self._stream
        return self

    def _pump(self, read: int, out: int) -> None:
        try:
            while True:
                chunk = os.read(read, 65536)
                if not chunk:
                    break
                try:
                    os.write(out, chunk)
                except OSError:
                    pass
                text = self._partial + chunk
                *done, self._partial = text.split(b"\n")
                self._lines.extend(line.decode("utf-8", "replace") for line in done)
        finally:
            os.close(read)
            os.close(out)

    def __exit__(self, *exc: object) -> None:
        if self._saved is None:
            return
        if self._stream is not None:
            if sys.stderr is self._stream:
                sys.stderr = self._old_stream
            self._stream.close()
            self._stream = None
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._saved = None

    def root_cause(self, wait_s: float = 2.0) -> str | None:
        """The last exception line written while the engine started, other than vLLM's wrapper; waits up
        to ``wait_s`` for what is still in the pipe (the pump ends once no process holds it)."""
        if self._thread is not None:
            self._thread.join(timeout=wait_s)
        lines = list(self._lines) + ([self._partial.decode("utf-8", "replace")] if self._partial else [])
        for line in reversed(lines):
            m = _EXCEPTION.search(line)
            if m and not any(w in line for w in _WRAPPERS):
                return f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2).strip()}"
        return None
