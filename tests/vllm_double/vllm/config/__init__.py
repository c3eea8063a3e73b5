"""vllm 0.33.0 config: the three configs whose checks the double makes, as pydantic dataclasses.

vLLM's configs are pydantic dataclasses (config/utils.py:51-82, ``@config``, extra fields
forbidden) whose ``__post_init__`` does the checking; pydantic turns a ValueError or
AssertionError raised there into a ``pydantic_core.ValidationError`` ("1 validation error
for ModelConfig / Value error, ..."), which is what ``LLM(...)`` then raises. These are
pydantic dataclasses too, so the errors come out the same way.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

from .. import envs
from .._double import model as _model
from .._double.model import DTYPE_BYTES
from ..model_executor.models.registry import TEXT_GENERATION_ARCHS, raise_for_unsupported
from ..platforms import current_platform

_CFG = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


@dataclass(config=_CFG)
class ModelConfig:
    """config/model.py:151-925: the model folder, its config, dtype and context limit."""

    model: str = "Qwen/Qwen3-0.6B"
    tokenizer: str | None = None
    tokenizer_mode: str = "auto"
    trust_remote_code: bool = False
    dtype: Any = "auto"
    seed: int = 0
    revision: str | None = None
    max_model_len: int | None = None
    enforce_eager: bool = False
    skip_tokenizer_init: bool = False
    enable_sleep_mode: bool = False
    enable_cumem_allocator: bool = False
    sleep_mode_offload_cudagraph: bool = False
    hf_overrides: Any = None

    def __post_init__(self) -> None:
        self.path = _model.resolve_model(self.model)
        self.tokenizer = self.tokenizer or self.model
        self.tokenizer_path = _model.resolve_model(self.tokenizer)
        if self.tokenizer_mode not in ("auto", "hf", "slow"):
            raise NotImplementedError(f"[vllm double] tokenizer_mode={self.tokenizer_mode!r} is not modelled")
        # model.py:666-677: sleep mode needs the platform's support and brings the CuMem allocator
        if self.enable_sleep_mode:
            if not current_platform.is_sleep_mode_available():
                raise ValueError("Sleep mode is not supported on current platform.")
            self.enable_cumem_allocator = True
        # model.py:679-688 -> transformers_utils/config.py get_config
        self.hf_config = _model.read_config(self.path, self.trust_remote_code)
        self.shape = _model.shape_of(self.hf_config)
        # model.py:~741 registry.inspect_model_cls -> registry.py:1221-1252
        archs = list(self.shape.architectures)
        if not any(a in TEXT_GENERATION_ARCHS for a in archs):
            raise_for_unsupported(archs)
        self.architecture = next(a for a in archs if a in TEXT_GENERATION_ARCHS)
        self.runner_type = "generate"
        self.dtype_name = _resolve_dtype(self.shape.config_dtype, self.dtype)
        self.dtype_bytes = DTYPE_BYTES[self.dtype_name]
        # model.py:817-824 -> _get_and_verify_max_len (model.py:2545-2684)
        self.original_max_model_len = self.max_model_len
        self.max_model_len = _get_and_verify_max_len(self.shape, self.max_model_len)

    def get_diff_sampling_param(self) -> dict[str, Any]:
        return {}


def _resolve_dtype(config_dtype: str, dtype: Any) -> str:
    """model.py:2423-2520: ``auto`` takes the config's dtype, a float32 config the platform's first
    (bfloat16 on CUDA); an explicit dtype must be a known one."""
    if isinstance(dtype, str):
        d = dtype.lower()
        if d == "auto":
            d = config_dtype
            if d in ("float32", "float"):
                d = current_platform.supported_dtypes[0]
            return d
        if d not in DTYPE_BYTES:
            raise ValueError(f"Unknown dtype: {dtype!r}")
        return {"half": "float16", "float": "float32"}.get(d, d)
    raise ValueError(f"Unknown dtype: {dtype}")


def _get_and_verify_max_len(shape: _model.ModelShape, max_model_len: int | None) -> int:
    """model.py:2545-2684 for a decoder-only text model (no sliding-window override, no pooling)."""
    derived = shape.derived_max_len
    key = shape.max_len_key
    if derived == float("inf"):
        if max_model_len is not None:
            return max_model_len
        derived = 2048
    if max_model_len is None or max_model_len == -1:
        if shape.rope.get("rope_type") == "longrope":
            max_model_len = int(shape.raw.get("original_max_position_embeddings", derived))
        else:
            max_model_len = int(derived)
        return current_platform.check_max_model_len(max_model_len)
    if max_model_len > derived:
        model_max_length = shape.raw.get("model_max_length")
        if model_max_length is None or max_model_len > model_max_length:
            msg = (
                f"User-specified max_model_len ({max_model_len}) is greater "
                f"than the derived max_model_len ({key}="
                f"{derived} or model_max_length="
                f"{model_max_length} in model's config.json)."
            )
            warning = (
                "VLLM_ALLOW_LONG_MAX_MODEL_LEN must be used with extreme "
                "caution. If the model uses relative position encoding (RoPE), "
                "positions exceeding derived_max_model_len lead to nan. If the "
                "model uses absolute position encoding, positions exceeding "
                "derived_max_model_len will cause a CUDA array out-of-bounds "
                "error."
            )
            if not envs.VLLM_ALLOW_LONG_MAX_MODEL_LEN:
                raise ValueError(
                    f"{msg} To allow overriding this maximum, set "
                    f"the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1. {warning}"
                )
    return int(max_model_len)


@dataclass(config=_CFG)
class CacheConfig:
    """config/cache.py:181-470: the memory budget (gpu_memory_utilization in (0, 1]) and block size."""

    block_size: int | None = Field(default=None, gt=0)
    gpu_memory_utilization: float = Field(default=0.92, gt=0, le=1)
    kv_cache_memory_bytes: int | None = None
    cache_dtype: str = "auto"

    DEFAULT_BLOCK_SIZE = 16  # cache.py:185

    def __post_init__(self) -> None:
        if self.block_size is None:
            self.block_size = self.DEFAULT_BLOCK_SIZE
        if self.cache_dtype != "auto":
            raise NotImplementedError(f"[vllm double] kv_cache_dtype={self.cache_dtype!r} is not modelled")


@dataclass(config=_CFG)
class ParallelConfig:
    """config/parallel.py:136-1110: how many GPUs one engine uses, checked against what is visible."""

    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    distributed_executor_backend: str | None = None

    def __post_init__(self) -> None:
        self.world_size = self.pipeline_parallel_size * self.tensor_parallel_size
        self.world_size_across_dp = self.world_size * self.data_parallel_size
        if self.distributed_executor_backend not in (None, "mp", "uni"):
            raise NotImplementedError(
                f"[vllm double] distributed_executor_backend={self.distributed_executor_backend!r} is not modelled")
        # parallel.py:1053-1077
        if self.distributed_executor_backend is None and self.world_size_across_dp > 1:
            if current_platform.device_count() < self.world_size:
                gpu_count = current_platform.device_count()
                raise ValueError(
                    f"World size ({self.world_size}) is larger than the number of "
                    f"available GPUs ({gpu_count}) in this node. If this is "
                    "intentional and you are using:\n"
                    "- ray, set '--distributed-executor-backend ray'.\n"
                    "- multiprocessing, set '--nnodes' appropriately."
                )
            self.distributed_executor_backend = "mp"
        if self.distributed_executor_backend is None and self.world_size == 1:
            self.distributed_executor_backend = "uni"
        if self.world_size > 1:
            raise NotImplementedError("[vllm double] an engine over several GPUs is not modelled")


@dataclass(config=_CFG)
class SchedulerConfig:
    """config/scheduler.py: batch limits (LLM-class defaults by device, engine/arg_utils.py:2940-3039)."""

    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256


class VllmConfig:
    def __init__(self, model_config: ModelConfig, cache_config: CacheConfig, parallel_config: ParallelConfig,
                 scheduler_config: SchedulerConfig) -> None:
        self.model_config = model_config
        self.cache_config = cache_config
        self.parallel_config = parallel_config
        self.scheduler_config = scheduler_config


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


__all__ = ["CacheConfig", "ModelConfig", "ParallelConfig", "SchedulerConfig", "VllmConfig", "cdiv"]
