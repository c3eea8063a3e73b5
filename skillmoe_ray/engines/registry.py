"""Builds an engine from an expert's config entry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import ExpertConfig
from ..errors import ConfigError
from .base import Engine
from .recorded import RecordedEngine

if TYPE_CHECKING:
    from ..tasks.catalogue import Catalogue


def create_engine(expert: ExpertConfig, catalogue: Catalogue | None = None) -> Engine:
    """The expert's engine; ``catalogue`` (the deployment's tasks; default: the built-ins) is where the
    engines that replay or simulate answers find a task's questions."""
    if expert.engine == "recorded":
        return RecordedEngine(expert.name, expert.model, task=expert.engine_args.get("task"), catalogue=catalogue)
    if expert.engine == "simulated":
        from .simulated import Clock, SimulatedEngine, spec_from_args

        args = expert.engine_args
        clock = Clock(virtual=args.get("clock", "virtual") == "virtual", scale=float(args.get("time_scale", 1.0)))
        return SimulatedEngine(expert.name, spec_from_args(expert.size_gb, args), clock, catalogue,
                               tp=int(args.get("tensor_parallel_size", 1)))
    if expert.engine == "vllm":
        # vLLM itself is imported only when the model loads: building a pool stays cheap
        from .vllm_engine import VLLMEngine

        return VLLMEngine(expert.name, expert.model, expert.engine_args, size_gb=expert.size_gb)
    if expert.engine == "transformers":
        from .transformers_engine import TransformersEngine

        return TransformersEngine(expert.name, expert.model, expert.engine_args)
    raise ConfigError(
        f"expert {expert.name!r}: engine {expert.engine!r} is not available in this build "
        "(available: recorded, simulated, vllm, transformers)"
    )
