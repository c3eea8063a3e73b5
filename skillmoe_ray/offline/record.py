"""``skillmoe record``: a pool's answers to a task's questions, in the recorded format.

Each expert of the deployment's pool answers the chosen splits of a task, with the
prompt the serving path sends experts (:func:`pipeline.expert_requests`) and the
deployment's sampling settings, so a recorded pool replays what the live one would
have said. The output folder is a recorded pool: ``<out>/<expert>.jsonl.gz``, one line
``{"split", "index", "pred", "response"}`` per question, and ``record.json``, whose ``task``
tells the recorded engine whose questions they are (the folder may be named anything).

Experts run one after another (expert-major: each model is loaded once and answers
all its questions, as the planner groups work). Answers are appended to
``<expert>.jsonl.gz.partial`` after every batch; when an expert is done its recording is
rewritten in one atomic step and the journal removed. Running the command again skips
every question already recorded, so an interrupted run loses at most the batch in
flight. ``record.json`` says how the recordings were made; a run with other settings
(answer format, instruction, sampling, a different model under an expert's name)
refuses to mix its answers in.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from .. import __version__
from ..engines.base import SamplingSettings
from ..engines.recorded import MANIFEST, read_recording
from ..errors import ConfigError, DataError, EngineError
from ..pipeline import expert_requests
from ..runtime import Runtime
from ..tasks.catalogue import Question, Task

log = logging.getLogger(__name__)

Key = tuple[str, int]


@dataclass
class ExpertRecord:
    """What one expert's recording holds after a run."""

    name: str
    recorded: int = 0
    new: int = 0
    load_s: float = 0.0
    generate_s: float = 0.0
    accuracy: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def default_out(rt: Runtime, task: Task) -> Path:
    """``recorded/<task>`` next to the deployment file: a folder a recorded pool can name."""
    return rt.cfg.resolve_path("recorded") / task.name


def recording_path(out: Path, expert: str) -> Path:
    return out / f"{expert}.jsonl.gz"


def journal_path(out: Path, expert: str) -> Path:
    return out / f"{expert}.jsonl.gz.partial"


def read_journal(path: Path) -> dict[Key, str]:
    """Answers appended so far; a line cut short by a kill (the last one) is dropped."""
    out: dict[Key, str] = {}
    if not path.is_file():
        return out
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                row = json.loads(line)
                out[(row["split"], int(row["index"]))] = str(row["response"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                log.info("%s: dropping an unfinished line", path)
    return out


def _row(task: Task, key: Key, response: str) -> dict:
    return {"split": key[0], "index": key[1], "pred": task.extract(response), "response": response}


def write_recording(path: Path, task: Task, answers: dict[Key, str]) -> None:
    """The whole recording, sorted by (split, index), replacing the old one in one step."""
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as fh:
        for key in sorted(answers):
            fh.write(json.dumps(_row(task, key, answers[key]), ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def settle(out: Path, task: Task, expert: str) -> dict[Key, str]:
    """An expert's recorded answers: the recording plus a journal left by an interrupted run (merged in)."""
    path, journal = recording_path(out, expert), journal_path(out, expert)
    answers = read_recording(path) if path.is_file() else {}
    pending = read_journal(journal)
    if pending:
        answers.update(pending)
        write_recording(path, task, answers)
    if journal.exists():
        journal.unlink()
    return answers


def _manifest(rt: Runtime, task: Task, sampling: SamplingSettings, experts: Sequence[str]) -> dict:
    by_name = {e.name: e for e in rt.experts}
    return {
        "task": task.name,
        "task_definition": task.digest(),
        "instruction": task.instruction(),
        "sampling": {"temperature": sampling.temperature, "max_tokens": sampling.max_tokens,
                     "top_p": sampling.top_p, "seed": sampling.seed},
        "experts": {n: {"engine": by_name[n].engine, "model": by_name[n].model,
                        "engine_args": by_name[n].engine_args} for n in experts},
    }


def _check_manifest(out: Path, now: dict) -> dict:
    """The folder's manifest with this run's settings merged in; an error if they differ from before."""
    path = out / MANIFEST
    if not path.is_file():
        return now
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); delete it to record into this folder") from None
    fix = f"record into another --out folder, or delete {out} to start over"
    for key in ("task", "task_definition", "instruction", "sampling"):
        if before.get(key) != now[key]:
            raise ConfigError(f"{path}: recorded with another {key.replace('_', ' ')} "
                              f"({before.get(key)!r}, now {now[key]!r}); {fix}")
    for name, expert in now["experts"].items():
        old = before.get("experts", {}).get(name)
        if old is not None and (old.get("engine"), old.get("model")) != (expert["engine"], expert["model"]):
            raise ConfigError(f"{path}: expert {name!r} was recorded from {old.get('engine')}:{old.get('model')}, "
                              f"now {expert['engine']}:{expert['model']}; {fix}")
    return {**before, **now, "experts": {**before.get("experts", {}), **now["experts"]}}


def _write_manifest(out: Path, manifest: dict) -> None:
    manifest = {**manifest, "skillmoe_version": __version__,
                "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / MANIFEST)


def record(rt: Runtime, task: Task, splits: Sequence[str], out: Path, limit: int | None = None,
           experts: Sequence[str] | None = None, batch_size: int = 8, progress: bool = True) -> list[ExpertRecord]:
    """Record every chosen expert's answers to the first ``limit`` questions of each split (resumable)."""
    names = list(experts) if experts else rt.expert_names
    unknown = [n for n in names if n not in rt.engines]
    if unknown:
        raise ConfigError(f"{rt.cfg.source or rt.cfg.name}: pool: no expert named {', '.join(map(repr, unknown))} "
                          f"(have: {', '.join(rt.expert_names)})")
    questions: list[Question] = []
    for split in splits:
        questions += rt.questions(task, split)[:limit]
    sampling = SamplingSettings(rt.cfg.generation.temperature, rt.cfg.generation.max_tokens, seed=rt.cfg.routing.seed)
    out.mkdir(parents=True, exist_ok=True)
    manifest = _check_manifest(out, _manifest(rt, task, sampling, names))
    _write_manifest(out, manifest)  # before any answer: a later run with other settings is refused

    done = {n: settle(out, task, n) for n in names}
    todo = {n: [q for q in questions if (q.split, q.index) not in done[n]] for n in names}
    total = sum(len(t) for t in todo.values())
    if progress:
        print(f"recording {len(names)} expert(s) on {len(questions)} {task.name} questions into {out}: "
              f"{total} answers to go, {len(names) * len(questions) - total} already recorded")
    results = []
    bar = tqdm(total=total, desc="recording", unit="answer", disable=not progress)
    try:
        for name in names:
            results.append(_record_expert(rt, task, name, todo[name], done[name], out, sampling, batch_size, bar))
    finally:
        bar.close()
    # questions recorded, per split, by the expert that has the most
    manifest["questions"] = {s: max(sum(k[0] == s for k in done[n]) for n in names) for s in ("train", "test")
                             if any(k[0] == s for n in names for k in done[n])}
    _write_manifest(out, manifest)
    for r in results:
        answers = done[r.name]
        r.recorded = len(answers)
        for split in splits:
            qs = [q for q in questions if (q.split, q.index) in answers and q.split == split]
            if qs:
                r.accuracy[split] = sum(task.is_correct(task.extract(answers[(q.split, q.index)]), q.gold)
                                        for q in qs) / len(qs)
    return results


def _record_expert(rt: Runtime, task: Task, name: str, todo: list[Question], answers: dict[Key, str], out: Path,
                   sampling: SamplingSettings, batch_size: int, bar: tqdm) -> ExpertRecord:
    result = ExpertRecord(name)
    if not todo:
        return result
    engine = rt.engines[name]
    bar.set_postfix_str(f"{name}: loading")
    t0 = time.perf_counter()
    try:
        engine.load()
    except Exception as exc:  # noqa: BLE001 - one broken expert must not stop the others
        result.error = f"cannot load: {exc}"
        bar.update(len(todo))
        return result
    result.load_s = time.perf_counter() - t0
    bar.set_postfix_str(name)
    journal = journal_path(out, name)
    try:
        with open(journal, "a", encoding="utf-8") as fh:
            for start in range(0, len(todo), max(1, batch_size)):
                batch = todo[start:start + max(1, batch_size)]
                t1 = time.perf_counter()
                texts = engine.generate(expert_requests(task, batch, [[] for _ in batch]), sampling)
                result.generate_s += time.perf_counter() - t1
                for q, text in zip(batch, texts):
                    fh.write(json.dumps({"split": q.split, "index": q.index, "response": text},
                                        ensure_ascii=False) + "\n")
                    answers[(q.split, q.index)] = text
                fh.flush()
                os.fsync(fh.fileno())
                result.new += len(batch)
                bar.update(len(batch))
    except EngineError as exc:
        result.error = str(exc)
    finally:
        engine.release()
    settle(out, task, name)
    return result


def format_summary(task: Task, out: Path, results: Sequence[ExpertRecord]) -> str:
    lines = [f"recordings of {task.name} in {out}:"]
    for r in results:
        acc = ", ".join(f"{'validation' if s == 'train' else s} {100 * a:.1f}%" for s, a in r.accuracy.items())
        timing = f"; load {r.load_s:.1f} s, generate {r.generate_s:.1f} s" if r.new else ""
        state = f"  FAILED: {r.error}" if r.error else ""
        lines.append(f"  {r.name:<28} {r.recorded:>5} answers ({r.new} new){timing}; right: {acc or '-'}{state}")
    return "\n".join(lines)
