"""The expert pool: which models exist and how to build their engines."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .config import Config, ExpertConfig
from .engines.recorded import builtin_recorded_dir, manifest_task
from .errors import ConfigError

BUILTIN_PREFIX = "builtin:"


def resolve_recorded_dir(value: str, cfg: Config | None = None) -> Path:
    if value.startswith(BUILTIN_PREFIX):
        path = builtin_recorded_dir(value[len(BUILTIN_PREFIX) :])
    else:
        path = cfg.resolve_path(value) if cfg else Path(value).expanduser()
    if not path.is_dir():
        where = f"{cfg.source}: pool.recorded_dir: " if cfg and cfg.source else ""
        raise ConfigError(f"{where}{path}: recordings folder not found")
    return path


def recorded_task(path: Path, cfg: Config | None) -> str | None:
    """The task a recorded pool's folder answers: the deployment's ``pool.task``, else what the folder's
    record.json says, else the one task the deployment serves (when its file chose it), else whatever the
    folder is named after (the engine looks that up)."""
    if cfg is not None and cfg.pool.task:
        return cfg.pool.task
    named = manifest_task(path)
    if named:
        return named
    if cfg is not None and len(cfg.serving.tasks) == 1 and ("tasks" in cfg.serving.model_fields_set or cfg.tasks):
        return cfg.serving.tasks[0]
    return None


def experts_from_recorded_dir(path: Path, task: str | None = None) -> list[ExpertConfig]:
    files = sorted(path.glob("*.jsonl.gz")) + sorted(path.glob("*.jsonl"))
    if not files:
        raise ConfigError(f"{path}: no <model>.jsonl.gz recordings in this folder")
    experts = []
    for f in files:
        name = f.name.removesuffix(".gz").removesuffix(".jsonl")
        args = {"task": task} if task else {}
        experts.append(ExpertConfig(name=name, engine="recorded", model=str(f), engine_args=args))
    return experts


def pool_experts(cfg: Config, recorded_dir: str | None = None) -> list[ExpertConfig]:
    """The pool's experts, with ``recorded_dir`` (from the CLI or the config) expanded."""
    if recorded_dir:
        path = resolve_recorded_dir(recorded_dir)
        return experts_from_recorded_dir(path, recorded_task(path, cfg))
    experts = list(cfg.pool.experts)
    if cfg.pool.recorded_dir:
        path = resolve_recorded_dir(cfg.pool.recorded_dir, cfg)
        experts += experts_from_recorded_dir(path, recorded_task(path, cfg))
    names = [e.name for e in experts]
    if len(set(names)) != len(names):
        raise ConfigError(f"{cfg.source}: pool: expert names must be unique")
    resolved = []
    for e in experts:
        if e.engine == "recorded":
            path = Path(e.model) if Path(e.model).is_absolute() else cfg.resolve_path(e.model)
            e = e.model_copy(update={"model": str(path)})
        elif e.engine in ("vllm", "transformers") and not e.model.startswith("packaged:"):
            local = cfg.resolve_path(e.model)  # a model folder relative to the config file
            if local.is_dir():
                e = e.model_copy(update={"model": str(local)})
        resolved.append(e)
    return resolved


def pool_fingerprint(experts: list[ExpertConfig]) -> str:
    """Identifies a pool in saved profiles: names, engines, models and, for recordings, their bytes."""
    h = hashlib.sha256()
    for e in sorted(experts, key=lambda e: e.name):
        h.update(f"{e.name}\0{e.engine}\0{Path(e.model).name if e.engine == 'recorded' else e.model}\0".encode())
        if e.engine == "recorded" and Path(e.model).is_file():
            h.update(hashlib.sha256(Path(e.model).read_bytes()).digest())
    return h.hexdigest()[:16]
