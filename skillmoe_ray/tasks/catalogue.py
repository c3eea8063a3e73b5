"""Tasks: their data, how a question is asked, how an answer is read back and compared.

Every task is a definition of one kind (:class:`~skillmoe_ray.config.TaskSpec`): a
name, validation and test data, an answer format and optionally the instruction
experts read after the question. The four reference data sets are definitions
shipped with the package (``data/tasks.yaml``); a deployment file defines its own
under ``tasks:``. A :class:`Catalogue` built from a config is the one place a task
is looked up by name: the CLI, the runtime, the engines and the serving replicas
all use the catalogue of the config they were given, so a served task never needs
a file on the replica's disk (its answer format and instruction travel with the
config; only the engines that replay or simulate answers read its data).

Answer formats (``answer.type``):

* ``choice``: a letter among N options, the *first* "answer is (X)" (the MMLU-Pro harness's rule).
* ``boxed``: the last ``\\boxed{}``, compared with math-verify.
* ``number``: after the last ``<field>:`` if a field is named, else the last number of the response;
  equal within an absolute or relative tolerance (votes group numbers equal within it).
* ``exact``: the text after the last "answer is" / "Answer:", compared ignoring case and spacing.
* ``regex``: group 1 of the last match of a pattern, compared as exact text.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Iterator, Literal

from . import answers
from ..errors import DataError

if TYPE_CHECKING:
    from ..config import AnswerSpec, Config, TaskSpec

Split = Literal["train", "test"]
#: the recorded format's split names: "train" is the validation split (the reference's naming)
SPLITS: tuple[Split, ...] = ("train", "test")
SPLIT_FIELDS = {"train": "validation", "test": "test"}

_REASON = "Provide your step-by-step reasoning first, and then print "


# ---------------------------------------------------------------- answer formats


#: the key a response written as JSON states its answer under, unless a task says otherwise
JSON_KEY = "answer"


def _json_key() -> Any:
    """The ``json_key`` field of every format: keyword-only, so a format's own settings keep their positions."""
    return dataclasses.field(default=JSON_KEY, kw_only=True)


class AnswerFormat(ABC):
    """How one task's answers are read out of a response, compared, and asked for.

    Every format first asks whether the response is written as JSON (``{"reasoning": ..., "answer":
    ...}``, the shape many evaluation harnesses ask for): then the answer is what its ``json_key``
    field holds, read by the format (:meth:`read_value`), and nothing else of the response counts.
    """

    type: ClassVar[str]
    #: set by every subclass as a dataclass field; None reads responses as text only
    json_key: str | None

    def extract(self, text: str) -> str | None:
        """The answer a response states (canonical text), or None if it states none."""
        if not text:
            return None
        if self.json_key:
            written = answers.json_answer(text, self.json_key)
            if written is not None:
                return None if written.value is None else self.read_value(written.value)
        return self.read(text)

    @abstractmethod
    def read(self, text: str) -> str | None:
        """The answer a response written as text states, or None."""

    @abstractmethod
    def read_value(self, value: str) -> str | None:
        """The answer an answer field holds (its whole text is the answer), or None."""

    def reading(self) -> str:
        """How answers are read, for messages that say why none was read."""
        return f"answer type {self.type}"

    def settings(self) -> dict:
        """The settings that say how answers are read and asked for (the task's digest); the JSON key
        only when it is not the default, so digests made before it existed still hold."""
        out = {k: v for k, v in self.__dict__.items() if k != "json_key"}
        if self.json_key != JSON_KEY:
            out["json_key"] = self.json_key
        return out

    @abstractmethod
    def is_correct(self, pred: str, gold: str) -> bool: ...

    def same(self, a: str, b: str) -> bool:
        """Whether two extracted answers are one vote: equal as the gold answer and a prediction would be
        (equivalent math, numbers within the tolerance, text up to case)."""
        return a == b or self.is_correct(b, a)

    @abstractmethod
    def instruction(self) -> str:
        """What experts are told after the question, unless the task has an instruction of its own."""

    @abstractmethod
    def statement(self, value: str) -> str:
        """A sentence stating ``value`` in this format (``extract`` reads it back): for simulated answers."""

    def gold_error(self, gold: str) -> str | None:
        """Why ``gold`` cannot be an answer of this format, or None."""
        return None if gold.strip() else "is empty"


@dataclass(frozen=True)
class ChoiceFormat(AnswerFormat):
    options: int = 4
    json_key: str | None = _json_key()
    type: ClassVar[str] = "choice"

    def __post_init__(self) -> None:
        answers.choice_letters(self.options)  # 2..10

    def read(self, text: str) -> str | None:
        return answers.extract_choice(text, self.options)

    def read_value(self, value: str) -> str | None:
        return answers.choice_value(value, self.options)

    def is_correct(self, pred: str, gold: str) -> bool:
        return pred.strip().upper() == gold.strip().upper()

    def instruction(self) -> str:
        return (_REASON + '"The answer is (X)", where X is the answer choice (one capital letter), '
                "at the end of your response.")

    def statement(self, value: str) -> str:
        return f"The answer is ({value})"

    def gold_error(self, gold: str) -> str | None:
        letters = answers.choice_letters(self.options)
        if gold.strip().upper() not in letters or not gold.strip():
            return f"must be one of the letters {letters[0]}-{letters[-1]} ({self.options} options)"
        return None


@dataclass(frozen=True)
class BoxedFormat(AnswerFormat):
    json_key: str | None = _json_key()
    type: ClassVar[str] = "boxed"

    def read(self, text: str) -> str | None:
        return answers.extract_boxed(text)

    def read_value(self, value: str) -> str | None:
        boxed = answers.last_boxed(value)
        value = (boxed if boxed is not None else value).strip().strip("$").strip()
        return value or None

    def is_correct(self, pred: str, gold: str) -> bool:
        return answers.math_equal(gold, pred)

    def instruction(self) -> str:
        return (_REASON + '"The answer is \\boxed{X}", where X is the final answer, at the end of your response.')

    def statement(self, value: str) -> str:
        return f"The answer is \\boxed{{{value}}}"


@dataclass(frozen=True)
class NumberFormat(AnswerFormat):
    field: str | None = None
    tolerance: float = 1e-6
    relative_tolerance: float = 0.0
    json_key: str | None = _json_key()
    type: ClassVar[str] = "number"

    def read(self, text: str) -> str | None:
        return answers.extract_number(text, self.field)

    def read_value(self, value: str) -> str | None:
        return answers.number_in(value)

    def reading(self) -> str:
        if self.field:
            return f"answer type number, field {self.field!r} (the last number of the last {self.name}: value)"
        return "answer type number (the last number of the response)"

    @property
    def name(self) -> str:
        """The field as experts are told to write it (``Answer`` for ``**Answer:**``)."""
        return answers.field_name(self.field) if self.field else "The answer is"

    def is_correct(self, pred: str, gold: str) -> bool:
        x, y = answers.parse_number(pred), answers.parse_number(gold)
        return x is not None and y is not None and answers.numbers_equal(x, y, self.tolerance,
                                                                         self.relative_tolerance)

    def instruction(self) -> str:
        stated = f"{self.name}: N" if self.field else "The answer is N"
        return (_REASON + f'"{stated}", where N is the final answer as a number (digits only, no units), '
                "at the end of your response.")

    def statement(self, value: str) -> str:
        return f"{self.name}: {value}" if self.field else f"The answer is {value}"

    def gold_error(self, gold: str) -> str | None:
        return None if answers.parse_number(gold) is not None else "must be a number"


@dataclass(frozen=True)
class ExactFormat(AnswerFormat):
    json_key: str | None = _json_key()
    type: ClassVar[str] = "exact"

    def read(self, text: str) -> str | None:
        return answers.extract_stated(text)

    def read_value(self, value: str) -> str | None:
        return answers.extract_stated(value) or answers.clean_stated(value)

    def is_correct(self, pred: str, gold: str) -> bool:
        return answers.normalize_text(pred) == answers.normalize_text(gold)

    def instruction(self) -> str:
        return _REASON + '"The answer is X", where X is the final answer, at the end of your response.'

    def statement(self, value: str) -> str:
        return f"The answer is {value}"


@dataclass(frozen=True)
class RegexFormat(ExactFormat):
    pattern: str = "(.*)"
    ignore_case: bool = False
    json_key: str | None = _json_key()
    type: ClassVar[str] = "regex"

    @property
    def compiled(self) -> re.Pattern[str]:
        return _compile(self.pattern, self.ignore_case)

    def read(self, text: str) -> str | None:
        return answers.extract_regex(text, self.compiled)

    def read_value(self, value: str) -> str | None:
        # the pattern, if the field holds what the experts were told to print; else the field is the answer
        return answers.extract_regex(value, self.compiled) or answers.clean_stated(value)

    def instruction(self) -> str:  # never used: a regex task must say what to print (TaskSpec checks)
        return _REASON + "the final answer at the end of your response."

    def statement(self, value: str) -> str:
        for text in (f"The answer is {value}", f"Answer: {value}", value):
            if self.extract(text) == value:
                return text
        raise DataError(f"cannot state {value!r} so that the pattern {self.pattern!r} reads it back")


@lru_cache(maxsize=64)
def _compile(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE if ignore_case else 0)


def answer_format(spec: AnswerSpec) -> AnswerFormat:
    """The answer format of a definition's ``answer:``."""
    key = spec.json_key
    if spec.type == "choice":
        return ChoiceFormat(spec.options, json_key=key)
    if spec.type == "boxed":
        return BoxedFormat(json_key=key)
    if spec.type == "number":
        return NumberFormat(spec.field, spec.tolerance, spec.relative_tolerance, json_key=key)
    if spec.type == "exact":
        return ExactFormat(json_key=key)
    return RegexFormat(spec.pattern, spec.ignore_case, json_key=key)


# ---------------------------------------------------------------- questions and tasks


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
    answer: AnswerFormat
    aliases: tuple[str, ...] = ()
    #: the definition's own instruction (None: the answer format's)
    custom_instruction: str | None = None
    #: (split, data file) pairs, split "train" (validation) or "test"
    data: tuple[tuple[str, str], ...] = ()
    #: the file the task is defined in (for error messages)
    source: str | None = field(default=None, compare=False)

    @classmethod
    def from_spec(cls, spec: TaskSpec, data_dir: Path | None = None) -> "Task":
        """A task from its definition; ``data_dir`` (a folder of ``<name>_<split>.json``) replaces its data."""
        data = []
        for split in SPLITS:
            value = getattr(spec.data, SPLIT_FIELDS[split])
            if data_dir is not None:
                data.append((split, str(data_dir / f"{spec.name}_{split}.json")))
            elif value is not None:
                data.append((split, str(spec.path(value))))
        return cls(spec.name, answer_format(spec.answer), tuple(a.lower() for a in spec.aliases),
                   spec.instruction, tuple(data), str(spec.source) if spec.source else None)

    @property
    def answer_format(self) -> str:
        return self.answer.type

    @property
    def num_choices(self) -> int | None:
        return self.answer.options if isinstance(self.answer, ChoiceFormat) else None

    def named(self, name: str) -> bool:
        return name.lower() == self.name.lower() or name.lower() in self.aliases

    def extract(self, response: str | None) -> str | None:
        return None if response is None else self.answer.extract(response)

    def is_correct(self, pred: str | None, gold: str | None) -> bool:
        if pred is None or gold is None:
            return False
        return self.answer.is_correct(str(pred), str(gold))

    def same_answer(self, a: str, b: str) -> bool:
        """Whether two predictions are one vote (equivalent expressions, numbers within tolerance)."""
        return self.answer.same(a, b)

    def instruction(self) -> str:
        return self.custom_instruction or self.answer.instruction()

    def splits(self) -> list[str]:
        return [s for s, _ in self.data]

    def data_path(self, split: str) -> Path:
        for s, path in self.data:
            if s == split:
                return Path(path)
        where = f"{self.source}: " if self.source else ""
        raise DataError(f"{where}task {self.name} has no {SPLIT_FIELDS.get(split, split)} data "
                        f"(set data.{SPLIT_FIELDS.get(split, split)} in its definition)")

    def digest(self) -> str:
        """Identifies how the task asks and reads answers (saved profiles are for one digest)."""
        what = json.dumps({"answer": {"type": self.answer.type, **self.answer.settings()},
                           "instruction": self.instruction()}, sort_keys=True)
        return hashlib.sha256(what.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- the catalogue


@dataclass(frozen=True)
class Catalogue:
    """The tasks a deployment knows: the built-ins, then its own. Plain data: it travels to replicas."""

    tasks: tuple[Task, ...]

    @classmethod
    def from_config(cls, cfg: Config) -> "Catalogue":
        from ..config import builtin_task_specs

        data_dir = cfg.benchmarks_dir()
        builtin = tuple(Task.from_spec(s, data_dir) for s in builtin_task_specs())
        return cls(builtin + tuple(Task.from_spec(s) for s in cfg.tasks))

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def find(self, name: str) -> Task | None:
        for task in self.tasks:
            if task.named(name):
                return task
        return None

    def get(self, name: str | Task) -> Task:
        if isinstance(name, Task):
            return name
        task = self.find(name)
        if task is None:
            raise DataError(f"unknown task {name!r}; known tasks: {', '.join(self.names)}")
        return task

    def questions(self, task: str | Task, split: str) -> list[Question]:
        return load_questions(self.get(task), split)  # type: ignore[arg-type]


@lru_cache(maxsize=1)
def builtin_catalogue() -> Catalogue:
    from ..config import builtin_task_specs

    return Catalogue(tuple(Task.from_spec(s) for s in builtin_task_specs()))


def catalogue_or_builtin(catalogue: Catalogue | None) -> Catalogue:
    return catalogue if catalogue is not None else builtin_catalogue()


#: the built-in tasks by name
TASKS: dict[str, Task] = {t.name: t for t in builtin_catalogue().tasks}

#: A task for free-form questions with no data set behind them (serving without a task).
GENERAL = Task("general", BoxedFormat())


def get_task(name: str) -> Task:
    """A built-in task by name or alias (a deployment's own tasks: ``Catalogue.from_config(cfg).get``)."""
    return builtin_catalogue().get(name)


def builtin_benchmarks_dir() -> Path:
    return Path(str(resources.files("skillmoe_ray") / "data" / "benchmarks"))


# ---------------------------------------------------------------- data files


def jsonl_objects(lines: Iterable[str], path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-blank line of a JSONL file; errors name the file and line."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{n}: expected an object")
        yield n, row


def _rows(path: Path) -> list[tuple[str, object]]:
    """(where, row) of a JSON list or a JSONL file; ``where`` is "<path>: item i" or "<path>:<line>"."""
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file") from None
    if path.suffix == ".jsonl":
        return [(f"{path}:{n}", row) for n, row in jsonl_objects(text.splitlines(), path)]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of questions (or a .jsonl file), got {type(data).__name__}")
    return [(f"{path}: item {i}", row) for i, row in enumerate(data)]


def _gold(row: dict, where: str) -> str | None:
    golds = [(k, row[k]) for k in ("gold", "gold_answer") if row.get(k) is not None]
    if len(golds) == 2 and str(golds[0][1]) != str(golds[1][1]):
        raise DataError(f"{where}: fields 'gold' and 'gold_answer' disagree; give one")
    if not golds:
        return None
    key, gold = golds[0]
    if isinstance(gold, bool) or not isinstance(gold, (str, int, float)):
        raise DataError(f"{where}: field {key!r} must be a string or a number")
    return str(gold)


def load_questions(task: str | Task, split: Split, data_dir: str | Path | None = None) -> list[Question]:
    """A task's questions of one split ("train" is the validation split).

    Data files are a JSON list or JSONL (``.jsonl``) of objects with ``question``, ``gold`` (or the
    reference format's ``gold_answer``) and optionally ``category``; other fields are ignored. Errors
    name the file and the item or line. ``data_dir`` reads ``<data_dir>/<task>_<split>.json`` instead.
    """
    task_obj = task if isinstance(task, Task) else get_task(task)
    path = Path(data_dir) / f"{task_obj.name}_{split}.json" if data_dir else task_obj.data_path(split)
    out: list[Question] = []
    for i, (where, row) in enumerate(_rows(path)):
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object with 'question' and 'gold'")
        text = row.get("question")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: field 'question' must be a non-empty string")
        gold = _gold(row, where)
        if gold is not None:
            why = task_obj.answer.gold_error(gold)
            if why:
                raise DataError(f"{where}: gold answer {gold!r} {why} (task {task_obj.name}, "
                                f"answer type {task_obj.answer_format})")
        category = row.get("category")
        if category is not None and not isinstance(category, str):
            raise DataError(f"{where}: field 'category' must be a string")
        out.append(Question(task=task_obj.name, split=split, index=i, text=text, gold=gold, category=category))
    return out


def splits_of(value: str) -> list[Split]:
    """``"train,test"`` (or ``validation``) as split names; raises DataError on anything else."""
    out: list[Split] = []
    for part in (p.strip().lower() for p in value.split(",") if p.strip()):
        split = "train" if part == "validation" else part
        if split not in SPLITS:
            raise DataError(f"unknown split {part!r} (use validation/train, test)")
        if split not in out:
            out.append(split)  # type: ignore[arg-type]
    if not out:
        raise DataError("no split given")
    return out

