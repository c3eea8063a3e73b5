"""Calls to an engine that cannot batch continuously, merged into its next batch (no Ray, no model)."""

from __future__ import annotations

import threading
import time

import pytest

from skillmoe_ray.engines.base import GenerationRequest, SamplingSettings
from skillmoe_ray.engines.merging import MergedCalls
from skillmoe_ray.errors import EngineError


class SlowEngine:
    """One batch at a time, 0.2 s each; refuses a prompt that says "bad"."""

    def __init__(self):
        self.batches: list[list[str]] = []
        self.inside = 0

    def generate(self, requests, sampling):
        self.inside += 1
        assert self.inside == 1, "two batches at once"
        try:
            time.sleep(0.2)
            if any(r.prompt == "bad" for r in requests):
                raise EngineError("no recording for 'bad'")
            self.batches.append([r.prompt for r in requests])
            return [f"{r.prompt}!" for r in requests], [(len(r.prompt), 1) for r in requests]
        finally:
            self.inside -= 1


def _calls(merged: MergedCalls, prompts: list[list[str]], sampling=SamplingSettings()) -> list:
    out: list = [None] * len(prompts)

    def one(i: int) -> None:
        time.sleep(0.02 * i)  # the first one starts a batch; the rest arrive while it runs
        try:
            out[i] = merged.run([GenerationRequest.user(p) for p in prompts[i]], sampling)
        except EngineError as exc:
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    return out


def test_calls_that_arrive_while_a_batch_runs_share_the_next_one():
    engine = SlowEngine()
    merged = MergedCalls(engine.generate)
    out = _calls(merged, [["a"], ["b", "c"], ["d"], ["e"]])
    assert engine.batches == [["a"], ["b", "c", "d", "e"]]
    assert [texts for texts, _ in out] == [["a!"], ["b!", "c!"], ["d!"], ["e!"]]
    assert out[1][1] == [(1, 1), (1, 1)] and (merged.batches, merged.calls) == (2, 4)


def test_a_bad_call_fails_alone_and_other_sampling_waits_for_its_own_batch():
    engine = SlowEngine()
    merged = MergedCalls(engine.generate)
    out = _calls(merged, [["a"], ["bad"], ["c"]])
    assert isinstance(out[1], EngineError) and out[0][0] == ["a!"] and out[2][0] == ["c!"]
    engine = SlowEngine()
    merged = MergedCalls(engine.generate)
    cold, hot = SamplingSettings(temperature=0.0), SamplingSettings(temperature=0.7)
    results: dict[str, list] = {}

    def run(name: str, sampling: SamplingSettings, delay: float) -> None:
        time.sleep(delay)
        results[name] = merged.run([GenerationRequest.user(name)], sampling)[0]

    threads = [threading.Thread(target=run, args=a) for a in (("x", cold, 0), ("y", hot, 0.05), ("z", cold, 0.06))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert results == {"x": ["x!"], "y": ["y!"], "z": ["z!"]}
    assert engine.batches == [["x"], ["y"], ["z"]] or engine.batches == [["x"], ["z"], ["y"]]
    with pytest.raises(EngineError):
        merged.run([GenerationRequest.user("bad")], cold)
