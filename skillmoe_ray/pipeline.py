"""The one code path from questions to answers.

``skillmoe evaluate`` runs :meth:`Pipeline.solve` on a whole data set; the
server (Serving issue) runs the same method on each micro-batch, with a
Ray-backed executor in place of :class:`LocalExecutor`. Stages:

    skills  ->  align  ->  route  ->  expert-grouped execution  ->  aggregate

Everything but execution is a pure function of plain data.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Mapping, Protocol, Sequence

from tqdm import tqdm

from .aggregation import expert_prompt, vote_settled
from .engines.base import Engine, GenerationRequest, SamplingSettings
from .errors import ConfigError, EngineError
from .skills.extract import SkillAligner, SkillExtractor
from .tasks import Question, Task


@dataclass(frozen=True)
class ExpertAnswer:
    expert: str
    response: str
    pred: str | None


@dataclass
class Solution:
    question: Question
    skills: list[str]
    experts: list[str]
    answers: list[ExpertAnswer]
    answer: str | None
    response: str
    aggregator: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def calls(self) -> int:
        return len(self.answers)


#: (question position, slot) -> request, grouped by expert
ExpertPlan = dict[str, list[tuple[int, int, GenerationRequest]]]


def group_by_expert(selections: Sequence[Sequence[str]], requests: Sequence[GenerationRequest]) -> ExpertPlan:
    """Expert-grouped sub-batches: every expert appears once, with all its prompts of the batch.

    Experts come in order of first use so a plan is deterministic.
    """
    plan: ExpertPlan = defaultdict(list)
    for qi, experts in enumerate(selections):
        for slot, expert in enumerate(experts):
            plan[expert].append((qi, slot, requests[qi]))
    return dict(plan)


class Executor(Protocol):
    """Runs expert-grouped plans. Items of an expert that failed to load are left out of
    the result, and the expert is listed in ``unhealthy`` with the reason."""

    unhealthy: dict[str, str]

    def run(self, plan: ExpertPlan, sampling: SamplingSettings) -> dict[tuple[int, int], str]: ...

    def engine(self, name: str) -> Engine: ...


class LocalExecutor:
    """Runs a plan in this process, one expert at a time, each loaded once per batch.

    Engines whose residency costs nothing (recordings) stay loaded. Of the
    rest one is held at a time: it stays loaded after its sub-batch and is
    parked only when another model needs the memory, so consecutive calls on
    one model (the keyword LLM's five samples, a batch's expert that also
    aggregates) pay one load, not one each.
    """

    def __init__(self, engines: Mapping[str, Engine], progress: bool = False):
        self.engines = dict(engines)
        self.progress = progress
        #: expert -> why it is out of service (a load failed); routing avoids these
        self.unhealthy: dict[str, str] = {}
        self._held: Engine | None = None

    def _make_room_for(self, engine: Engine) -> None:
        held = self._held
        if held is not None and held is not engine and held.loaded:
            held.park()
        self._held = None if getattr(engine, "cheap_residency", False) else engine

    def engine(self, name: str) -> Engine:
        try:
            return self.engines[name]
        except KeyError:
            raise ConfigError(f"no expert named {name!r} in the pool (have: {', '.join(self.engines)})") from None

    def run(self, plan: ExpertPlan, sampling: SamplingSettings) -> dict[tuple[int, int], str]:
        out: dict[tuple[int, int], str] = {}
        items = plan.items()
        bar = tqdm(items, desc="experts", unit="model", disable=not self.progress or len(plan) < 2, leave=False)
        for name, work in bar:
            engine = self.engine(name)
            self._make_room_for(engine)
            try:
                engine.ensure_loaded()
            except Exception as exc:  # its items stay unanswered; the pipeline re-routes them
                self.unhealthy[name] = f"load failed: {exc}"
                continue
            texts = engine.generate([req for _, _, req in work], sampling)
            for (qi, slot, _), text in zip(work, texts):
                out[(qi, slot)] = text
        return out


def describe_unhealthy(unhealthy: Mapping[str, str]) -> str:
    return "; ".join(f"{e}: {why}" for e, why in unhealthy.items())


class ExecutorEngine(Engine):
    """An engine that lives wherever the executor keeps its models.

    Lets model work outside expert answering (the keyword LLM) run on the
    worker pool like any other model work, in-process or on Ray actors.
    """

    def __init__(self, executor: Executor, name: str):
        super().__init__(name)
        self.executor = executor
        self._loaded = True  # the executor loads the model where it runs

    def generate(self, requests: list[GenerationRequest], sampling: SamplingSettings) -> list[str]:
        texts = self.executor.run({self.name: [(i, 0, r) for i, r in enumerate(requests)]}, sampling)
        return [texts[(i, 0)] for i in range(len(requests))]


class Router(Protocol):
    """Chooses each question's experts for a whole batch.

    A router with ``cascade = True`` returns experts in the order they should
    be asked; the pipeline then asks them in rounds and stops a question as
    soon as its vote can no longer change (see :func:`aggregation.vote_settled`).
    """

    name: str

    def route(self, questions: Sequence[Question], skills: Sequence[Sequence[str]], seed: int) -> list[list[str]]: ...


class Aggregator(Protocol):
    name: str

    def aggregate(
        self, task: Task, questions: Sequence[Question], answers: Sequence[Sequence[ExpertAnswer]], executor: Executor,
        seed: int,
    ) -> list[tuple[str | None, str, str]]:
        """(answer, response, who aggregated) per question."""
        ...


class SkillStage:
    """Extraction plus alignment to the profiles' skills."""

    def __init__(self, extractor: SkillExtractor, aligner: SkillAligner | None):
        self.extractor = extractor
        self.aligner = aligner

    def skills(self, questions: Sequence[Question]) -> list[list[str]]:
        raw = self.extractor.raw_skills(questions)
        return self.aligner.align(raw) if self.aligner else [list(s) for s in raw]


class Pipeline:
    def __init__(
        self,
        task: Task,
        skills: SkillStage | None,
        router: Router,
        aggregator: Aggregator,
        executor: Executor,
        sampling: SamplingSettings = SamplingSettings(),
    ):
        self.task = task
        self.skill_stage = skills
        self.router = router
        self.aggregator = aggregator
        self.executor = executor
        self.sampling = sampling

    def solve(
        self, questions: Sequence[Question], seed: int = 0, skills: Sequence[Sequence[str]] | None = None
    ) -> list[Solution]:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        if skills is None:
            skills = self.skill_stage.skills(questions) if self.skill_stage else [[] for _ in questions]
        t1 = time.perf_counter()
        timings["skills"] = t1 - t0

        selections = self.router.route(questions, skills, seed)
        t2 = time.perf_counter()
        timings["route"] = t2 - t1

        requests = [
            GenerationRequest.user(expert_prompt(self.task, q.text), key=q.qid, role="expert", question=q.text,
                                   meta={"skills": list(sk)})
            for q, sk in zip(questions, skills)
        ]
        sampling = SamplingSettings(
            temperature=self.sampling.temperature, max_tokens=self.sampling.max_tokens, top_p=self.sampling.top_p,
            seed=seed,
        )
        selections = self.avoid_unhealthy(selections)
        if getattr(self.router, "cascade", False):
            answers = self._run_cascade(selections, requests, sampling)
        else:
            texts = self._run_healing(selections, requests, sampling)
            answers = [
                [ExpertAnswer(e, texts[(qi, slot)], self.task.extract(texts[(qi, slot)])) for slot, e in enumerate(sel)]
                for qi, sel in enumerate(selections)
            ]
        selections = [[a.expert for a in ans] for ans in answers]
        t3 = time.perf_counter()
        timings["experts"] = t3 - t2
        merged = self.aggregator.aggregate(self.task, questions, answers, self.executor, seed)
        t4 = time.perf_counter()
        timings["aggregate"] = t4 - t3
        timings["total"] = t4 - t0
        return [
            Solution(q, list(sk), sel, ans, answer, response, who, dict(timings))
            for q, sk, sel, ans, (answer, response, who) in zip(questions, skills, selections, answers, merged)
        ]

    def _fallback_order(self) -> list[str]:
        order = list(getattr(self.router, "ranking", None) or getattr(self.router, "experts", None) or [])
        pool = list(getattr(self.executor, "engines", None) or getattr(self.executor, "expert_names", None) or [])
        return order + [e for e in pool if e not in order]

    def avoid_unhealthy(self, selections: Sequence[Sequence[str]]) -> list[list[str]]:
        """Each unhealthy expert is replaced by the best-ranked healthy one the question does not have yet."""
        bad = self.executor.unhealthy
        if not bad:
            return [list(s) for s in selections]
        healthy = [e for e in self._fallback_order() if e not in bad]
        if not healthy:
            raise EngineError(f"every expert of the pool is out of service: {describe_unhealthy(bad)}")
        out = []
        for sel in selections:
            new = []
            for e in sel:
                if e in bad:
                    e = next((h for h in healthy if h not in new and h not in sel), healthy[0])
                new.append(e)
            out.append(new)
        return out

    def _run_healing(self, selections: list[list[str]], requests: Sequence[GenerationRequest],
                     sampling: SamplingSettings, attempts: int = 3) -> dict[tuple[int, int], str]:
        """Run a plan; items of experts that failed to load are re-routed to healthy experts and run again."""
        texts = self.executor.run(group_by_expert(selections, requests), sampling)
        for _ in range(attempts):
            missing = [(qi, slot) for qi, sel in enumerate(selections) for slot in range(len(sel))
                       if (qi, slot) not in texts]
            if not missing:
                return texts
            healed = self.avoid_unhealthy(selections)
            plan: ExpertPlan = defaultdict(list)
            for qi, slot in missing:
                selections[qi][slot] = healed[qi][slot]
                plan[healed[qi][slot]].append((qi, slot, requests[qi]))
            texts.update(self.executor.run(dict(plan), sampling))
        if any((qi, slot) not in texts for qi, sel in enumerate(selections) for slot in range(len(sel))):
            raise EngineError(f"experts kept failing to load: {describe_unhealthy(self.executor.unhealthy)}")
        return texts

    def _run_cascade(self, selections: list[list[str]], requests: Sequence[GenerationRequest],
                     sampling: SamplingSettings) -> list[list[ExpertAnswer]]:
        """Ask each question's experts in order, in expert-grouped rounds, until its vote is settled.

        The votes' tie-break rank is the slot order (the router's order). A slot
        whose expert failed to load is given a healthy substitute and asked again.
        """
        answers: list[list[ExpertAnswer]] = [[] for _ in selections]
        # a router may cap how many are asked at once and say when to stop (budget.py); else half, then vote_settled
        first_round = getattr(self.router, "first_round", None) or len(max(selections, key=len, default=[]))
        settled = getattr(self.router, "settled", None)
        first = [min(len(sel), (len(sel) + 1) // 2, first_round) for sel in selections]
        open_q = [qi for qi, sel in enumerate(selections) if sel]
        budget = 3 * max((len(sel) for sel in selections), default=0) + 3
        while open_q and budget:
            budget -= 1
            healed = self.avoid_unhealthy([selections[qi] for qi in open_q])
            for qi, sel in zip(open_q, healed):
                selections[qi] = sel
            rounds = {qi: range(len(answers[qi]), first[qi] if not answers[qi] else len(answers[qi]) + 1)
                      for qi in open_q}
            plan: ExpertPlan = defaultdict(list)
            for qi, slots in rounds.items():
                for slot in slots:
                    plan[selections[qi][slot]].append((qi, slot, requests[qi]))
            texts = self.executor.run(dict(plan), sampling)
            still_open = []
            for qi, slots in rounds.items():
                for slot in slots:
                    if (qi, slot) not in texts:
                        break  # re-asked next round, after re-routing
                    e = selections[qi][slot]
                    answers[qi].append(ExpertAnswer(e, texts[(qi, slot)], self.task.extract(texts[(qi, slot)])))
                remaining = len(selections[qi]) - len(answers[qi])
                asked = len(answers[qi]) >= first[qi]
                preds = [a.pred for a in answers[qi]]
                done = (settled(preds, [a.expert for a in answers[qi]], remaining, self.task) if settled else
                        vote_settled(preds, list(range(len(answers[qi]))), remaining, self.task))
                if remaining and (not asked or not done):
                    still_open.append(qi)
            open_q = still_open
        if open_q:
            raise EngineError(f"experts kept failing to load: {describe_unhealthy(self.executor.unhealthy)}")
        return answers
