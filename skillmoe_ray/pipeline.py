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
from typing import Sequence

from .aggregation.aggregators import Aggregator
from .engines.base import GenerationRequest, SamplingSettings
from .errors import EngineError
from .execution import Executor, ExpertPlan, describe_unhealthy, group_by_expert, substitute_unhealthy
from .prompts import expert_prompt
from .routing.routers import Router
from .skills.extract import SkillAligner, SkillExtractor
from .solution import ExpertAnswer, Solution
from .tasks.catalogue import Question, Task


def expert_requests(task: Task, questions: Sequence[Question],
                    skills: Sequence[Sequence[str]]) -> list[GenerationRequest]:
    """Each question's prompt for its experts (the same prompt whoever answers it)."""
    return [GenerationRequest.user(expert_prompt(task, q.text), key=q.qid, role="expert", question=q.text,
                                   meta={"skills": list(sk)})
            for q, sk in zip(questions, skills)]


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

        requests = expert_requests(self.task, questions, skills)
        sampling = self.sampling_for(seed)
        selections = self.avoid_unhealthy(selections)
        if self.router.cascade:
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

    def sampling_for(self, seed: int) -> SamplingSettings:
        return SamplingSettings(temperature=self.sampling.temperature, max_tokens=self.sampling.max_tokens,
                                top_p=self.sampling.top_p, seed=seed)

    def _fallback_order(self) -> list[str]:
        """The router's ranking, then the rest of the pool: a substitute stays close to the router's choice."""
        order = list(self.router.ranking)
        pool = list(self.executor.expert_names)
        return order + [e for e in pool if e not in order]

    def avoid_unhealthy(self, selections: Sequence[Sequence[str]]) -> list[list[str]]:
        """Each unhealthy expert is replaced by the best-ranked healthy one the question does not have yet."""
        return substitute_unhealthy(selections, self._fallback_order(), self.executor.unhealthy)

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
        """Ask each question's experts in order, in expert-grouped rounds, until the router says it is settled.

        The votes' tie-break rank is the slot order (the router's order). A slot
        whose expert failed to load is given a healthy substitute and asked again.
        """
        answers: list[list[ExpertAnswer]] = [[] for _ in selections]
        # the router may cap how many are asked at once (never more than half) and says when to stop
        cap = self.router.first_round
        first = [min(len(sel), (len(sel) + 1) // 2, len(sel) if cap is None else cap) for sel in selections]
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
                if remaining and (not asked or not self.router.settled(
                        [a.pred for a in answers[qi]], [a.expert for a in answers[qi]], remaining, self.task)):
                    still_open.append(qi)
            open_q = still_open
        if open_q:
            raise EngineError(f"experts kept failing to load: {describe_unhealthy(self.executor.unhealthy)}")
        return answers
