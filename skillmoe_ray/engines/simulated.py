"""A simulated expert: right with a configured probability, and as slow as a cost model says.

It exists to study scheduling at the paper's scale (16 models of 7-8B on 1-8
GPUs) on a machine without GPUs. Answers are drawn per question and skill; time
is either slept for real (scaled down, so Ray actors, queues and the planner
run for real) or added to a virtual clock for fast sweeps.

Cost model (constants in :class:`CostConstants`; ``benchmarks/latency.py`` fits
the two that matter most to the paper's Table 6 and checks the rest):

* Cold load (from disk) = ``load_fixed_s + size_gb / load_gbps``. A cold vLLM
  start is 30-60 s for an 8B model (engine init, CUDA graphs); the weights
  alone from disk take ~8 s at 2 GB/s.
* Wake (from host memory) = ``wake_fixed_s + size_gb / h2d_gbps``: a model
  parked in (pinned) host memory comes back with one host-to-device copy,
  ~0.3 s for 16 GB over PCIe Gen5 (~55 GB/s); vLLM's own sleep/wake takes
  about 2.2 s for 8B.
* ``release_s`` is paid after a model is released: the reference
  implementation sleeps 10 s after each expert.
* Generation: a response's length is exponential with mean ``out_tokens``,
  cut at ``cap_tokens`` (the max_tokens setting; 0 means every response has
  exactly ``out_tokens``). Decoding is memory-bound: one step reads all the
  weights once (``step_fixed_s``) and each running sequence adds its KV-cache
  reads: ``step_per_seq_s + kv_s_per_token * context``, where a sequence's
  context averages ``prompt_tokens + E[length]`` over its life (exponential
  lengths). An 8B Llama holds 128 KiB of KV per token; read at ~1.5 TB/s
  that is ~8.5e-8 s per token per step. A batch of n runs until its longest response
  ends, so it costs ``step_fixed_s * E[longest of n] + step_per_seq_s * n *
  E[length]``: batching is almost free until the batch's longest response
  reaches the cap. For exponential lengths E[longest of n, cut at c] is
  ``mean * sum_{k=1..n} (1 - exp(-c/mean))**k / k``. A GPU runs at most
  ``max_batch`` sequences at once, and fewer when the KV cache (``kv_tokens``)
  is full: ``kv_tokens / (prompt_tokens + E[length])`` of them. Past that,
  continuous batching is throughput-bound: all n * E[length] tokens, c at a
  time. A batch takes the larger of the two bounds.
* Prompts: a question's prompt is ``prompt_tokens`` long. A prompt that
  quotes other models' answers (the aggregator's, MoA's second layer) is
  longer by those answers' lengths: a simulated answer carries its simulated
  length in its text (``[simulated reasoning: N tokens]``), and the engine
  counts what it reads. A reasoning model (``answer_tokens`` > 0) puts all but
  ``answer_tokens`` of its response in a ``<think>`` section, which the
  aggregation prompt strips as the reference does. Prefill costs
  ``prefill_s_per_token`` per prompt token (compute-bound: ~6e-5 s for an 8B
  model on an H100, ~16k tokens/s), and a long prompt takes KV cache, so
  fewer sequences run at once.
* Tensor parallel over g GPUs divides a step (and prefill) by
  ``1 + (g - 1) * tp_efficiency``, and holds g times the KV cache (each GPU
  keeps 1/g of every token's KV heads).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import threading
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Iterator, Mapping

from ..tasks.answers import LETTERS
from ..errors import DataError
from ..tasks.catalogue import BoxedFormat, Catalogue, ChoiceFormat, NumberFormat, catalogue_or_builtin
from .base import Engine, GenerationRequest, SamplingSettings
from .sharing import Cohort, SharedDecode

if TYPE_CHECKING:
    from ..memory import Footprint

@dataclass(frozen=True)
class CostConstants:
    load_fixed_s: float = 20.0
    load_gbps: float = 2.0
    wake_fixed_s: float = 0.2
    h2d_gbps: float = 25.0
    release_s: float = 0.0
    step_fixed_s: float = 0.010
    step_per_seq_s: float = 0.0004
    out_tokens: int = 1000
    #: longest response (max_tokens); 0: every response is exactly ``out_tokens`` long
    cap_tokens: int = 0
    #: a GPU runs at most this many sequences at once (continuous batching) ...
    max_batch: int = 256
    #: ... and fewer when their KV cache (tokens it can hold; 0: no limit) is full
    kv_tokens: int = 0
    prompt_tokens: int = 300
    #: seconds a step spends reading one token of one sequence's KV cache
    kv_s_per_token: float = 0.0
    #: seconds of prefill per prompt token
    prefill_s_per_token: float = 0.0
    #: a reasoning model's answer after its ``<think>`` section, in tokens (0: no thinking section); a prompt
    #: that quotes the answer reads only this part, as the reference strips the thinking before aggregation
    answer_tokens: int = 0
    #: see the module docstring; 0.33 makes four GPUs ~2x one, what an 8B decode step gets after its all-reduces
    tp_efficiency: float = 0.33

    def load_s(self, size_gb: float) -> float:
        """Cold load from disk."""
        return self.load_fixed_s + size_gb / self.load_gbps

    def wake_s(self, size_gb: float) -> float:
        """Load of a model parked in host memory."""
        return self.wake_fixed_s + size_gb / self.h2d_gbps

    def disk_to_host_s(self, size_gb: float) -> float:
        """Reading the weights into host memory (what a prefetch overlaps with generation)."""
        return size_gb / self.load_gbps

    def lengths(self, n: int, cap: int | None = None, draws: float | None = None) -> tuple[float, float]:
        """(expected longest response of n, expected response length), in tokens. ``draws``: the number of
        independent lengths the longest is taken over when it is not ``n`` (see :func:`independent_draws`)."""
        mean = float(self.out_tokens)
        cap = self.cap_tokens if cap is None else cap
        if n <= 0 or mean <= 0:
            return 0.0, 0.0
        if cap <= 0:
            return mean, mean
        if cap <= mean * 1e-9:
            return float(cap), float(cap)
        u = _cap_share(cap, mean)
        return mean * _harmonic(n if draws is None else draws, u), mean * u

    def concurrency(self, mean_len: float, prompt_tokens: float | None = None, tp: int = 1) -> int:
        """Sequences that run at once: ``max_batch``, or fewer when the KV cache fills first."""
        c = self.max_batch
        if self.kv_tokens > 0:
            prompt = self.prompt_tokens if prompt_tokens is None else prompt_tokens
            c = min(c, int(self.kv_tokens * max(1, tp) // max(1.0, prompt + mean_len)))
        return max(1, c)

    def cap_share(self, out_tokens: int | None = None) -> float:
        """E[min(L, cap)] / E[L] for an exponential length L under a max_tokens of ``out_tokens``: the weight
        of :meth:`lengths`'s harmonic sums (1 where no cap cuts an exponential length)."""
        c = self._capped(out_tokens)
        return _cap_share(c.cap_tokens, c.out_tokens) if c.cap_tokens > 0 and c.out_tokens > 0 else 1.0

    def mean_length(self, out_tokens: int | None = None) -> float:
        """Expected length of one response under a max_tokens of ``out_tokens``."""
        return self._capped(out_tokens).lengths(1)[1]

    def quoted_length(self, out_tokens: int | None = None) -> float:
        """Tokens a prompt gains by quoting one answer (its thinking stripped)."""
        mean = self.mean_length(out_tokens)
        return min(mean, float(self.answer_tokens)) if self.answer_tokens > 0 else mean

    def _capped(self, out_tokens: int | None) -> "CostConstants":
        if out_tokens is None:
            return self
        if self.cap_tokens > 0:
            return replace(self, cap_tokens=min(self.cap_tokens, out_tokens))
        return replace(self, out_tokens=min(self.out_tokens, out_tokens))

    def generate_s(self, n: int, out_tokens: int | None = None, tp: int = 1,
                   prompt_tokens: float | None = None, draws: float | None = None) -> float:
        """Seconds for a batch of n prompts of ``prompt_tokens`` each (default: ``self.prompt_tokens``);
        ``out_tokens`` caps the lengths (a request's max_tokens); ``draws``: see :meth:`lengths`."""
        if n <= 0:
            return 0.0
        prompt = self.prompt_tokens if prompt_tokens is None else prompt_tokens
        longest, mean = self._capped(out_tokens).lengths(n, draws=draws)
        c = self.concurrency(mean, prompt, tp)
        # a sequence's step reads its KV cache: prompt + mean tokens on average over its life
        per_seq = self.step_per_seq_s + self.kv_s_per_token * (prompt + mean)
        # latency bound: the longest response, with every sequence's reads on the way
        latency = self.step_fixed_s * longest + per_seq * n * mean
        # throughput bound (continuous batching): all tokens, c sequences at a time
        throughput = n * mean / c * (self.step_fixed_s + c * per_seq)
        prefill = n * prompt * self.prefill_s_per_token
        speedup = 1.0 + (max(1, tp) - 1) * self.tp_efficiency
        return (prefill + max(latency, throughput)) / speedup


def _cap_share(cap: float, mean: float) -> float:
    return 1.0 - math.exp(-cap / mean)


def _harmonic(m: float, u: float) -> float:
    """sum(u**k / k, k = 1..m), linear between whole m (0 at 0): the expected longest of m exponential
    lengths in units of the mean (``u`` < 1 when a cap cuts them)."""
    whole = int(m)
    h = sum(u**k / k for k in range(1, whole + 1))
    return h + (m - whole) * u ** (whole + 1) / (whole + 1) if m > whole else h


def _inverse_harmonic(h: float, u: float) -> float:
    """The m whose :func:`_harmonic` is ``h``."""
    m, acc = 0, 0.0
    while True:
        step = u ** (m + 1) / (m + 1)
        if acc + step >= h or step <= 0:
            return m + ((h - acc) / step if step > 0 else 0.0)
        acc += step
        m += 1


def independent_draws(requests: list[GenerationRequest], u: float = 1.0) -> float:
    """How many independent lengths a call's longest response is the longest of.

    Prompts of different questions are independent draws. Several prompts of one question to one expert
    (``meta["sibling"]``: rank r of n) are one question's n draws, ranked: a call holding ranks up to r
    waits for the r-th shortest of n, whose expectation is the mean times H(n) - H(n - r), and counts as
    the number of independent draws with that expected longest. A call with every rank counts n, as
    before; one with only the top rank counts nearly n too, so three prompts split over three calls do
    not each finish at the mean length, as if the question did not wait for the longest of three."""
    alone = 0
    top: dict[object, tuple[int, int]] = {}
    for r in requests:
        sib = r.meta.get("sibling")
        if not sib:
            alone += 1
            continue
        question, rank, of = sib
        top[question] = (max(rank, top.get(question, (0, of))[0]), of)
    return alone + sum(_inverse_harmonic(_harmonic(of, u) - _harmonic(of - rank, u), u)
                       for rank, of in top.values())


#: how a simulated answer states its simulated length, so a prompt quoting it is as long as it would be
QUOTED_LENGTH = re.compile(r"\[simulated reasoning: (\d+) tokens\]")
#: what :meth:`SimulatedEngine.stream` yields at a time: a word and the space after it
STREAM_PIECE = re.compile(r"\s*\S+\s*")


def quoted_tokens(req: GenerationRequest) -> int:
    """Simulated answers a prompt quotes (an aggregator's or a later MoA layer's) make it this much longer."""
    return sum(int(m) for msg in req.messages for m in QUOTED_LENGTH.findall(msg.get("content", "")))


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
    #: KV cache it reserves (GiB), as a vLLM engine's kv_cache_gb; default: as memory.footprint sizes one
    kv_cache_gb: float | None = None


class SimulatedEngine(Engine):
    """Tiers: on the device (loaded), parked in host memory, or on disk.

    ``prefetch`` reads a model's weights from disk into host memory in the
    background (with a real clock it sleeps on its own thread, so it overlaps
    whatever the worker does meanwhile; a virtual clock counts it as fully
    overlapped). A load then costs a wake instead of a cold start.
    """

    can_park = True
    can_prefetch = True

    def __init__(self, name: str, spec: SimulatedSpec, clock: Clock | None = None,
                 catalogue: Catalogue | None = None, tp: int = 1):
        super().__init__(name)
        self.spec = spec
        self.clock = clock or Clock(virtual=True)
        self.catalogue = catalogue_or_builtin(catalogue)
        self.tp = max(1, tp)
        self.loads = 0
        self.wakes = 0
        self._parked = False
        self._prefetch: threading.Thread | None = None
        self._golds: dict[str, str] = {}
        #: on a real clock, calls that overlap share decode steps (continuous batching; see .sharing)
        self.continuous = not self.clock.virtual
        self._decode = SharedDecode(self.spec.constants.step_fixed_s, self.clock.scale) \
            if self.continuous else None

    @property
    def parked(self) -> bool:
        return self._parked

    @property  # type: ignore[override]
    def size_gb(self) -> float:
        return self.spec.size_gb

    def footprint(self) -> "Footprint":
        """A vLLM engine's footprint for its weights: KV cache, activations and a CUDA context that stays
        on the device while it sleeps; so a simulated pool fills a GPU as a real one would. Its parked
        copy is its weights (``host_bytes``): it captures no CUDA graphs (as ``enforce_eager``)."""
        from ..memory import GB, footprint

        args: dict = {"enforce_eager": True}
        if self.spec.kv_cache_gb:
            args["kv_cache_gb"] = self.spec.kv_cache_gb
        return footprint(args, None, int(self.spec.size_gb * GB))

    def load(self) -> None:
        if self._loaded:
            return
        self._join_prefetch()
        consts, size = self.spec.constants, self.spec.size_gb
        if self._parked:
            self.clock.spend(consts.wake_s(size))
            self.wakes += 1
        else:
            self.clock.spend(consts.load_s(size))
            self.loads += 1
        self._parked = False
        super().load()

    def park(self) -> None:
        self._loaded = False
        self._parked = True

    def release(self) -> None:
        self._join_prefetch()
        was_held = self._loaded or self._parked
        self._loaded = False
        self._parked = False
        if was_held:
            self.clock.spend(self.spec.constants.release_s)

    def prefetch(self) -> bool:
        if self._loaded or self._parked or self._prefetch is not None:
            return False
        seconds = self.spec.constants.disk_to_host_s(self.spec.size_gb)

        def read() -> None:
            if not self.clock.virtual:
                time.sleep(seconds * self.clock.scale)
            self._parked = True

        self._prefetch = threading.Thread(target=read, name=f"prefetch-{self.name}", daemon=True)
        self._prefetch.start()
        return True

    def _join_prefetch(self) -> None:
        if self._prefetch is not None:
            self._prefetch.join()
            self._prefetch = None

    def resident_bytes(self) -> int:
        return int(self.spec.size_gb * 1e9) if self._loaded else 0

    def host_bytes(self) -> int:
        return int(self.spec.size_gb * 1e9) if (self._parked or self._prefetch is not None) else 0

    def accuracy_for(self, skills: list[str]) -> float:
        known = [self.spec.skill_accuracy[s] for s in skills if s in self.spec.skill_accuracy]
        return sum(known) / len(known) if known else self.spec.accuracy

    def _gold(self, key: str | None) -> str | None:
        if not key or key.count("/") != 2:
            return None
        if key not in self._golds:
            task_name, split, index = key.split("/")
            task = self.catalogue.find(task_name)
            if task is None or split not in task.splits() or not index.isdigit():
                return None
            for q in self.catalogue.questions(task, split):
                self._golds[q.qid] = q.gold or ""
        return self._golds.get(key) or None

    def _reasoning(self, max_tokens: int) -> str:
        """The answer's stand-in for its chain of thought: its simulated length, which a quoting prompt counts."""
        consts = self.spec.constants
        shown = round(consts.quoted_length(max_tokens))
        hidden = round(consts.mean_length(max_tokens)) - shown
        think = f"<think>[simulated reasoning: {hidden} tokens]</think>" if consts.answer_tokens > 0 else ""
        return f"{think}[simulated reasoning: {shown} tokens]"

    def _answer(self, req: GenerationRequest, sampling: SamplingSettings) -> str:
        """Right with the skill's accuracy; otherwise a wrong option. Deterministic per (model, question, seed):
        a data-set question is known by its key, any other (a served request's) by its prompt, as a real
        engine's seeded sampling is."""
        task_name = (req.key or "GPQA/x/0").split("/")[0]
        task = self.catalogue.find(task_name) or self.catalogue.get("GPQA")
        gold = self._gold(req.key)
        h = hashlib.sha256(f"{self.name}|{req.key if gold else req.prompt}|{sampling.seed}".encode()).digest()
        rng = random.Random(h)
        right = rng.random() < self.accuracy_for(list(req.meta.get("skills", ())))
        fmt = task.answer
        if right and gold:
            value = gold
        elif isinstance(fmt, ChoiceFormat):
            value = rng.choice([c for c in LETTERS[: fmt.options] if c != gold])
        elif isinstance(fmt, (BoxedFormat, NumberFormat)):
            value = str(rng.randint(0, 999))
        else:
            value = f"not {gold or 'known'} {rng.randint(0, 999)}"
        try:
            stated = fmt.statement(value)
        except DataError:  # a pattern that cannot read this value back: the answer states nothing
            stated = ""
        return f"{self._reasoning(sampling.max_tokens)} {stated}"

    def prompt_tokens(self, req: GenerationRequest) -> float:
        """The question's ``prompt_tokens`` plus the simulated lengths of the answers the prompt quotes."""
        return self.spec.constants.prompt_tokens + quoted_tokens(req)

    def _batch_s(self, requests: list[GenerationRequest], sampling: SamplingSettings) -> float:
        """Modelled seconds of one batch."""
        prompt = sum(self.prompt_tokens(r) for r in requests) / len(requests)
        consts = self.spec.constants
        return consts.generate_s(len(requests), sampling.max_tokens, self.tp, prompt,
                                 draws=independent_draws(requests, consts.cap_share(sampling.max_tokens)))

    def _count(self, requests: list[GenerationRequest], texts: list[str]) -> None:
        self._last_usage = [(int(self.prompt_tokens(r)), sum(int(m) for m in QUOTED_LENGTH.findall(t)))
                            for r, t in zip(requests, texts)]

    def generate(self, requests: list[GenerationRequest], sampling: SamplingSettings) -> list[str]:
        self.ensure_loaded()
        if not requests:
            return []
        if self._decode is not None:
            self._shared(requests, sampling)
        else:
            self.clock.spend(self._batch_s(requests, sampling))
        texts = [self._answer(r, sampling) for r in requests]
        self._count(requests, texts)
        return texts

    def _shared(self, requests: list[GenerationRequest], sampling: SamplingSettings) -> None:
        """The batch's time, spent in the engine's shared decode loop: alone it takes what ``_batch_s``
        says; beside other calls, each one's KV reads slow the step a little, not by a whole batch."""
        assert self._decode is not None
        consts = self.spec.constants
        prompt = sum(self.prompt_tokens(r) for r in requests) / len(requests)
        mean = consts.mean_length(sampling.max_tokens)
        per_seq = consts.step_per_seq_s + consts.kv_s_per_token * (prompt + mean)
        cohort = Cohort(self._batch_s(requests, sampling), len(requests), mean, per_seq,
                        float(consts.concurrency(mean, prompt, self.tp)))
        spent = self._decode.run(cohort)
        with self.clock._lock:
            self.clock.elapsed_s += spent

    def stream(self, request: GenerationRequest, sampling: SamplingSettings) -> Iterator[str]:
        """The answer ``generate`` gives, word by word, its modelled time spread evenly over the words
        (each word arrives when its share of the time is spent: on a real clock, slept)."""
        self.ensure_loaded()
        self._last_usage = []
        text = self._answer(request, sampling)
        pieces = STREAM_PIECE.findall(text) or [text]
        each = self._batch_s([request], sampling) / len(pieces)
        for piece in pieces:
            self.clock.spend(each)
            yield piece
        self._count([request], [text])


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
        kv_cache_gb=float(args["kv_cache_gb"]) if args.get("kv_cache_gb") else None,  # type: ignore[arg-type]
    )
