"""The executor protocol over a :class:`~.scheduler.Scheduler` for synchronous callers (benchmarks, tests)."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

from ..engines.base import SamplingSettings
from ..execution import ExpertPlan

if TYPE_CHECKING:
    from ..scheduling.planner import Assignment
    from .scheduler import Scheduler


class RayExecutor:
    """The scheduler's event loop runs on a thread of its own, so ``run`` can be called from plain code."""

    def __init__(self, scheduler: "Scheduler"):
        self.scheduler = scheduler
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="scheduler-loop", daemon=True)
        self._thread.start()

    @property
    def unhealthy(self) -> dict[str, str]:
        return self.scheduler.unhealthy

    @property
    def expert_names(self) -> list[str]:
        return self.scheduler.expert_names

    @property
    def last_assignment(self) -> "Assignment | None":
        return self.scheduler.last_assignment

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def run(self, plan: ExpertPlan, sampling: SamplingSettings) -> dict[tuple[int, int], str]:
        return self.call(self.scheduler.run_plan(plan, sampling))

    def close(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.scheduler.stop_probing(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
