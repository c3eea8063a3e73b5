"""How long an expert's job should take, learned from what the workers report.

A job's deadline decides when the scheduler looks at its worker: a batch of
4,096-token answers (32,768 for a reasoning model) runs minutes on a real GPU,
so a deadline from a fixed guess either fires on healthy workers or never fires
at all. Each finished job reports its load (or wake) time, its generation time
and the longest completion in its batch; per expert the scheduler keeps a moving
average of the load and wake times and of the seconds per decode step (a batch
decodes its sequences together, so its time follows its longest one), and
predicts a job as bring + prefill + max_tokens x step. Before an expert has
been measured, the prediction is generous (:data:`UNMEASURED_STEP_S` a token).

A deadline passing is a question, not a verdict: the scheduler asks the
worker whether it is alive and working before calling it lost (see
``Scheduler._job``), so a slow worker is never declared lost for being slow.
Pure, plain data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

#: seconds per decode step assumed before an expert's first job is measured: 10 tokens/s, slower than
#: any GPU serves a 7-9B model and than vLLM's CPU build serves a 1.5B one
UNMEASURED_STEP_S = 0.1
#: weight of a new measurement in the moving averages
ALPHA = 0.3


def _ewma(old: float | None, new: float) -> float:
    return new if old is None else (1 - ALPHA) * old + ALPHA * new


@dataclass
class ExpertTimes:
    load_s: float | None = None
    wake_s: float | None = None
    #: seconds per decode step (one token of every sequence in the batch)
    step_s: float | None = None
    #: seconds of a batch that is not decode steps (prefill, scheduling), per job
    fixed_s: float | None = None
    #: seconds a generate call takes, as they ran (shared with whatever else ran on the engine)
    call_s: float | None = None
    jobs: int = 0


@dataclass
class JobTimes:
    """Per expert, measured times; predictions fall back on ``prior`` (load and wake seconds by expert)."""

    prior_load_s: Mapping[str, float] = field(default_factory=dict)
    prior_wake_s: Mapping[str, float] = field(default_factory=dict)
    experts: dict[str, ExpertTimes] = field(default_factory=dict)

    def observe(self, expert: str, job: Mapping[str, Any], completions: list[int]) -> None:
        """Learn from one finished job: ``job`` is the worker's report (load_s, generate_s, bring), and
        ``completions`` the completion tokens of each of its items."""
        t = self.experts.setdefault(expert, ExpertTimes())
        t.jobs += 1
        bring = job.get("bring")
        if bring == "load":
            t.load_s = _ewma(t.load_s, float(job.get("load_s", 0.0)))
        elif bring == "wake":
            t.wake_s = _ewma(t.wake_s, float(job.get("load_s", 0.0)))
        steps = max(completions, default=0)
        generate = float(job.get("generate_s", 0.0))
        t.call_s = _ewma(t.call_s, generate)
        if steps > 0:
            t.step_s = _ewma(t.step_s, generate / steps)
        else:
            t.fixed_s = _ewma(t.fixed_s, generate)

    def measured(self, expert: str) -> bool:
        t = self.experts.get(expert)
        return t is not None and t.step_s is not None

    def bring_s(self, expert: str, bring: str) -> float:
        t = self.experts.get(expert, ExpertTimes())
        if bring == "resident":
            return 0.0
        if bring == "wake":
            return t.wake_s if t.wake_s is not None else self.prior_wake_s.get(expert, 0.0)
        return t.load_s if t.load_s is not None else self.prior_load_s.get(expert, 0.0)

    def predict(self, expert: str, bring: str, max_tokens: int) -> float:
        """Seconds the job should take at most: bring the model in, then decode ``max_tokens`` steps."""
        t = self.experts.get(expert, ExpertTimes())
        step = t.step_s if t.step_s is not None else UNMEASURED_STEP_S
        return self.bring_s(expert, bring) + (t.fixed_s or 0.0) + max_tokens * step

    def call_s(self, expert: str) -> float:
        """Seconds one generate call of this expert takes as they have been running (0: none measured)."""
        t = self.experts.get(expert)
        return t.call_s if t is not None and t.call_s is not None else 0.0

    def summary(self) -> dict[str, dict[str, Any]]:
        return {e: {"load_s": t.load_s, "wake_s": t.wake_s, "step_s": t.step_s, "jobs": t.jobs}
                for e, t in sorted(self.experts.items())}
