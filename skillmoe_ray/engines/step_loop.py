"""Continuous batching over an engine's own step loop: requests of many callers in one running batch.

vLLM's ``LLM.generate`` adds its prompts and steps the engine until they are all
done: one caller at a time, and a prompt that comes while it runs waits for the
whole batch. Its engine underneath (``LLM.llm_engine``: ``add_request``,
``step``, ``abort_request``, ``has_unfinished_requests``) batches whatever
requests it holds at each step. This loop drives that engine from one thread:
callers on any thread add requests (they join at the next step) and wait for
theirs; a streaming caller gets each step's new text. Adding and stepping take
one lock, so the engine is never used by two threads at once.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

_DONE = object()


@dataclass
class _Request:
    #: each of the engine's outputs for it, as they come (a streaming caller reads them as they come)
    outputs: "queue.Queue[Any]" = field(default_factory=queue.Queue)
    final: Any = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class StepLoop:
    """One engine's requests, stepped together by whichever thread is driving."""

    def __init__(self, engine: Any, next_id: Callable[[], str], on_start: Callable[[], None] | None = None):
        self.engine = engine
        self._next_id = next_id
        #: run first on each driving thread (per-thread settings the engine needs: vLLM CPU's thread count)
        self._on_start = on_start
        self._lock = threading.Lock()
        self._requests: dict[str, _Request] = {}
        self._driver: threading.Thread | None = None
        #: most requests in the engine at one step (tests and benchmarks read it)
        self.peak = 0

    def add(self, prompt: Any, params: Any) -> tuple[str, _Request]:
        """Add one request (it joins the running batch at the next step); its id and its handle."""
        with self._lock:
            rid = self._next_id()
            req = _Request()
            self.engine.add_request(rid, prompt, params)
            self._requests[rid] = req
            if self._driver is None or not self._driver.is_alive():
                self._driver = threading.Thread(target=self._drive, name="vllm-step-loop", daemon=True)
                self._driver.start()
        return rid, req

    def run(self, prompts: list, params: list) -> list[Any]:
        """Final outputs for each prompt, in order; they run beside every other caller's requests."""
        added = [self.add(p, sp) for p, sp in zip(prompts, params)]
        for _, req in added:
            req.done.wait()
        for rid, req in added:
            if req.error is not None:
                raise req.error
        return [req.final for _, req in added]

    def stream(self, prompt: Any, params: Any) -> Iterator[Any]:
        """Each step's output for one request, as it comes; closing early aborts it in the engine."""
        rid, req = self.add(prompt, params)
        finished = False
        try:
            while True:
                out = req.outputs.get()
                if out is _DONE:
                    break
                finished = finished or bool(getattr(out, "finished", False))
                yield out
            if req.error is not None:
                raise req.error
            finished = True
        finally:
            if not finished:
                self.abort(rid)

    def abort(self, rid: str) -> None:
        with self._lock:
            req = self._requests.pop(rid, None)
            try:
                self.engine.abort_request([rid])
            except Exception:  # noqa: BLE001 - finished meanwhile
                pass
        if req is not None:
            req.outputs.put(_DONE)
            req.done.set()

    def _drive(self) -> None:
        if self._on_start is not None:
            self._on_start()
        while True:
            with self._lock:
                if not self._requests or not self.engine.has_unfinished_requests():
                    self._fail_all(None)
                    self._driver = None
                    return
                self.peak = max(self.peak, len(self._requests))
                try:
                    outs = self.engine.step()
                except Exception as exc:  # noqa: BLE001 - every waiting caller gets the engine's error
                    self._fail_all(exc)
                    self._driver = None
                    return
                for out in outs:
                    req = self._requests.get(out.request_id)
                    if req is None:
                        continue
                    req.outputs.put(out)
                    if out.finished:
                        req.final = out
                        del self._requests[out.request_id]
                        req.outputs.put(_DONE)
                        req.done.set()

    def _fail_all(self, exc: BaseException | None) -> None:
        """Release every caller still waiting (the engine failed, or lost their requests)."""
        for rid, req in list(self._requests.items()):
            req.error = exc or RuntimeError(f"request {rid} left the engine unfinished")
            req.outputs.put(_DONE)
            req.done.set()
        self._requests.clear()
