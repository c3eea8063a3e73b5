"""Model profiles: what each expert is good at, measured on the validation split.

For every validation question and every skill of that question, an expert's
score for the skill goes up by one if it answered right and down by one if it
answered wrong (the paper's profile). The file also keeps each expert's
validation predictions, so strategies that need more than the +1/-1 sums
(accuracy estimates, agreement statistics) read them from the same place
instead of re-running the pool.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import DataError

PROFILE_VERSION = 1


def skill_scores(question_skills: Sequence[Sequence[str]], correct: Sequence[bool]) -> dict[str, int]:
    """One expert's +1/-1 score per skill."""
    if len(question_skills) != len(correct):
        raise ValueError("question_skills and correct must have the same length")
    scores: dict[str, int] = {}
    for skills, ok in zip(question_skills, correct):
        for skill in dict.fromkeys(skills):
            scores[skill] = scores.get(skill, 0) + (1 if ok else -1)
    return scores


@dataclass
class Profiles:
    task: str
    experts: list[str]
    #: expert -> skill -> +1/-1 sum
    scores: dict[str, dict[str, int]]
    #: expert -> validation accuracy
    accuracy: dict[str, float]
    #: validation question ids, in order
    qids: list[str]
    #: aligned skills of each validation question
    question_skills: list[list[str]]
    #: expert -> prediction per validation question (None: no answer)
    preds: dict[str, list[str | None]]
    #: expert -> right/wrong per validation question
    correct: dict[str, list[bool]]
    #: the task's aggregator choice and the benchmark behind it
    aggregator: dict[str, Any] = field(default_factory=dict)
    #: what built these profiles (pool, data, extractor, date)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def skills(self) -> list[str]:
        return sorted({s for per in self.scores.values() for s in per})

    def ranking(self) -> list[str]:
        """Experts by validation accuracy, best first (ties by pool order): vote ties go to the better-ranked."""
        order = {name: i for i, name in enumerate(self.experts)}
        return sorted(self.experts, key=lambda e: (-self.accuracy[e], order[e]))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["version"] = PROFILE_VERSION
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "<profiles>") -> "Profiles":
        if data.get("version") != PROFILE_VERSION:
            raise DataError(f"{source}: profile version {data.get('version')!r} is not {PROFILE_VERSION}; rebuild it")
        try:
            return cls(**{k: v for k, v in data.items() if k != "version"})
        except TypeError as exc:
            raise DataError(f"{source}: not a profiles file ({exc})") from None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.to_json(), indent=1), encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "Profiles":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{path}: profiles file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_json(data, str(path))


def build_profiles(
    task: str,
    experts: Sequence[str],
    qids: Sequence[str],
    question_skills: Sequence[Sequence[str]],
    preds: Mapping[str, Sequence[str | None]],
    correct: Mapping[str, Sequence[bool]],
    meta: Mapping[str, Any] | None = None,
) -> Profiles:
    n = len(qids)
    for e in experts:
        if len(preds[e]) != n or len(correct[e]) != n:
            raise ValueError(f"expert {e}: expected {n} validation answers")
    meta = dict(meta or {})
    meta.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return Profiles(
        task=task,
        experts=list(experts),
        scores={e: skill_scores(question_skills, correct[e]) for e in experts},
        accuracy={e: (sum(correct[e]) / n if n else 0.0) for e in experts},
        qids=list(qids),
        question_skills=[list(s) for s in question_skills],
        preds={e: list(preds[e]) for e in experts},
        correct={e: [bool(c) for c in correct[e]] for e in experts},
        meta=meta,
    )
