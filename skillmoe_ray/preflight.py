"""``skillmoe check``: what would fail, or silently misbehave, on the machines a deployment targets.

Read against the model configs (a local folder, the configs folder standing in
for the hub, the hub's cache or the hub) and the pinned vLLM's model registry,
before any GPU is touched: a context longer than the model's, an architecture
that needs code from its repository or that vLLM does not serve, experts that do
not fit a worker's GPU or host memory, an LLM aggregator with no GPU memory of
its own (Ray leaves an actor that asks for no GPU every GPU visible, and vLLM
takes GPU 0, a worker's), tensor parallelism a worker cannot give, and a cluster
without the resources the placement asks for. Each finding names the file and
the field. ``skillmoe serve`` and the Serve builder run the same checks and
refuse to deploy on an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from .config import Config, ExpertConfig
from .errors import ConfigError
from .memory import GB, Footprint, ModelShape, footprint, model_weights, read_json
from .models import PACKAGED_PREFIX, model_config_folder
from .serving import devices

Level = Literal["error", "warning"]
#: engines that put a real model on a device
REAL_ENGINES = ("vllm", "transformers")


@dataclass(frozen=True)
class Finding:
    level: Level
    #: the field of the deployment file, e.g. ``pool.experts.8.engine_args.max_model_len``
    field: str
    message: str

    def render(self, source: Path | str | None) -> str:
        where = f"{source}: " if source else ""
        return f"{where}{self.field}: {self.message}"


@dataclass
class ExpertRow:
    """One expert's line of the table."""

    name: str
    model: str
    architecture: str = "?"
    footprint: Footprint | None = None
    limit: int | None = None
    max_model_len: int | None = None
    utilization: float | None = None
    #: how many of it fit a worker's device at once
    per_worker: int | None = None
    note: str = ""


@dataclass
class Preflight:
    source: Path | None
    findings: list[Finding] = field(default_factory=list)
    rows: list[ExpertRow] = field(default_factory=list)
    #: one GPU's bytes the fits were counted against (None: unknown)
    gpu_bytes: int | None = None
    worker_gb: float | None = None
    aggregator_gb: float | None = None

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    def error(self, where: str, message: str) -> None:
        self.findings.append(Finding("error", where, message))

    def warn(self, where: str, message: str) -> None:
        self.findings.append(Finding("warning", where, message))

    def raise_for_errors(self) -> None:
        """The errors as one ConfigError, each line naming the file and the field (serve and the builder)."""
        if self.errors:
            raise ConfigError("\n".join(f.render(self.source) for f in self.errors)
                              + "\n(skillmoe check --config ... lists every finding)")

    def table(self) -> str:
        head = ("expert", "architecture", "weights", "KV", "device", "asleep", "util", "context", "fits")
        rows = [head]
        for r in self.rows:
            fp = r.footprint
            gb = (lambda v: f"{v / GB:.1f}") if fp else (lambda v: "-")
            ctx = f"{r.max_model_len or '-'}/{r.limit or '-'}"
            fits = r.note or (f"{r.per_worker} a worker" if r.per_worker is not None else "?")
            rows.append((r.name, r.architecture, gb(fp.weights if fp else 0), gb(fp.kv if fp else 0),
                         gb(fp.device if fp else 0), gb(fp.asleep if fp else 0),
                         f"{r.utilization:.3f}" if r.utilization else "-", ctx, fits))
        w = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
        lines = ["  ".join(str(c).ljust(w[i]) if i < 2 else str(c).rjust(w[i]) for i, c in enumerate(r)) for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        gpu = f"{self.gpu_bytes / GB:.0f} GB GPUs" if self.gpu_bytes else "GPU size unknown"
        budget = f"; a worker's models get {self.worker_gb:.1f} GB" if self.worker_gb else ""
        agg = f", the aggregator {self.aggregator_gb:.1f} GB" if self.aggregator_gb else ""
        return "\n".join(lines) + f"\n(GB; device = awake, asleep = left on the device parked; {gpu}{budget}{agg})"


# ---------------------------------------------------------------- what vLLM and transformers know


@lru_cache(maxsize=1)
def vllm_models() -> dict[str, Any]:
    """The pinned vLLM's registry (architectures it serves, model types it has configs for), from
    ``data/vllm_models.json`` (scripts/vllm_registry.py writes it from the wheel)."""
    path = Path(str(resources.files("skillmoe_ray") / "data" / "vllm_models.json"))
    return json.loads(path.read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def transformers_model_types() -> frozenset[str] | None:
    try:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

        return frozenset(CONFIG_MAPPING_NAMES)
    except Exception:  # noqa: BLE001 - transformers missing or reorganised: not known
        return None


@lru_cache(maxsize=1)
def transformers_tokenizers() -> frozenset[str] | None:
    try:
        import transformers

        return frozenset(n for n in dir(transformers) if n.endswith(("Tokenizer", "TokenizerFast")))
    except Exception:  # noqa: BLE001
        return None


def remote_code_needs(cfg: Mapping[str, Any], tok: Mapping[str, Any] | None) -> list[str]:
    """What of a model needs code from its repository: its config class, its tokenizer."""
    needs = []
    model_type = str(cfg.get("model_type", ""))
    known = (transformers_model_types() or frozenset()) | set(vllm_models()["config_model_types"])
    if cfg.get("auto_map") and model_type not in known:
        needs.append(f"its config (model_type {model_type!r}, auto_map)")
    if tok and tok.get("auto_map"):
        cls = str(tok.get("tokenizer_class", ""))
        if cls not in (transformers_tokenizers() or frozenset()):
            needs.append(f"its tokenizer ({cls or 'auto_map'})")
    return needs


# ---------------------------------------------------------------- the checks


def _field(cfg: Config, expert: ExpertConfig) -> str:
    for i, e in enumerate(cfg.pool.experts):
        if e.name == expert.name:
            return f"pool.experts.{i}"
    return "pool.recorded_dir"


def _gpu_bytes(cfg: Config, gpu_memory_gb: float | None) -> int | None:
    """One GPU's bytes as a worker would learn them (the setting, else the GPU here), or the command's."""
    return devices.gpu_bytes(1, gpu_memory_gb or cfg.serving.gpu_memory_gb)


def check_expert(report: Preflight, cfg: Config, expert: ExpertConfig, configs_dir: str | Path | None,
                 gpu_bytes: int | None, worker_gb: float | None) -> ExpertRow:
    row = ExpertRow(expert.name, expert.model)
    where = _field(cfg, expert)
    args = expert.engine_args
    sv = cfg.serving
    tp = int(args.get("tensor_parallel_size", 1) or 1)
    if tp > 1 and tp > max(sv.gpus_per_worker, 0):
        report.error(f"{where}.engine_args.tensor_parallel_size",
                     f"{tp} GPUs for expert {expert.name!r}, but a worker has {sv.gpus_per_worker:g} "
                     "(serving.gpus_per_worker): vLLM sees only its worker's GPUs")
    folder = model_config_folder(expert.model, configs_dir)
    if folder is None:
        if expert.model.startswith(PACKAGED_PREFIX):
            row.note = "packaged; prepared on first use"
            return row
        report.error(f"{where}.model", f"cannot read the config of {expert.model!r} (expert {expert.name!r}): not a "
                     "local folder, not in the configs folder (--model-configs or $SKILLMOE_MODEL_CONFIGS: "
                     "<org>--<name>/config.json) nor the hub's cache, and no hub reachable")
        row.note = "config not found"
        return row
    try:
        raw = read_json(folder / "config.json")
        shape = ModelShape.from_config(raw)
    except (ValueError, KeyError, TypeError) as exc:
        report.error(f"{where}.model", f"{folder / 'config.json'}: cannot size {expert.model!r} ({exc})")
        return row
    tok_path = folder / "tokenizer_config.json"
    tok = read_json(tok_path) if tok_path.is_file() else None
    if tok is None:
        report.warn(f"{where}.model", f"{expert.model!r} has no tokenizer_config.json: its tokenizer and chat "
                    "template cannot be checked")
    row.architecture, row.limit = shape.architecture, shape.max_len
    if expert.engine == "vllm":
        served = vllm_models()
        if shape.architecture not in served["architectures"]:
            report.error(f"{where}.model", f"{expert.model!r} is a {shape.architecture}, which vLLM "
                         f"{served['vllm']} does not serve")
    needs = remote_code_needs(raw, tok)
    if needs and not args.get("trust_remote_code"):
        report.error(f"{where}.engine_args.trust_remote_code",
                     f"{expert.model!r} (expert {expert.name!r}) needs code from its repository for "
                     f"{' and '.join(needs)}, which the installed transformers does not have; set "
                     "trust_remote_code: true (it runs that code) or choose another model")
    max_len = args.get("max_model_len")
    row.max_model_len = int(max_len) if max_len else shape.max_len
    if max_len and int(max_len) > shape.max_len:
        report.error(f"{where}.engine_args.max_model_len",
                     f"{int(max_len)} is beyond the {shape.max_len} tokens {expert.model!r} supports "
                     f"(expert {expert.name!r}; its config.json); vLLM refuses to start")
    if cfg.generation.max_tokens >= row.max_model_len:
        report.warn(f"{where}.engine_args.max_model_len", f"generation.max_tokens ({cfg.generation.max_tokens}) "
                    f"leaves no room for the prompt in {row.max_model_len} tokens (expert {expert.name!r})")
    if expert.engine != "vllm":
        return row
    if expert.model.startswith("mistralai/") and args.get("tokenizer_mode", "auto") == "auto" \
            and args.get("prompt_format", "auto") == "auto":
        report.warn(f"{where}.engine_args.tokenizer_mode",
                    f"vLLM picks its own Mistral tokenizer for {expert.model!r} (tokenizers/registry.py), which has no "
                    "chat template: the expert would get plain transcripts. Set tokenizer_mode: hf")
    mp = args.get("multiprocessing")
    sleep = str(args.get("sleep_mode", True)).lower() not in ("0", "false", "no", "off")
    if sv.gpus_per_worker > 0 and mp is not None and str(mp).lower() in ("0", "false", "no", "off") and sleep \
            and (sv.models_per_worker or 2) > 1 and len(cfg.pool.experts) > 1:
        report.error(f"{where}.engine_args.multiprocessing",
                     f"expert {expert.name!r} runs its vLLM engine in the worker's own process with sleep mode on: "
                     "vLLM's CuMem allocator is one per process (device_allocator/cumem.py), so a second expert's "
                     "engine in that worker fails to load. Leave multiprocessing on, or set models_per_worker: 1")
    fp = footprint(args, shape, model_weights(folder, expert.size_gb))
    row.footprint = fp
    if gpu_bytes and sv.gpus_per_worker > 0:
        row.utilization = fp.utilization(gpu_bytes)
        flat = args.get("gpu_memory_utilization")
        if flat is not None:
            if float(flat) * gpu_bytes < fp.device - fp.kv + _one_sequence(shape, row.max_model_len):
                report.error(f"{where}.engine_args.gpu_memory_utilization",
                             f"{flat} of a {gpu_bytes / GB:.0f} GB GPU cannot hold {expert.model!r} with one "
                             f"{row.max_model_len}-token sequence of KV cache")
            elif (sv.models_per_worker or 2) > 1 and len(cfg.pool.experts) > 1:
                report.warn(f"{where}.engine_args.gpu_memory_utilization",
                            f"a flat {flat} reserves {float(flat) * gpu_bytes / GB:.0f} GB for expert "
                            f"{expert.name!r} whatever it needs; no other expert can start beside it (vLLM checks "
                            "free memory at start). Leave it unset: it is sized from the footprint")
        if worker_gb:
            row.per_worker = int((worker_gb + 1e-9) // (fp.device / GB))
            if fp.device / GB > worker_gb:
                report.error(where, f"expert {expert.name!r} needs {fp.device / GB:.1f} GB of GPU memory (weights "
                             f"{fp.weights / GB:.1f}, KV cache {fp.kv / GB:.1f}, activations and CUDA context "
                             f"{(fp.activation + fp.context + fp.graphs) / GB:.1f}); a worker has {worker_gb:.1f} GB "
                             "(serving.gpus_per_worker x the GPU x serving.gpu_memory_fraction)")
    return row


def _one_sequence(shape: ModelShape, max_len: int) -> int:
    return max_len * shape.kv_bytes_per_token()


def check_aggregator(report: Preflight, cfg: Config, rows: Mapping[str, ExpertRow], gpu_bytes: int | None) -> None:
    agg, sv = cfg.aggregation, cfg.serving
    if agg.mode != "llm" or sv.gpus_per_worker <= 0:
        return
    candidates = [agg.aggregator] if agg.aggregator else (agg.candidates or list(rows))
    real = [c for c in candidates if c in rows and rows[c].footprint is not None]
    if not real:
        return
    if sv.aggregator_gpus <= 0:
        report.error("serving.aggregator_gpus",
                     "the LLM aggregator runs in an actor of its own and asks for no GPU: Ray then leaves it every "
                     "GPU visible and its vLLM engine takes GPU 0, a worker's, which makes the worker's loads fail "
                     "vLLM's free-memory check. Give it a GPU, or a share of one (e.g. 0.4, with "
                     "gpus_per_worker: 0.6 on one GPU)")
        return
    if not gpu_bytes:
        return
    budget = devices.models_gb(sv.aggregator_gpus, gpu_bytes, sv.gpu_memory_fraction)
    assert budget is not None
    report.aggregator_gb = budget
    too_big = [c for c in real if rows[c].footprint.device / GB > budget]  # type: ignore[union-attr]
    if too_big:
        where = "aggregation.aggregator" if agg.aggregator else "aggregation.candidates"
        sizes = ", ".join(f"{c} ({rows[c].footprint.device / GB:.1f} GB)" for c in too_big)  # type: ignore[union-attr]
        report.error(where, f"the aggregator gets {budget:.1f} GB (serving.aggregator_gpus x the GPU x "
                     f"gpu_memory_fraction); too small for {sizes}: name candidates that fit, or give it more")


def check_cluster(report: Preflight, cfg: Config, nodes: Sequence[Mapping[str, float]]) -> None:
    """The placement against a cluster's nodes (each node's resources, e.g. Ray's ``ray.nodes()``)."""
    sv = cfg.serving
    gpus = [float(n.get("GPU", 0)) for n in nodes]
    cpus = [float(n.get("CPU", 0)) for n in nodes]
    need_gpu = sv.workers * sv.gpus_per_worker
    agg_gpu = sv.aggregator_gpus if cfg.aggregation.mode == "llm" else 0.0
    if sv.gpus_per_worker > 0 and not any(g >= min(sv.gpus_per_worker, 1.0) for g in gpus):
        report.error("serving.gpus_per_worker", f"a worker needs {sv.gpus_per_worker:g} GPU(s) on one node; "
                     f"no node of the cluster has that many (GPUs per node: {gpus})")
    elif need_gpu + agg_gpu > sum(gpus) + 1e-9:
        report.error("serving.workers", f"{sv.workers} workers of {sv.gpus_per_worker:g} GPU(s) and the aggregator's "
                     f"{agg_gpu:g} need {need_gpu + agg_gpu:g} GPUs; the cluster has {sum(gpus):g}")
    if sv.workers * sv.cpus_per_worker > sum(cpus) + 1e-9:
        report.error("serving.cpus_per_worker", f"{sv.workers} workers of {sv.cpus_per_worker:g} CPUs need "
                     f"{sv.workers * sv.cpus_per_worker:g}; the cluster has {sum(cpus):g}")


def preflight(cfg: Config, experts: Sequence[ExpertConfig], configs_dir: str | Path | None = None,
              gpu_memory_gb: float | None = None, nodes: Sequence[Mapping[str, float]] | None = None) -> Preflight:
    """Every check of a deployment; ``nodes`` (each node's resources) adds the cluster's."""
    report = Preflight(cfg.source)
    sv = cfg.serving
    real = [e for e in experts if e.engine in REAL_ENGINES]
    gpu_bytes = _gpu_bytes(cfg, gpu_memory_gb) if sv.gpus_per_worker > 0 and real else None
    report.gpu_bytes = gpu_bytes
    worker_gb = devices.models_gb(sv.gpus_per_worker, gpu_bytes, sv.gpu_memory_fraction)
    report.worker_gb = worker_gb
    if real and sv.gpus_per_worker > 0 and not gpu_bytes:
        report.warn("serving.gpu_memory_gb", "no GPU visible here and none set: whether the experts fit is not "
                    "checked (set serving.gpu_memory_gb, or --gpu-memory-gb)")
    rows = {e.name: check_expert(report, cfg, e, configs_dir, gpu_bytes, worker_gb) for e in real}
    report.rows = list(rows.values())
    check_aggregator(report, cfg, rows, gpu_bytes)
    fps = [r.footprint for r in rows.values() if r.footprint is not None]
    host = sv.host_budget_gb
    if fps and host is not None and host > 0 and sv.gpus_per_worker > 0:
        big = max(fps, key=lambda f: f.pinned)
        if big.pinned / GB > host:
            report.warn("serving.host_budget_gb", f"{host:g} GB cannot hold a parked {big.pinned / GB:.1f} GB model: "
                        "evicted experts are freed and reloaded cold")
    if nodes is not None:
        check_cluster(report, cfg, nodes)
    return report


def ray_nodes() -> list[dict[str, float]]:
    """The live nodes' resources of the Ray cluster this process is connected to."""
    import ray

    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


def format_report(report: Preflight) -> str:
    lines = [report.table()] if report.rows else []
    for f in report.findings:
        lines.append(f"{f.level}: {f.render(report.source)}")
    n_err, n_warn = len(report.errors), len(report.warnings)
    lines.append(f"{n_err} error(s), {n_warn} warning(s)" if report.findings else "no problems found")
    return "\n".join(lines)

