"""Builds the working parts of a deployment from its config.

The CLI and the server both start here, so a deployment file means the same
thing offline and online: the same pool, skills stage, profiles and routing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from . import __version__
from .aggregation.votes import build_aggregator_tasks, select_aggregator
from .config import Config, ExpertConfig
from .engines.base import Engine, GenerationRequest, SamplingSettings
from .engines.registry import create_engine
from .errors import ConfigError, DataError, EngineError
from .execution import Executor, ExecutorEngine, LocalExecutor, describe_unhealthy, group_by_expert
from .pipeline import SkillStage
from .pool import pool_experts, pool_fingerprint
from .profiles import Profiles, build_profiles
from .tasks.reading import check_readable, pool_readability
from .prompts import aggregation_prompt, expert_prompt
from .skills.embeddings import Embedder, get_embedder
from .skills.extract import EmbeddingTagger, KeywordExtractor, SkillAligner, load_vocabulary
from .tasks.catalogue import Catalogue, Question, Task

log = logging.getLogger(__name__)

#: how answers are read out of responses; profiles built by another way of reading are rebuilt
#: (2: responses written as JSON read from their answer field; a field's value read for its last number)
READING_VERSION = 2


@dataclass
class Runtime:
    cfg: Config
    experts: list[ExpertConfig]
    engines: dict[str, Engine]
    executor: Executor
    #: the deployment's tasks: the built-ins and its own; the one place a task is looked up by name
    catalogue: Catalogue
    progress: bool = True

    @classmethod
    def from_config(cls, cfg: Config, recorded_dir: str | None = None, progress: bool = True) -> "Runtime":
        experts = pool_experts(cfg, recorded_dir)
        catalogue = Catalogue.from_config(cfg)
        engines = {e.name: create_engine(e, catalogue) for e in experts}
        return cls(cfg, experts, engines, LocalExecutor(engines, progress=progress), catalogue, progress)

    @property
    def expert_names(self) -> list[str]:
        return [e.name for e in self.experts]

    # ------------------------------------------------------------------ data

    def task(self, name: str | Task) -> Task:
        return self.catalogue.get(name)

    def questions(self, task: str | Task, split: str) -> list[Question]:
        return self.catalogue.questions(task, split)

    # ------------------------------------------------------------------ skills

    def embedder(self) -> Embedder:
        return get_embedder(self.cfg.skills.embedder)

    def extractor(self):
        sk = self.cfg.skills
        if sk.extractor == "keyword_llm":
            engine = self._keyword_engine(sk.keyword_model or "")
            return KeywordExtractor(engine, sk.samples, sk.min_count, sk.max_chars,
                                    temperature=self.cfg.generation.temperature)
        return EmbeddingTagger(self.embedder(), load_vocabulary(sk.vocabulary), sk.top_n)

    def _keyword_engine(self, name: str) -> Engine:
        if name in self.engines:
            return ExecutorEngine(self.executor, name)
        src = f"{self.cfg.source}: " if self.cfg.source else ""
        raise ConfigError(f"{src}skills.keyword_model: {name!r} is not an expert of the pool "
                          f"(have: {', '.join(self.engines)})")

    def skill_stage(self, profiles: Profiles) -> SkillStage:
        return SkillStage(self.extractor(), SkillAligner(self.embedder(), profiles.skills))

    # ------------------------------------------------------------------ profiles

    def fingerprint(self) -> str:
        return pool_fingerprint(self.experts)

    def profiles_path(self, task: Task) -> Path:
        state = self.cfg.state_path()
        return state / "profiles" / f"{self.cfg.name}-{self.fingerprint()}" / f"{task.name}.json"

    def _extractor_meta(self) -> dict:
        sk = self.cfg.skills
        meta = {"extractor": sk.extractor, "embedder": sk.embedder}
        if sk.extractor == "keyword_llm":
            meta.update(keyword_model=sk.keyword_model, samples=sk.samples, min_count=sk.min_count,
                        max_chars=sk.max_chars)
        else:
            meta.update(vocabulary=sk.vocabulary, top_n=sk.top_n)
        return meta

    def _task_meta(self, task: Task) -> dict:
        """How the task asks and reads answers, and its validation data: profiles are for these."""
        import hashlib

        path = task.data_path("train")
        data = hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None
        return {"definition": task.digest(), "reading": READING_VERSION, "validation_data": data}

    def saved_profiles(self, task: Task) -> Profiles | None:
        """The saved profiles if they match this pool, extractor and settings; None if missing or stale."""
        path = self.profiles_path(task)
        if not path.is_file():
            return None
        try:
            prof = Profiles.load(path)
        except DataError as exc:
            log.warning("ignoring unreadable profiles (%s)", exc)
            return None
        m = prof.meta
        if m.get("pool_fingerprint") == self.fingerprint() and m.get("skills") == self._extractor_meta() \
                and m.get("aggregation_mode") == self.cfg.aggregation.mode \
                and m.get("profiling", {}) == self.cfg.profiling.model_dump() and m.get("task") == self._task_meta(task):
            return prof
        log.info("profiles at %s were built for another pool, extractor or task definition", path)
        return None

    def profiles(self, task: Task, rebuild: bool = False) -> Profiles:
        """Saved profiles when they match this pool and extractor, else build and save them."""
        prof = None if rebuild else self.saved_profiles(task)
        if prof is not None:
            return prof
        prof = self.build_profiles(task)
        prof.save(self.profiles_path(task))
        return prof

    def profiling_questions(self, task: Task) -> list[Question]:
        questions = self.questions(task, "train")
        limit = self.cfg.profiling.max_questions
        if limit and limit < len(questions):
            import random

            picked = sorted(random.Random(self.cfg.profiling.seed).sample(range(len(questions)), limit))
            questions = [questions[i] for i in picked]
        return questions

    def pool_responses(self, task: Task, questions: Sequence[Question], label: str = "experts") -> dict[str, list[str]]:
        """Every expert's response to every question (expert-grouped: each model loaded once)."""
        names = self.expert_names
        requests = [GenerationRequest.user(expert_prompt(task, q.text), key=q.qid, question=q.text) for q in questions]
        plan = group_by_expert([names] * len(questions), requests)
        sampling = SamplingSettings(self.cfg.generation.temperature, self.cfg.generation.max_tokens, seed=0)
        texts: dict[tuple[int, int], str] = {}
        bar = tqdm(plan.items(), total=len(plan), desc=label, unit="expert", disable=not self.progress)
        for name, work in bar:
            bar.set_postfix_str(name)
            texts.update(self.executor.run({name: work}, sampling))
        if self.executor.unhealthy:
            raise EngineError(f"cannot get every expert's answers: {describe_unhealthy(self.executor.unhealthy)}")
        return {e: [texts[(i, s)] for i in range(len(questions))] for s, e in enumerate(names)}

    def build_profiles(self, task: Task) -> Profiles:
        questions = self.profiling_questions(task)
        names = self.expert_names
        if self.progress:
            print(f"profiling {len(names)} experts on {len(questions)} {task.name} validation questions")
        skills = self.extractor().raw_skills(questions)
        outputs = self.pool_responses(task, questions, "profiling experts")
        preds = {e: [task.extract(t) for t in outputs[e]] for e in names}
        qids = [q.qid for q in questions]
        readable = pool_readability(qids, outputs, preds)
        check_readable(task, readable, self.cfg.profiling.max_unreadable)
        correct = {e: [task.is_correct(p, q.gold) for p, q in zip(preds[e], questions)] for e in names}
        meta = {
            "pool": names,
            "pool_fingerprint": self.fingerprint(),
            "config": str(self.cfg.source) if self.cfg.source else self.cfg.name,
            "dataset": f"{task.name}/train",
            "task": self._task_meta(task),
            "n_questions": len(questions),
            "skills": self._extractor_meta(),
            "aggregation_mode": self.cfg.aggregation.mode,
            "profiling": self.cfg.profiling.model_dump(),
            "readability": {e: r.to_json() for e, r in readable.items()},
            "skillmoe_version": __version__,
        }
        prof = build_profiles(task.name, names, qids, skills, preds, correct, meta)
        prof.aggregator = self.choose_aggregator(task, questions, outputs, prof)
        return prof

    def choose_aggregator(self, task: Task, questions: Sequence[Question], outputs: dict[str, list[str]],
                          prof: Profiles) -> dict:
        agg = self.cfg.aggregation
        if agg.mode != "llm":
            return {"mode": agg.mode, "name": agg.mode,
                    "why": "aggregation.mode is a vote: no aggregator model is benchmarked"}
        if agg.aggregator:
            return {"mode": "llm", "name": agg.aggregator, "why": "fixed by aggregation.aggregator"}
        candidates = agg.candidates or prof.ranking()
        tasks = build_aggregator_tasks([q.qid for q in questions], [q.text for q in questions],
                                       [q.gold or "" for q in questions], outputs, prof.correct)
        if not tasks:
            raise DataError(f"{task.name}: no validation question has 1 right and 2 wrong answers; "
                            "cannot benchmark aggregators")
        requests = [GenerationRequest.user(aggregation_prompt(task, t.question, t.responses), key=t.qid,
                                           role="aggregator", question=t.question) for t in tasks]
        hits = {}
        bar = tqdm(candidates, desc="benchmarking aggregators", unit="model", disable=not self.progress)
        for name in bar:
            out = self.executor.run({name: [(i, 0, r) for i, r in enumerate(requests)]},
                                    SamplingSettings(0.7, agg.max_tokens, seed=0))
            hits[name] = sum(task.is_correct(task.extract(out[(i, 0)]), t.gold) for i, t in enumerate(tasks)) / len(tasks)
        choice = select_aggregator(hits, prof.ranking())
        return {"mode": "llm", "name": choice, "hit_rates": hits, "n_tasks": len(tasks)}

