"""Replays real models' recorded outputs.

A recording is ``<model>.jsonl.gz`` with one line per question:
``{"split": "train"|"test", "index": i, "pred": ..., "response": "..."}``,
index pointing into the task's data set ("train" is its validation split). A
directory of such files is a pool: every file is one expert. The task it answers is
``engine_args.task`` (``pool.task`` for a ``recorded_dir``), else the task the folder's
``record.json`` names (``skillmoe record`` writes it), else the one task the deployment
serves, else the task the folder is named after (``mmlu_pro`` -> MMLU_Pro).
The engine answers a request by its question id, or, for a request that arrives
as text (an HTTP question), by looking the text up in the task's data set. It returns the recorded *response*; the answer is read
out of it by the task's extractor, exactly as for a live model.

One recording per question means repeated draws of the same expert return the
same chain of thought, where a live model sampling at 0.7 would vary.
"""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path

from ..errors import DataError, EngineError
from ..tasks.catalogue import Catalogue, Task, catalogue_or_builtin, jsonl_objects, load_questions
from .base import Engine, GenerationRequest, SamplingSettings
from .chat import strip_special_tokens


def builtin_recorded_dir(task_dir: str = "mmlu_pro") -> Path:
    return Path(str(resources.files("skillmoe_ray") / "data" / "recorded" / task_dir))


#: what ``skillmoe record`` writes beside the recordings: the task, its definition, the sampling
MANIFEST = "record.json"


def manifest_task(folder: Path) -> str | None:
    """The task a recordings folder's ``record.json`` names, if it has one that does."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        task = json.loads(path.read_text(encoding="utf-8")).get("task")
    except (OSError, ValueError, AttributeError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None
    return task if isinstance(task, str) and task else None


def task_for_recording_dir(path: Path, catalogue: Catalogue | None = None) -> Task | None:
    """The task a recordings folder belongs to by what it says: its record.json, else its name."""
    catalogue = catalogue_or_builtin(catalogue)
    named = manifest_task(path)
    return catalogue.find(named) if named else catalogue.find(path.name)


def read_recording(path: Path) -> dict[tuple[str, int], str]:
    """(split, index) -> response text. Errors name the file and line."""
    if not path.is_file():
        raise DataError(f"{path}: recording not found")
    out: dict[tuple[str, int], str] = {}
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for lineno, row in jsonl_objects(fh, path):
                split, index, response = row.get("split"), row.get("index"), row.get("response")
                if split not in ("train", "test"):
                    raise DataError(f"{path}:{lineno}: field 'split' must be 'train' or 'test', got {split!r}")
                if not isinstance(index, int) or isinstance(index, bool) or index < 0:
                    raise DataError(f"{path}:{lineno}: field 'index' must be a non-negative integer")
                if not isinstance(response, str):
                    raise DataError(f"{path}:{lineno}: field 'response' must be a string")
                out[(split, index)] = response
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read recording ({exc})") from None
    return out


class RecordedEngine(Engine):
    """An expert whose answers are a real model's recorded outputs."""

    #: a recording is a few MB of text: keeping it loaded costs nothing worth swapping for
    cheap_residency = True

    def __init__(self, name: str, path: str | Path, task: str | None = None, catalogue: Catalogue | None = None):
        super().__init__(name)
        self.path = Path(path)
        catalogue = catalogue_or_builtin(catalogue)
        self.task = catalogue.get(task) if task else task_for_recording_dir(self.path.parent, catalogue)
        self._responses: dict[tuple[str, int], str] | None = None
        self._by_text: dict[str, tuple[str, int]] | None = None

    def load(self) -> None:
        if self._responses is None:
            self._responses = read_recording(self.path)
        super().load()

    def release(self) -> None:
        self._responses = None
        super().release()

    def resident_bytes(self) -> int:
        if not self._responses:
            return 0
        return sum(len(v) for v in self._responses.values())

    def has(self, split: str, index: int) -> bool:
        self.ensure_loaded()
        assert self._responses is not None
        return (split, index) in self._responses

    def _text_index(self) -> dict[str, tuple[str, int]]:
        if self.task is None:
            raise EngineError(
                f"recorded expert {self.name!r}: cannot look questions up by text without knowing the task; "
                f"set pool.task in the deployment (engine_args.task for one expert)"
            )
        if self._by_text is None:
            index: dict[str, tuple[str, int]] = {}
            self._n_questions = 0
            for split in self.task.splits():
                for q in load_questions(self.task, split):  # type: ignore[arg-type]
                    index.setdefault(q.text.strip(), (split, q.index))
                    self._n_questions += 1
            self._by_text = index
        return self._by_text

    def _locate(self, req: GenerationRequest) -> tuple[str, int]:
        if req.key:
            parts = req.key.split("/")
            if (len(parts) == 3 and (self.task is None or parts[0] == self.task.name) and parts[1] in ("train", "test")
                    and parts[2].isdigit()):
                return parts[1], int(parts[2])
        if req.question is not None:
            hit = self._text_index().get(req.question.strip())
            if hit:
                return hit
        if self.task:
            self._text_index()
            known = f"the {self._n_questions:,} {self.task.name} questions"
        else:
            known = "its recorded questions"
        raise EngineError(
            f"this pool replays recorded answers of real models to {known} (train and test splits) and has no "
            f"recording for this question (expert {self.name!r}); ask one of those questions, or serve a pool "
            "that answers anything: real models, e.g. `skillmoe serve --config deployments/local-cpu.yaml`"
        )

    def generate(self, requests: list[GenerationRequest], sampling: SamplingSettings) -> list[str]:
        self.ensure_loaded()
        assert self._responses is not None
        out = []
        for req in requests:
            if req.role != "expert":
                raise EngineError(f"recorded expert {self.name!r} can only replay expert answers, not {req.role} prompts")
            # A question the model has no recording for reads as an empty response: no answer.
            out.append(strip_special_tokens(self._responses.get(self._locate(req), "")))
        return out
