"""The evaluation tasks: data loading, prompts' answer format, answer extraction.

A task decides how a question is asked (multiple choice or boxed), how an answer
is read back out of a response and how it is compared with the gold answer. The
four reference data sets ship inside the package so that a fresh clone runs
without the shared data folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

from . import answers
from .errors import DataError

Split = Literal["train", "test"]
AnswerFormat = Literal["choice", "boxed"]


@dataclass(frozen=True)
class Question:
    """One question of a data set; ``qid`` is stable across runs ("task/split/index")."""

    task: str
    split: str
    index: int
    text: str
    gold: str | None = None
    category: str | None = None

    @property
    def qid(self) -> str:
        return f"{self.task}/{self.split}/{self.index}"


@dataclass(frozen=True)
class Task:
    name: str
    answer_format: AnswerFormat
    num_choices: int = 4
    aliases: tuple[str, ...] = field(default=())

    def extract(self, response: str | None) -> str | None:
        if response is None:
            return None
        if self.answer_format == "boxed":
            return answers.extract_boxed(response)
        return answers.extract_choice(response, self.num_choices)

    def is_correct(self, pred: str | None, gold: str | None) -> bool:
        if pred is None or gold is None:
            return False
        if self.answer_format == "boxed":
            return answers.math_equal(str(gold), str(pred))
        return pred.strip().upper() == str(gold).strip().upper()

    def same_answer(self, a: str, b: str) -> bool:
        """Whether two predictions are one vote (equivalent expressions count once)."""
        if self.answer_format == "boxed":
            return answers.math_equal(a, b)
        return a == b

    def instruction(self) -> str:
        if self.answer_format == "boxed":
            return (
                'Provide your step-by-step reasoning first, and then print "The answer is \\boxed{X}", '
                "where X is the final answer, at the end of your response."
            )
        return (
            'Provide your step-by-step reasoning first, and then print "The answer is (X)", '
            "where X is the answer choice (one capital letter), at the end of your response."
        )


TASKS: dict[str, Task] = {
    "MMLU_Pro": Task("MMLU_Pro", "choice", 10, aliases=("mmlu_pro", "mmlu-pro")),
    "GPQA": Task("GPQA", "choice", 4, aliases=("gpqa",)),
    "MedMCQA": Task("MedMCQA", "choice", 4, aliases=("medmcqa",)),
    "AIME24": Task("AIME24", "boxed", aliases=("aime24", "aime")),
}

#: A task for free-form questions with no data set behind them (serving without a task).
GENERAL = Task("general", "boxed")


def get_task(name: str) -> Task:
    for task in TASKS.values():
        if name == task.name or name.lower() in task.aliases:
            return task
    raise DataError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")


def builtin_benchmarks_dir() -> Path:
    return Path(str(resources.files("skillmoe_ray") / "data" / "benchmarks"))


def load_questions(task: str | Task, split: Split, data_dir: str | Path | None = None) -> list[Question]:
    """Load ``<task>_<split>.json`` (reference format: a list of {question, gold_answer[, category]})."""
    task_obj = task if isinstance(task, Task) else get_task(task)
    root = Path(data_dir) if data_dir else builtin_benchmarks_dir()
    path = root / f"{task_obj.name}_{split}.json"
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of questions, got {type(rows).__name__}")
    out: list[Question] = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("question"), str):
            raise DataError(f"{path}: item {i}: field 'question' must be a string")
        gold = row.get("gold_answer")
        if gold is not None and not isinstance(gold, (str, int)):
            raise DataError(f"{path}: item {i}: field 'gold_answer' must be a string")
        out.append(
            Question(
                task=task_obj.name,
                split=split,
                index=i,
                text=row["question"],
                gold=None if gold is None else str(gold),
                category=row.get("category"),
            )
        )
    return out
