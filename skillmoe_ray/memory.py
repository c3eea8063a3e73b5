"""Memory counted in bytes: what a model needs on a GPU awake and asleep, and in host memory when parked.

A vLLM engine on a GPU holds more than its weights. At start it reserves
``gpu_memory_utilization`` x the device's memory and fails if that much is not
free; within it sit the weights, the peak activations of its profiling run,
its CUDA context and CUDA-graph pool, and the KV cache, which must hold at
least one sequence of ``max_model_len`` tokens. Asleep (level 1) it offloads
its weights to *pinned* host memory and drops its KV cache, but its process
keeps the CUDA context and graph pool on the device. So whether experts fit
together is a sum of bytes, not a count of models, and each engine's
``gpu_memory_utilization`` is its own footprint over the device's size, not a
flat 0.85 that lets one engine take the whole GPU.

Pure functions over plain data: the residency policy, the planner, the
simulated engine and ``skillmoe check`` all read these figures.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

GIB = 1 << 30
MIB = 1 << 20
GB = 10**9

DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2, "fp8": 1, "float8": 1,
               "int8": 1, "auto": 2}

#: what an engine's process keeps on its GPU whatever it does, asleep included: the CUDA context and
#: NCCL/cuBLAS buffers, allocated outside vLLM's memory pool (vLLM 0.33 sleep mode,
#: device_allocator/sleep_mode_backend.py: only the pool is freed)
CUDA_CONTEXT_BYTES = 512 * MIB
#: the CUDA-graph pool for the default capture sizes. Asleep it stays on the GPU, unless
#: ``sleep_mode_offload_cudagraph`` puts it in the pool that sleep copies to host memory (vLLM 0.33
#: config/vllm.py use_cumem_cudagraph_pool). ``enforce_eager`` engines capture no graphs.
GRAPH_POOL_BYTES = 512 * MIB
#: KV cache an engine reserves when its engine_args do not say (kv_cache_gb): half its weights' size
#: up to this (room for several long answers at once), and never less than one sequence of
#: max_model_len tokens (vLLM refuses to start with less)
DEFAULT_KV_BYTES = 8 * GIB
#: tokens vLLM's profiling run pushes through the model at once on a GPU (max_num_batched_tokens) and
#: sequences it samples at once (max_num_seqs): they size the activation peak. vLLM 0.33's defaults for
#: an H100/H200-class GPU (engine/arg_utils.py); smaller GPUs get smaller ones, so this errs high
DEFAULT_BATCHED_TOKENS = 16384
DEFAULT_MAX_SEQS = 1024
#: rope scalings whose factor vLLM does not multiply into the model's length limit
_UNSCALED_ROPE = {"su", "longrope", "llama3", "mrope", "default"}


@dataclass(frozen=True)
class ModelShape:
    """The figures of a model's ``config.json`` that size it."""

    architecture: str
    model_type: str
    hidden_size: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    #: the longest context the model supports (what vLLM derives as its max_model_len limit)
    max_len: int
    tie_word_embeddings: bool = False
    dtype_bytes: int = 2
    #: its config maps classes to code in the model repository (``auto_map``; transformers may still have
    #: the class itself: preflight.remote_code_needs decides whether that code is needed)
    remote_code: bool = False

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "ModelShape":
        """From a Hugging Face ``config.json`` (ChatGLM's own key names too)."""
        def first(*keys: str, default: Any = None) -> Any:
            for k in keys:
                if cfg.get(k) is not None:
                    return cfg[k]
            return default

        hidden = int(first("hidden_size", "n_embd", "d_model"))
        heads = int(first("num_attention_heads", "n_head"))
        if "multi_query_group_num" in cfg:  # ChatGLM: grouped-query attention when multi_query_attention
            kv = int(cfg["multi_query_group_num"]) if cfg.get("multi_query_attention") else heads
        else:
            kv = int(cfg.get("num_key_value_heads") or heads)
        archs = cfg.get("architectures") or ["?"]
        dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16").replace("torch.", "")
        return cls(
            architecture=str(archs[0]),
            model_type=str(cfg.get("model_type", "")),
            hidden_size=hidden,
            layers=int(first("num_hidden_layers", "num_layers", "n_layer")),
            heads=heads,
            kv_heads=kv,
            head_dim=int(first("head_dim", "kv_channels", default=hidden // heads)),
            intermediate_size=int(first("intermediate_size", "ffn_hidden_size", "n_inner", default=4 * hidden)),
            vocab_size=int(first("vocab_size", "padded_vocab_size")),
            max_len=_max_len(cfg),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            dtype_bytes=DTYPE_BYTES.get(dtype, 2),
            remote_code=bool(cfg.get("auto_map")),
        )

    def params(self) -> int:
        """Parameters of a decoder-only transformer with gated MLPs (the pool's families): embeddings,
        attention (q, k, v, o), MLP (gate, up, down), norms, and an untied output head."""
        h, d = self.hidden_size, self.head_dim
        attention = h * self.heads * d + 2 * h * self.kv_heads * d + self.heads * d * h
        mlp = 3 * h * self.intermediate_size
        per_layer = attention + mlp + 2 * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return self.vocab_size * h + self.layers * per_layer + h + head

    def weight_bytes(self) -> int:
        return self.params() * self.dtype_bytes

    def kv_bytes_per_token(self, dtype_bytes: int | None = None) -> int:
        """Keys and values of every layer for one token."""
        return 2 * self.layers * self.kv_heads * self.head_dim * (dtype_bytes or self.dtype_bytes)

    def activation_bytes(self, batched_tokens: int = DEFAULT_BATCHED_TOKENS, max_seqs: int = DEFAULT_MAX_SEQS) -> int:
        """The peak of vLLM's profiling run: one chunk of batched tokens through a layer (hidden states,
        the MLP's gate and up projections) and the logits of every sequence sampled at once (fp32)."""
        per_token = (4 * self.hidden_size + 2 * self.intermediate_size) * self.dtype_bytes
        return batched_tokens * per_token + max_seqs * self.vocab_size * 4


def _max_len(cfg: Mapping[str, Any]) -> int:
    """The model's own length limit, as vLLM derives it: the smallest of the position fields it knows,
    times a rope scaling factor unless the scaling is one whose factor is already in the limit."""
    keys = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
            "max_sequence_length", "max_seq_length", "seq_len")
    found = [int(cfg[k]) for k in keys if isinstance(cfg.get(k), (int, float)) and cfg[k] > 0]
    limit = min(found) if found else 2048
    rope = cfg.get("rope_scaling") or {}
    if isinstance(rope, dict):
        kind = str(rope.get("rope_type", rope.get("type", "default")))
        factor = rope.get("factor")
        if kind not in _UNSCALED_ROPE and isinstance(factor, (int, float)) and factor > 1:
            if kind == "yarn" and "original_max_position_embeddings" in rope:
                limit = int(rope["original_max_position_embeddings"])
            limit = int(limit * factor)
    return limit


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def shape_of_folder(folder: Path) -> ModelShape | None:
    """A local model folder's shape from its config.json, or None without one."""
    path = folder / "config.json"
    return ModelShape.from_config(read_json(path)) if path.is_file() else None


def weight_files_bytes(folder: Path) -> int:
    """The bytes of a local model's weight files (0 when it has none)."""
    if not folder.is_dir():
        return 0
    total = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    return total or sum(f.stat().st_size for f in folder.glob("*.bin"))


def model_weights(folder: Path | None, size_gb: float | None = None) -> int | None:
    """A model's weight bytes: its weight files where the folder has them, else ``size_gb``; None unknown."""
    return (weight_files_bytes(folder) if folder else 0) or int((size_gb or 0) * GB) or None


@dataclass(frozen=True)
class Footprint:
    """One engine's memory: on the device awake and asleep, and pinned in host memory while asleep."""

    weights: int
    kv: int
    activation: int
    #: CUDA context and NCCL buffers: held by the engine's process as long as it lives, asleep too
    context: int
    #: CUDA-graph pool: on the device awake; asleep too, unless ``offload_graphs``
    graphs: int = 0
    #: sleep copies the graph pool to host memory with the weights (``sleep_mode_offload_cudagraph``)
    offload_graphs: bool = False

    @property
    def device(self) -> int:
        """Bytes on the device while awake: what ``gpu_memory_utilization`` must reserve."""
        return self.weights + self.kv + self.activation + self.context + self.graphs

    @property
    def asleep(self) -> int:
        """Bytes left on the device while asleep: level 1 frees the weights and the KV cache, the process
        keeps its CUDA context and (by default) its graph pool."""
        return self.context + (0 if self.offload_graphs else self.graphs)

    @property
    def pinned(self) -> int:
        """Host bytes while asleep: the weights (and the graph pool if it is offloaded), pinned."""
        return self.weights + (self.graphs if self.offload_graphs else 0)

    def utilization(self, device_bytes: int) -> float:
        """The engine's ``gpu_memory_utilization`` on a device of ``device_bytes``: its own share, rounded up."""
        return min(1.0, math.ceil(1000 * self.device / device_bytes) / 1000) if device_bytes else 1.0

    def as_gb(self) -> dict[str, float]:
        return {"weights": self.weights / GB, "kv": self.kv / GB, "activation": self.activation / GB,
                "context": self.context / GB, "graphs": self.graphs / GB, "device": self.device / GB,
                "asleep": self.asleep / GB, "pinned": self.pinned / GB}


def kv_needed(shape: ModelShape, max_model_len: int, kv_dtype_bytes: int | None = None) -> int:
    """KV bytes for one sequence of ``max_model_len`` tokens: vLLM refuses to start with less."""
    return max_model_len * shape.kv_bytes_per_token(kv_dtype_bytes)


def footprint(engine_args: Mapping[str, Any], shape: ModelShape | None, weights: int | None = None) -> Footprint:
    """An engine's footprint from its engine_args and its model's shape.

    ``weights`` (the weight files' bytes, or the expert's ``size_gb``) stands in where the shape is
    unknown and takes precedence over the shape's estimate where it is known. The KV cache is
    ``engine_args.kv_cache_gb`` GiB, else :data:`DEFAULT_KV_BYTES`, and never less than one
    sequence of ``max_model_len`` tokens (half the weights, at most :data:`DEFAULT_KV_BYTES`, by default).
    """
    w = int(weights) if weights else (shape.weight_bytes() if shape else 0)
    if shape is not None:
        max_len = int(engine_args.get("max_model_len") or shape.max_len)
        kv_dtype = DTYPE_BYTES.get(str(engine_args.get("kv_cache_dtype", "auto")).split("_")[0], None)
        need = kv_needed(shape, max_len, kv_dtype if engine_args.get("kv_cache_dtype") not in (None, "auto") else None)
        activation = shape.activation_bytes(int(engine_args.get("max_num_batched_tokens") or DEFAULT_BATCHED_TOKENS),
                                            int(engine_args.get("max_num_seqs") or DEFAULT_MAX_SEQS))
    else:
        need, activation = 0, 1 * GIB
    room = min(DEFAULT_KV_BYTES, w // 2) if w else DEFAULT_KV_BYTES
    kv = int(float(engine_args["kv_cache_gb"]) * GIB) if engine_args.get("kv_cache_gb") else max(room, need)
    graphs = 0 if engine_args.get("enforce_eager") else GRAPH_POOL_BYTES
    return Footprint(w, kv, activation, CUDA_CONTEXT_BYTES, graphs, bool(engine_args.get("sleep_mode_offload_cudagraph")))
