"""Whether a task's answer format can read what the experts wrote.

A format that reads nothing fails silently: every response scores as "no
answer", the profiles sit near zero and evaluation prints small numbers that
look like weak models. So profiling and evaluation count, per expert, the
responses from which no answer was read, keep a few of them as examples, and
profiling refuses to build profiles on a format that reads nothing from most of
an expert's responses. Pure functions over plain data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

from ..errors import DataError
from .catalogue import Task

#: examples of unread responses kept per expert, and how much of each
EXAMPLES = 3
EXAMPLE_CHARS = 300
#: fewer written responses than this say too little to fail on (a few answers cut off by a small
#: max_tokens are not a format that does not fit); they are still counted and reported
MIN_RESPONSES = 10


@dataclass(frozen=True)
class Readability:
    """One expert's responses to one split: how many, how many empty, how many with no readable answer."""

    expert: str
    responses: int
    #: responses that are empty (no recording, or the model wrote nothing)
    empty: int
    #: non-empty responses from which the format read no answer
    unread: int
    #: (question id, the response's start) of a few unread responses
    examples: list[tuple[str, str]] = field(default_factory=list)

    @property
    def share_unread(self) -> float:
        """Unread among the responses the expert wrote (empty ones are not the format's fault)."""
        written = self.responses - self.empty
        return self.unread / written if written else 0.0

    @property
    def share_no_answer(self) -> float:
        """Responses with no answer at all, empty or unread."""
        return (self.unread + self.empty) / self.responses if self.responses else 0.0

    @classmethod
    def from_json(cls, data: Mapping) -> "Readability":
        return cls(data["expert"], data["responses"], data["empty"], data["unread"],
                   [(x["question"], x["response"]) for x in data["examples"]])

    def to_json(self) -> dict:
        data = asdict(self)
        data["examples"] = [{"question": q, "response": r} for q, r in self.examples]
        data["share_unread"] = self.share_unread
        data["share_no_answer"] = self.share_no_answer
        return data


def _excerpt(text: str) -> str:
    text = text.strip()
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS] + "..."


def readability(expert: str, qids: Sequence[str], responses: Sequence[str | None],
                preds: Sequence[str | None]) -> Readability:
    empty = unread = 0
    examples: list[tuple[str, str]] = []
    for qid, text, pred in zip(qids, responses, preds):
        if not text or not text.strip():
            empty += 1
        elif pred is None:
            unread += 1
            if len(examples) < EXAMPLES:
                examples.append((qid, _excerpt(text)))
    return Readability(expert, len(responses), empty, unread, examples)


def pool_readability(qids: Sequence[str], outputs: Mapping[str, Sequence[str | None]],
                     preds: Mapping[str, Sequence[str | None]]) -> dict[str, Readability]:
    return {e: readability(e, qids, outputs[e], preds[e]) for e in outputs}


def where_to_fix(task: Task, example: str = "") -> str:
    """The setting to change, and the file it is in."""
    where = f" in {task.source}" if task.source else ""
    key = task.answer.json_key
    if key:
        json_part = f"; responses written as JSON are read from their {key!r} field (answer.json_key)"
    elif example.lstrip().startswith("{"):
        json_part = "; the responses look like JSON objects, which answer.json_key reads by their answer field"
    else:
        json_part = ""
    return f"{task.answer.reading()}{json_part}; check the answer settings of task {task.name}{where}"


def check_readable(task: Task, report: Mapping[str, Readability], limit: float, split: str = "validation") -> None:
    """Refuse a format that reads nothing from most of an expert's responses (of at least
    :data:`MIN_RESPONSES`): name the experts, the setting and an example, so the fix is one look away."""
    failing = sorted((r for r in report.values() if r.responses - r.empty >= MIN_RESPONSES and r.share_unread > limit),
                     key=lambda r: (-r.share_unread, r.expert))
    if not failing:
        return
    worst = failing[0]
    qid, example = worst.examples[0] if worst.examples else ("?", "")
    others = ", ".join(f"{r.expert!r} ({100 * r.share_unread:.0f}%)" for r in failing[1:])
    raise DataError(
        f"task {task.name}: no answer could be read from {worst.unread:,} of the {worst.responses - worst.empty:,} "
        f"{split} responses of expert {worst.expert!r} ({100 * worst.share_unread:.0f}%, more than "
        f"profiling.max_unreadable = {limit:g})" + (f", nor from most of experts {others}" if others else "")
        + f"; {where_to_fix(task, example)}. For example, {qid}:\n  {example!r}")


def format_readability(report: Mapping[str, Readability], split: str) -> list[str]:
    """Lines naming the experts some of whose responses had no readable answer, with an example each."""
    lines = []
    for r in sorted(report.values(), key=lambda r: -r.share_no_answer):
        if not r.unread and not r.empty:
            continue
        parts = []
        if r.unread:
            parts.append(f"{r.unread} unreadable")
        if r.empty:
            parts.append(f"{r.empty} empty")
        lines.append(f"  {r.expert}: no answer in {100 * r.share_no_answer:.1f}% of {r.responses} {split} "
                     f"responses ({', '.join(parts)})")
        for qid, text in r.examples[:1]:
            lines.append(f"    e.g. {qid}: {text[:160]!r}")
    return lines
