"""Deployment configuration: YAML files validated by pydantic.

One file per deployment under ``deployments/``. Unknown fields are errors (a
typo must not silently fall back to a default), and every error names the file,
the field and what was expected.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

EngineKind = Literal["recorded", "vllm", "transformers", "simulated"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def relative_to(source: Path | None, value: str) -> Path:
    """A path written in the file ``source``: relative to that file's folder (to the working directory
    when there is no file)."""
    p = Path(value).expanduser()
    if p.is_absolute() or source is None:
        return p
    return (source.parent / p).resolve()


# ---------------------------------------------------------------- task definitions


class _AnswerSpec(_Strict):
    #: a response written as a JSON object (``{"reasoning": ..., "answer": ...}``) is read from this
    #: field only (keys match regardless of case); null reads every response as text
    json_key: str | None = Field(default="answer", min_length=1)


class ChoiceAnswer(_AnswerSpec):
    """A letter among ``options`` choices, read from the first "answer is (X)" (the MMLU-Pro harness's rule)."""

    type: Literal["choice"]
    options: int = Field(ge=2, le=10)


class BoxedAnswer(_AnswerSpec):
    """The last ``\\boxed{...}``, compared with math-verify."""

    type: Literal["boxed"]


class NumberAnswer(_AnswerSpec):
    """A number: the last number of the last ``<field>:`` value when ``field`` is set (``Answer``,
    ``Answer:``, ``"answer":`` and ``**Answer:**`` are one field), else the last number of the response;
    equal to the gold within ``tolerance`` (absolute) or ``relative_tolerance`` (of the larger magnitude)."""

    type: Literal["number"]
    field: str | None = Field(default=None, min_length=1)
    tolerance: float = Field(default=1e-6, ge=0)
    relative_tolerance: float = Field(default=0.0, ge=0, lt=1)


class ExactAnswer(_AnswerSpec):
    """The text after the last "answer is" or "Answer:", equal to the gold ignoring case, spacing,
    quotes and a final period."""

    type: Literal["exact"]


class RegexAnswer(_AnswerSpec):
    """Group 1 of the last match of ``pattern``, compared as exact text."""

    type: Literal["regex"]
    pattern: str = Field(min_length=1)
    ignore_case: bool = False

    @field_validator("pattern")
    @classmethod
    def _one_group(cls, v: str) -> str:
        try:
            compiled = re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression ({exc})") from None
        if compiled.groups != 1:
            raise ValueError(f"needs exactly one capture group (the answer), has {compiled.groups}")
        return v


AnswerSpec = Annotated[Union[ChoiceAnswer, BoxedAnswer, NumberAnswer, ExactAnswer, RegexAnswer],
                       Field(discriminator="type")]
ANSWER_TYPES = ("choice", "boxed", "number", "exact", "regex")


class TaskData(_Strict):
    """Data files, JSON (a list) or JSONL (one object a line) of ``{question, gold[, category]}``; paths
    are relative to the file the task is defined in. ``validation`` builds the profiles."""

    validation: str = Field(min_length=1)
    test: str | None = Field(default=None, min_length=1)


_TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class TaskSpec(_Strict):
    """One task: its data, how its answers are read and compared, and what experts are told."""

    name: str
    aliases: list[str] = Field(default_factory=list)
    data: TaskData
    answer: AnswerSpec
    #: replaces the answer format's default instruction after the question
    instruction: str | None = Field(default=None, min_length=1)

    #: the file this definition was read from; its data paths are relative to it (not a YAML field)
    source: Path | None = Field(default=None, exclude=True)

    @field_validator("name", "aliases")
    @classmethod
    def _names(cls, v: str | list[str]) -> str | list[str]:
        for name in [v] if isinstance(v, str) else v:
            if not _TASK_NAME.match(name):
                raise ValueError(f"{name!r}: a task name is letters, digits, '_', '-' and '.', "
                                 "starting with a letter or digit")
        return v

    @field_validator("answer", mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        # "answer: boxed" for the formats without settings
        return {"type": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _regex_needs_instruction(self) -> "TaskSpec":
        if self.answer.type == "regex" and not self.instruction:
            raise ValueError("a regex answer needs 'instruction': the experts must be told the format "
                             "the pattern reads")
        return self

    def path(self, value: str) -> Path:
        """A data path of this definition, relative to the file it is defined in."""
        return relative_to(self.source, value)


class TaskFile(_Strict):
    """A YAML file of task definitions (the built-ins' ``data/tasks.yaml``, or one a deployment includes)."""

    tasks: list[TaskSpec] = Field(default_factory=list)


# ---------------------------------------------------------------- the deployment


class ExpertConfig(_Strict):
    """One pool model."""

    name: str = Field(min_length=1)
    engine: EngineKind
    #: hub id, local folder, or (recorded engine) the recording file
    model: str = Field(min_length=1)
    engine_args: dict[str, Any] = Field(default_factory=dict)
    #: weights in GB; used by the planner's cost model and the residency cache
    size_gb: float | None = Field(default=None, gt=0)


class PoolConfig(_Strict):
    experts: list[ExpertConfig] = Field(default_factory=list)
    #: shorthand for a recorded pool: every ``*.jsonl.gz`` in the folder is one expert
    #: ("builtin:mmlu_pro" is the recording shipped with the package); relative to this file
    recorded_dir: str | None = None
    #: the task recorded_dir's recordings answer (default: the task its record.json names, else the one
    #: task the deployment serves, else the task the folder is named after)
    task: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _not_empty(self) -> "PoolConfig":
        if not self.experts and not self.recorded_dir:
            raise ValueError("the pool needs 'experts' or 'recorded_dir'")
        names = [e.name for e in self.experts]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"expert names must be unique, repeated: {', '.join(dupes)}")
        return self


class SkillsConfig(_Strict):
    #: ``keyword_llm``: the paper's keyword LLM; ``embedding``: tag questions against
    #: the skill vocabulary by Sentence-BERT similarity (no LLM needed)
    extractor: Literal["keyword_llm", "embedding"] = "embedding"
    #: expert name (or any model spec) that runs the keyword prompt
    keyword_model: str | None = None
    samples: int = Field(default=5, ge=1)
    min_count: int = Field(default=2, ge=1)
    max_chars: int = Field(default=20, ge=1)
    #: skills per question for the embedding tagger
    top_n: int = Field(default=3, ge=1)
    #: "builtin" or a text file with one skill per line
    vocabulary: str = "builtin"
    #: sentence-transformers model: "all-MiniLM-L6-v2" uses the PyPI-packaged copy
    embedder: str = "all-MiniLM-L6-v2"

    @model_validator(mode="after")
    def _keyword_model(self) -> "SkillsConfig":
        if self.extractor == "keyword_llm" and not self.keyword_model:
            raise ValueError("extractor 'keyword_llm' needs 'keyword_model'")
        return self


class RoutingConfig(_Strict):
    #: paper: the reference's recruitment; top_weight: its weights, top-k without sampling;
    #: calibrated: shrunk per-skill accuracy; cascade: top-k by validation rank, asked
    #: in order until the vote is settled; fixed: the top-k by validation rank;
    #: budget: experts most likely right on the question's skills first, asked until
    #: two agree or the budget (max_calls, max_size_gb) is spent
    strategy: Literal["paper", "top_weight", "calibrated", "cascade", "fixed", "budget"] = "paper"
    k: int = Field(default=3, ge=1)
    #: temperature of the global strength gamma (paper: 0.5)
    temperature: float = Field(default=0.5, gt=0)
    #: experts recruited for less than this share of a batch are replaced (paper: 5%)
    usage_floor: float = Field(default=0.05, ge=0, lt=1)
    seed: int = 0
    #: budget: at most this many expert calls per question
    max_calls: int = Field(default=5, ge=1)
    #: budget: at most this summed expert size (GB) per question; unset: no size budget
    max_size_gb: float | None = Field(default=None, gt=0)
    #: budget: order experts by estimated accuracy / size ** size_weight (0: by accuracy alone)
    size_weight: float = Field(default=0.0, ge=0)


class AggregationConfig(_Strict):
    #: ``vote``: majority vote; ``weighted_vote``: votes weighted by validation skill;
    #: ``llm``: an aggregator model reads the experts' chains of thought
    mode: Literal["vote", "weighted_vote", "llm"] = "vote"
    #: candidates for the task-level aggregator benchmark (default: the whole pool)
    candidates: list[str] = Field(default_factory=list)
    #: fixed aggregator (skips the benchmark)
    aggregator: str | None = None
    max_tokens: int = Field(default=4096, ge=1)
    #: an LLM aggregator is not asked when every expert of a question gave the same answer: that answer
    #: stands (the aggregator reported as "agreement")
    skip_when_agreed: bool = False


class ServingConfig(_Strict):
    workers: int = Field(default=1, ge=1)
    gpus_per_worker: float = Field(default=0, ge=0)
    cpus_per_worker: float = Field(default=1, ge=0)
    #: how the workers' placement group lays their bundles over the cluster's nodes (Ray's strategies):
    #: PACK (as few nodes as fit, the default), SPREAD (across nodes where it can), STRICT_PACK (one node
    #: or nothing), STRICT_SPREAD (one worker a node or nothing)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    #: swappable models a worker keeps loaded at once, at most; default: as many as fit its GPU memory
    #: (each expert's footprint in bytes: weights, KV cache, activations, CUDA context), and 1 on a
    #: worker without a GPU
    models_per_worker: int | None = Field(default=None, ge=1)
    #: memory of one GPU (GB) where the workers cannot read it from the device (logical GPUs in tests
    #: and benchmarks; a pool planned for another machine); default: read from the GPU
    gpu_memory_gb: float | None = Field(default=None, gt=0)
    #: share of a worker's GPU memory its models may fill (the rest: fragmentation, its own process)
    gpu_memory_fraction: float = Field(default=0.92, gt=0, le=1)
    #: host memory (GB) a worker may fill with parked models (pinned weights), which come back with a
    #: wake instead of a cold start; default: 80% of what its node has available at start, shared by the
    #: workers on that node; 0: no host tier (evicted models are freed)
    host_budget_gb: float | None = Field(default=None, ge=0)
    #: read the next model's weights into host memory while the current one generates
    #: (engines that can: transformers, simulated; vLLM builds its engine at load)
    prefetch: bool = True
    #: the aggregator actor's GPUs: an LLM aggregator on a GPU needs memory of its own (Ray gives an
    #: actor that asks for none no GPU of its own, and its engine would take a worker's); a fraction
    #: shares a GPU with a worker, whose budget is then that much smaller (gpus_per_worker < 1)
    aggregator_gpus: float = Field(default=0, ge=0)
    #: the ingress replicas' skill-extraction batches: how long one waits to fill, and its largest size
    batch_window_s: float = Field(default=0.05, ge=0)
    max_batch_size: int = Field(default=64, ge=1)
    #: continuous scheduling (scheduling/dispatch.py): prompts of one expert a worker runs before an idle
    #: worker is given a copy of that expert rather than more joining it ...
    join_limit: int = Field(default=4, ge=1)
    #: ... and how long a queued prompt may wait before it goes first and drains a busy worker for it
    max_wait_s: float = Field(default=60.0, gt=0)
    #: run the ingress replicas and the scheduler on the head node, so that losing a (GPU) worker node
    #: loses workers only, never the requests the control plane holds; off: anywhere Ray places them
    control_on_head: bool = True
    #: stateless ingress replicas started by `skillmoe serve` (a Serve config file sets its own
    #: num_replicas or autoscaling_config for SkillMoEIngress); the scheduler is always one
    ingress_replicas: int = Field(default=1, ge=1)
    #: tasks whose profiles are loaded at start; the first is the default for requests without one.
    #: Built-in or defined under the file's ``tasks:``; default: the tasks the file defines, else MMLU_Pro
    tasks: list[str] = Field(default_factory=lambda: ["MMLU_Pro"], min_length=1)
    max_question_chars: int = Field(default=20_000, ge=1)
    #: requests admitted at once (queued or in a batch); past it: 503 with Retry-After
    max_pending: int = Field(default=512, ge=1)
    #: a request still unanswered after this gets 504
    request_timeout_s: float = Field(default=600.0, gt=0)
    #: a worker whose job runs past job_timeout_min_s + job_timeout_factor x its predicted finish (the cost
    #: model's) is counted lost, and its jobs go to the other workers
    job_timeout_factor: float = Field(default=4.0, gt=0)
    job_timeout_min_s: float = Field(default=30.0, gt=0)
    #: seconds between looks at Ray's node table and pings of idle (or lost) workers; a lost worker that
    #: answers again rejoins the pool
    health_probe_s: float = Field(default=2.0, gt=0)
    #: the aggregator actor's answer is waited for this long before the vote of the experts stands in
    aggregator_timeout_s: float = Field(default=300.0, gt=0)
    #: environment variable holding the API key; if set (or api_key_file is), every
    #: endpoint but /healthz needs "Authorization: Bearer <key>"
    api_key_env: str = "SKILLMOE_API_KEY"
    api_key_file: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)


class ProfilingConfig(_Strict):
    #: validation questions the profiles are built on (a seeded sample; default: all of them).
    #: Real models on a CPU need a small number: each answers every profiling question.
    max_questions: int | None = Field(default=None, ge=1)
    seed: int = 0
    #: profiling fails when the task's answer format reads no answer from more than this share of an
    #: expert's (non-empty) responses: a format that does not fit the responses, not a weak model.
    #: 1 turns the check off.
    max_unreadable: float = Field(default=0.5, ge=0, le=1)


class GenerationConfig(_Strict):
    temperature: float = Field(default=0.7, ge=0)
    max_tokens: int = Field(default=4096, ge=1)


class Config(_Strict):
    name: str = "skillmoe"
    pool: PoolConfig
    skills: SkillsConfig = Field(default_factory=SkillsConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    aggregation: AggregationConfig = Field(default_factory=AggregationConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    profiling: ProfilingConfig = Field(default_factory=ProfilingConfig)
    #: task definitions besides the built-in ones (MMLU_Pro, GPQA, MedMCQA, AIME24); an item that is a
    #: string is a YAML file of definitions (``tasks: [...]``), relative to this file
    tasks: list[TaskSpec] = Field(default_factory=list)
    #: "builtin" (the data sets shipped with the package) or a folder of <task>_<split>.json that
    #: replaces the built-in tasks' data
    data_dir: str = "builtin"
    #: where profiles and caches go; a relative path is relative to this file's folder, like every path in it
    state_dir: str = ".skillmoe"

    #: the file this config was read from (not a YAML field)
    source: Path | None = Field(default=None, exclude=True)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or "/" in v:
            raise ValueError("must be a non-empty name without '/'")
        return v

    @model_validator(mode="after")
    def _serve_defined_tasks(self) -> "Config":
        if self.tasks and "tasks" not in self.serving.model_fields_set:
            self.serving.tasks = [t.name for t in self.tasks]
        return self

    def resolve_path(self, value: str) -> Path:
        """Paths inside a config are relative to the config file's folder."""
        return relative_to(self.source, value)

    def state_path(self) -> Path:
        return self.resolve_path(self.state_dir)

    def benchmarks_dir(self) -> Path | None:
        return None if self.data_dir == "builtin" else self.resolve_path(self.data_dir)


def _format_error(path: Path, err: ValidationError, prefix: tuple = ()) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in prefix + tuple(e["loc"])) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "missing":
            msg = "required field is missing"
        got = e.get("input")
        shown = "" if e["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{path}: {loc}: {msg}{shown}")
    return "\n".join(lines)


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None


def load_task_file(path: str | Path) -> list[TaskSpec]:
    """The task definitions of a YAML file ``tasks: [...]``; their data paths are relative to it."""
    path = Path(path)
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with 'tasks', got {type(data).__name__}")
    try:
        specs = TaskFile.model_validate(data).tasks
    except ValidationError as exc:
        raise ConfigError(_format_error(path, exc)) from None
    for spec in specs:
        spec.source = path.resolve()
    return specs


#: the four reference data sets, defined like any other task
BUILTIN_TASKS_FILE = Path(__file__).resolve().parent / "data" / "tasks.yaml"


@lru_cache(maxsize=1)
def builtin_task_specs() -> tuple[TaskSpec, ...]:
    return tuple(load_task_file(BUILTIN_TASKS_FILE))


def _task_specs(raw: Any, path: Path) -> tuple[list[TaskSpec], list[tuple[Path, str]]]:
    """The ``tasks:`` list validated, files of definitions read; with each one's (file, field) for errors."""
    if not isinstance(raw, list):
        raise ConfigError(f"{path}: tasks: expected a list of task definitions or files of them, "
                          f"got {type(raw).__name__}")
    here = path.resolve() if path.exists() else None
    specs: list[TaskSpec] = []
    where: list[tuple[Path, str]] = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            file = relative_to(here, item)
            if not file.is_file():
                raise ConfigError(f"{path}: tasks.{i}: file of task definitions not found ({file})")
            found = load_task_file(file)
            specs += found
            where += [(file, f"tasks.{j}") for j in range(len(found))]
            continue
        try:
            spec = TaskSpec.model_validate(item)
        except ValidationError as exc:
            raise ConfigError(_format_error(path, exc, ("tasks", i))) from None
        spec.source = here
        specs.append(spec)
        where.append((path, f"tasks.{i}"))
    return specs, where


def _check_tasks(cfg: Config, path: Path, where: list[tuple[Path, str]]) -> None:
    """Defined tasks have names of their own and data files that exist; served tasks are defined."""
    builtin = {n.lower(): s.name for s in builtin_task_specs() for n in [s.name, *s.aliases]}
    seen: dict[str, str] = {}
    for spec, (file, loc) in zip(cfg.tasks, where):
        for n in [spec.name, *spec.aliases]:
            field = "name" if n == spec.name else "aliases"
            if n.lower() in builtin:
                raise ConfigError(f"{file}: {loc}.{field}: {n!r} names the built-in task {builtin[n.lower()]} "
                                  "(a defined task needs a name of its own; built-ins cannot be redefined)")
            if seen.get(n.lower()) == spec.name:
                continue  # an alias spelled like the task's own name (or another alias) in other case
            if n.lower() in seen:
                raise ConfigError(f"{file}: {loc}.{field}: {n!r} is already the name of task {seen[n.lower()]}")
            seen[n.lower()] = spec.name
        for split in ("validation", "test"):
            value = getattr(spec.data, split)
            if value is not None and not spec.path(value).is_file():
                raise ConfigError(f"{file}: {loc}.data.{split}: data file not found ({spec.path(value)})")
    known = {**builtin, **seen}
    names = [s.name for s in builtin_task_specs()] + [t.name for t in cfg.tasks]
    for i, name in enumerate(cfg.serving.tasks):
        if name.lower() not in known:
            raise ConfigError(f"{path}: serving.tasks.{i}: unknown task {name!r} (defined: {', '.join(names)})")
    if cfg.pool.task and cfg.pool.task.lower() not in known:
        raise ConfigError(f"{path}: pool.task: unknown task {cfg.pool.task!r} (defined: {', '.join(names)})")


def parse_config(data: Any, source: Path | str = "<config>") -> Config:
    path = Path(source)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    # top-level "x-..." keys hold YAML anchors shared by other fields (the docker-compose convention)
    data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    where: list[tuple[Path, str]] = []
    if "tasks" in data:
        data["tasks"], where = _task_specs(data["tasks"], path)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(path, exc)) from None
    cfg.source = path.resolve() if path.exists() else None
    _check_tasks(cfg, path, where)
    return cfg


def load_config(path: str | Path) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    return parse_config(_read_yaml(path), path)
