"""A simulated expert: right with a configured probability, and as slow as a cost model says.

It exists to study scheduling at the paper's scale (16 models of 7-8B on 1-8
GPUs) on a machine without GPUs. Answers are drawn per question and skill; time
is either slept for real (scaled down, so Ray actors, queues and the planner
run for real) or added to a virtual clock for fast sweeps.

Cost model (constants in :class:`CostConstants`, defaults from published
figures; ``benchmarks/latency.py`` refits them to the paper's Table 6):

* load(size)        = load_fixed_s + size_gb / load_gbps
  A cold vLLM start is 30-60 s for an 8B model (engine init, CUDA graphs);
  weights alone over PCIe Gen5 take ~0.3 s for 16 GB, from disk ~8 s at 2 GB/s.
* generate(n, T)    = T * step_s(n), step_s(n) = step_fixed_s + n * step_per_seq_s
  Decoding is memory-bound: one step reads all weights once (16 GB at ~2 TB/s
  HBM: ~8 ms for an 8B model) and each extra sequence in the batch adds a
  little (KV-cache reads), so a batch of n costs far less than n single runs.
  T is the number of generated tokens (mean ``out_tokens``).
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Mapping

from ..answers import LETTERS
from ..tasks import get_task
from .base import Engine, GenerationRequest, SamplingSettings


@dataclass(frozen=True)
class CostConstants:
    load_fixed_s: float = 20.0
    load_gbps: float = 2.0
    step_fixed_s: float = 0.010
    step_per_seq_s: float = 0.0004
    out_tokens: int = 1000
    #: a GPU holds this many sequences at once; bigger batches run in waves
    max_batch: int = 256

    def load_s(self, size_gb: float) -> float:
        return self.load_fixed_s + size_gb / self.load_gbps

    def generate_s(self, n: int, out_tokens: int | None = None) -> float:
        if n <= 0:
            return 0.0
        tokens = self.out_tokens if out_tokens is None else out_tokens
        waves, rest = divmod(n, self.max_batch)
        total = waves * tokens * (self.step_fixed_s + self.max_batch * self.step_per_seq_s)
        if rest:
            total += tokens * (self.step_fixed_s + rest * self.step_per_seq_s)
        return total


class Clock:
    """Where simulated time goes: slept for real (scaled) or added to a virtual total."""

    def __init__(self, virtual: bool = True, scale: float = 1.0):
        self.virtual = virtual
        self.scale = scale
        self.elapsed_s = 0.0
        self._lock = threading.Lock()

    def spend(self, seconds: float) -> None:
        with self._lock:
            self.elapsed_s += seconds
        if not self.virtual and seconds > 0:
            time.sleep(seconds * self.scale)


@dataclass
class SimulatedSpec:
    size_gb: float = 16.0
    accuracy: float = 0.5
    #: per-skill accuracy overrides (a question's accuracy is the mean over its known skills)
    skill_accuracy: Mapping[str, float] = field(default_factory=dict)
    constants: CostConstants = field(default_factory=CostConstants)


class SimulatedEngine(Engine):
    def __init__(self, name: str, spec: SimulatedSpec, clock: Clock | None = None, data_dir: str | None = None):
        super().__init__(name)
        self.spec = spec
        self.clock = clock or Clock(virtual=True)
        self.data_dir = data_dir
        self.loads = 0
        self._golds: dict[str, str] = {}

    def load(self) -> None:
        if not self._loaded:
            self.clock.spend(self.spec.constants.load_s(self.spec.size_gb))
            self.loads += 1
        super().load()

    def resident_bytes(self) -> int:
        return int(self.spec.size_gb * 1e9) if self._loaded else 0

    def accuracy_for(self, skills: list[str]) -> float:
        known = [self.spec.skill_accuracy[s] for s in skills if s in self.spec.skill_accuracy]
        return sum(known) / len(known) if known else self.spec.accuracy

    def _gold(self, key: str | None) -> str | None:
        if not key or key.count("/") != 2:
            return None
        if key not in self._golds:
            from ..tasks import load_questions

            task, split, index = key.split("/")
            if split not in ("train", "test") or not index.isdigit():
                return None
            for q in load_questions(task, split, self.data_dir):  # type: ignore[arg-type]
                self._golds[q.qid] = q.gold or ""
        return self._golds.get(key) or None

    def _answer(self, req: GenerationRequest, sampling: SamplingSettings) -> str:
        """Right with the skill's accuracy; otherwise a wrong option. Deterministic per (model, question, seed)."""
        task_name = (req.key or "GPQA/x/0").split("/")[0]
        try:
            task = get_task(task_name)
        except Exception:
            task = get_task("GPQA")
        h = hashlib.sha256(f"{self.name}|{req.key or req.prompt}|{sampling.seed}".encode()).digest()
        rng = random.Random(h)
        gold = self._gold(req.key)
        right = rng.random() < self.accuracy_for(list(req.meta.get("skills", ())))
        if task.answer_format == "boxed":
            value = gold if (right and gold) else str(rng.randint(0, 999))
            return f"(simulated reasoning) The answer is \\boxed{{{value}}}"
        options = LETTERS[: task.num_choices]
        if right and gold:
            letter = gold
        else:
            letter = rng.choice([c for c in options if c != gold])
        return f"(simulated reasoning) The answer is ({letter})"

    def generate(self, requests: list[GenerationRequest], sampling: SamplingSettings) -> list[str]:
        self.ensure_loaded()
        tokens = min(sampling.max_tokens, self.spec.constants.out_tokens)
        self.clock.spend(self.spec.constants.generate_s(len(requests), tokens))
        return [self._answer(r, sampling) for r in requests]


def spec_from_args(size_gb: float | None, args: Mapping[str, object]) -> SimulatedSpec:
    consts = CostConstants()
    overrides = {k: args[k] for k in CostConstants.__dataclass_fields__ if k in args}
    if overrides:
        consts = replace(consts, **overrides)  # type: ignore[arg-type]
    return SimulatedSpec(
        size_gb=float(size_gb or args.get("size_gb", 16.0)),  # type: ignore[arg-type]
        accuracy=float(args.get("accuracy", 0.5)),  # type: ignore[arg-type]
        skill_accuracy=dict(args.get("skill_accuracy", {})),  # type: ignore[arg-type]
        constants=consts,
    )
