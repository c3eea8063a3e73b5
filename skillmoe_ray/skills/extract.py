"""Turning questions into skills.

Two extractors share one interface (``raw_skills(questions) -> list[list[str]]``):

* :class:`KeywordExtractor` is the paper's: a keyword LLM is asked for 2-5
  keywords k=5 times; keywords seen at least twice and at most 20 characters
  long are kept.
* :class:`EmbeddingTagger` needs no LLM: it tags a question with the skills of
  a fixed vocabulary whose Sentence-BERT embedding is closest to the question's.
  This is what lets a recorded pool be routed on a laptop.

Either way the raw skills are then aligned (:class:`SkillAligner`) to the
skills that occur in the profiles, by nearest cosine neighbour, as the
reference does with all-MiniLM-L6-v2.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from ..engines.base import Engine, GenerationRequest, SamplingSettings
from ..errors import ConfigError
from ..prompts import KEYWORD_PROMPT
from ..tasks.catalogue import Question
from .embeddings import Embedder


class SkillExtractor(Protocol):
    name: str

    def raw_skills(self, questions: Sequence[Question]) -> list[list[str]]: ...


def load_vocabulary(spec: str = "builtin") -> list[str]:
    if spec == "builtin":
        text = (resources.files("skillmoe_ray") / "data" / "skills.txt").read_text(encoding="utf-8")
        source = "builtin skills.txt"
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ConfigError(f"{path}: skills.vocabulary file not found")
        text = path.read_text(encoding="utf-8")
        source = str(path)
    vocab = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    vocab = list(dict.fromkeys(vocab))
    if not vocab:
        raise ConfigError(f"{source}: skills.vocabulary is empty")
    return vocab


def parse_keywords(text: str) -> list[str]:
    """Keywords from a "Keywords: a, b, c" answer; tolerant of chatter around it."""
    if not text:
        return []
    match = list(re.finditer(r"keywords?\s*:", text, flags=re.IGNORECASE))
    body = text[match[-1].end() :] if match else text
    body = body.strip().split("\n")[0]
    out = []
    for part in body.split(","):
        kw = re.sub(r"[\s]+", " ", part).strip().strip(".*-•\"'<>[]()").strip().lower()
        if kw:
            out.append(kw)
    return out


def vote_keywords(samples: Sequence[Sequence[str]], min_count: int = 2, max_chars: int = 20) -> list[str]:
    """Keep keywords of at most ``max_chars`` seen in at least ``min_count`` samples, in first-seen order."""
    counts: Counter[str] = Counter()
    for sample in samples:
        counts.update(list(dict.fromkeys(k for k in sample if len(k) <= max_chars)))
    return [k for k, c in counts.items() if c >= min_count]


class KeywordExtractor:
    """The paper's keyword LLM, run by any engine."""

    name = "keyword_llm"

    def __init__(self, engine: Engine, samples: int = 5, min_count: int = 2, max_chars: int = 20,
                 temperature: float = 0.7, max_tokens: int = 64, seed: int = 0):
        self.engine = engine
        self.samples = samples
        self.min_count = min_count
        self.max_chars = max_chars
        self.sampling = SamplingSettings(temperature=temperature, max_tokens=max_tokens, seed=seed)

    def raw_skills(self, questions: Sequence[Question]) -> list[list[str]]:
        requests = [
            GenerationRequest.user(KEYWORD_PROMPT.format(question=q.text), key=q.qid, role="keyword", question=q.text)
            for q in questions
        ]
        per_question: list[list[list[str]]] = [[] for _ in questions]
        self.engine.ensure_loaded()
        for s in range(self.samples):
            seed = None if self.sampling.seed is None else self.sampling.seed + s
            texts = self.engine.generate(requests, replace(self.sampling, seed=seed))
            for i, text in enumerate(texts):
                per_question[i].append(parse_keywords(text))
        return [vote_keywords(samples, self.min_count, self.max_chars) for samples in per_question]


class EmbeddingTagger:
    """Tags a question with its ``top_n`` nearest vocabulary skills (no LLM)."""

    name = "embedding"

    def __init__(self, embedder: Embedder, vocabulary: Sequence[str], top_n: int = 3):
        if not vocabulary:
            raise ConfigError("skills.vocabulary is empty")
        self.embedder = embedder
        self.vocabulary = list(vocabulary)
        self.top_n = min(top_n, len(self.vocabulary))
        self._vocab_emb: np.ndarray | None = None

    def raw_skills(self, questions: Sequence[Question]) -> list[list[str]]:
        if self._vocab_emb is None:
            self._vocab_emb = self.embedder.encode(self.vocabulary)
        q_emb = self.embedder.encode([q.text for q in questions], progress=len(questions) > 200)
        sims = q_emb @ self._vocab_emb.T
        top = np.argsort(-sims, axis=1, kind="stable")[:, : self.top_n]
        return [[self.vocabulary[j] for j in row] for row in top]


class SkillAligner:
    """Maps extracted skills to their nearest profile skill by cosine similarity."""

    def __init__(self, embedder: Embedder, profile_skills: Sequence[str]):
        if not profile_skills:
            raise ValueError("cannot align to an empty set of profile skills")
        self.embedder = embedder
        self.skills = sorted(set(profile_skills))
        self._known = set(self.skills)
        self._emb: np.ndarray | None = None

    def align(self, raw: Sequence[Sequence[str]]) -> list[list[str]]:
        todo = sorted({s for skills in raw for s in skills if s not in self._known})
        mapping = {s: s for s in self._known}
        if todo:
            if self._emb is None:
                self._emb = self.embedder.encode(self.skills)
            sims = self.embedder.encode(todo) @ self._emb.T
            for s, j in zip(todo, np.argmax(sims, axis=1)):
                mapping[s] = self.skills[int(j)]
        return [list(dict.fromkeys(mapping[s] for s in skills)) for skills in raw]
