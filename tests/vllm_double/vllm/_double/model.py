"""A model folder as vLLM 0.33.0 reads it: config.json and tokenizer_config.json, no weights.

Sizes come from config.json (parameter count from the shapes, bytes from the dtype vLLM
picks), the context limit as vLLM derives it, and the remote-code rules as transformers
(5.16-5.20, the range vllm 0.33.0 pins) applies them to a local folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

# vllm 0.33.0 transformers_utils/config.py:122-176: model types vLLM brings its own config class for;
# such a config loads without trust_remote_code (config.py:429-444 registers it, "not considered
# remote code anymore").
VLLM_CONFIG_REGISTRY = frozenset({
    "alpamayo2_super", "bagel", "bailing_moe_v3_vl", "beam", "chatglm", "ultravbert", "colqwen3", "ops_colqwen3",
    "qwen3_vl_nemotron_embed", "deepseek_vl_v2", "deepseek_v32", "dory", "dots3_note", "k3_dspark", "funaudiochat",
    "hy_v4", "isaac", "kimi_k2", "kimi_linear", "kimi_vl", "kimi_k25", "muse_spark_dspark", "musespark1x_text",
    "muse_spark_text", "muse_spark_vision", "muse_spark_audio", "muse_spark", "kimi_k3", "RefinedWeb",
    "RefinedWebModel", "midashenglm", "minimax_m3_vl", "minimax_m3_mtp", "moondream3", "moss_transcribe_diarize",
    "eagle", "speculators", "openvla", "ovis", "ultravox", "step3_vl", "step3_text", "step3p5", "step5", "step5_vl",
    "qwen3_asr", "unlimited-ocr", "unlimited_ocr", "deepseek_v41", "flint", "inkling_mm_model", "inkling_model",
    "hyperclovax",
})

# vllm 0.33.0 transformers_utils/model_arch_config_convertor.py:376-401: the keys a context
# limit is read from; the smallest present wins
MAX_LEN_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
                "max_target_positions", "max_sequence_length", "max_seq_length", "seq_len")

# vllm 0.33.0 config/model.py:2606-2620: rope types whose factor is not applied to the limit
_UNSCALED_ROPE = ("su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling")

DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2, "fp8": 1, "float8_e4m3fn": 1}


# ------------------------------------------------------------------ transformers' own tables


def _transformers_dir() -> Path | None:
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


@lru_cache(maxsize=1)
def transformers_model_types() -> frozenset[str]:
    """Model types transformers knows natively (its CONFIG_MAPPING), read from its own table.

    Read from the source of ``transformers/models/auto/auto_mappings.py`` (plus the few
    ``configuration_auto.py`` adds) rather than imported: importing it takes seconds per process.
    """
    base = _transformers_dir()
    if base is None:
        return frozenset()
    names: set[str] = set()
    for rel in ("models/auto/auto_mappings.py", "models/auto/configuration_auto.py"):
        try:
            src = (base / rel).read_text(encoding="utf-8")
        except OSError:
            continue
        if rel.endswith("auto_mappings.py"):
            start = src.find("CONFIG_MAPPING_NAMES")
            end = src.find("SPECIAL_MODEL_TYPE_TO_MODULE_NAME", start)
            src = src[start:end if end > 0 else None]
        names.update(t for t, cls in re.findall(r'\(\s*"([\w.-]+)",\s*"(\w+)"\s*\)', src) if cls.endswith("Config"))
        names.update(t for t, cls in re.findall(r'"([\w.-]+)":\s*"(\w+Config)"', src))
    return frozenset(names)


@lru_cache(maxsize=1)
def transformers_tokenizer_classes() -> frozenset[str]:
    """Tokenizer classes transformers has (TOKENIZER_MAPPING_NAMES values and its base classes)."""
    base = _transformers_dir()
    names = {"PreTrainedTokenizer", "PreTrainedTokenizerFast", "TokenizersBackend", "PythonBackend"}
    if base is not None:
        try:
            src = (base / "models/auto/tokenization_auto.py").read_text(encoding="utf-8")
            start = src.find("TOKENIZER_MAPPING_NAMES = ")
            end = src.find("MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS", start)
            names.update(re.findall(r'"(\w+(?:Tokenizer|Backend)(?:Fast)?)"', src[start:end]))
        except OSError:
            pass
    return frozenset(n.removesuffix("Fast") for n in names)


# ------------------------------------------------------------------ the model folder


def resolve_model(model: str) -> str:
    """The folder a model argument names: a local folder, or a hub id in the fake hub."""
    p = Path(model).expanduser()
    if p.is_dir():
        return str(p.resolve())
    hub = os.environ.get("SKILLMOE_FAKE_HUB_DIR")
    if hub and "/" in model and not model.startswith(("/", ".")):
        cand = Path(hub) / model.replace("/", "--")
        if cand.is_dir():
            return str(cand.resolve())
    raise OSError(
        f"[vllm double] {model!r} is neither a local model folder nor a model of the fake hub "
        f"(SKILLMOE_FAKE_HUB_DIR={hub!r}); on a GPU machine vLLM would download it from the hub.")


def _remote_code_error(path: str) -> ValueError:
    """transformers 5.19 dynamic_module_utils.py:711-781 (resolve_trust_remote_code), local folder case."""
    error_message = (
        f"The repository {path} contains custom code which must be executed "
        f"to correctly load the model. You can inspect the repository "
        f"content at {os.path.abspath(path)} .\n"
    )
    return ValueError(
        f"{error_message} You can inspect the repository content at https://hf.co/{path}.\n"
        f"Please pass the argument `trust_remote_code=True` to allow custom code to be run."
    )


def read_config(path: str, trust_remote_code: bool) -> dict[str, Any]:
    """config.json as vLLM 0.33.0 gets it (transformers_utils/config.py:343-466, HFConfigParser).

    * a model type vLLM registers its own config for (``chatglm``) loads without remote code;
    * one with ``auto_map.AutoConfig`` that transformers does not know needs
      ``trust_remote_code`` (transformers AutoConfig.from_pretrained,
      configuration_auto.py: has_remote_code / has_local_code, then resolve_trust_remote_code);
      vLLM re-raises transformers' ValueError unchanged, as its own wrapping only matches the
      older "requires you to execute the configuration file" text (config.py:452-466);
    * one transformers does not know and no remote code: transformers' "does not recognize".
    """
    f = Path(path) / "config.json"
    if not f.is_file():
        raise OSError(f"{path} does not appear to have a file named config.json. Checkout "
                      f"'https://huggingface.co/{path}/tree/main' for available files.")
    cfg = json.loads(f.read_text(encoding="utf-8"))
    model_type = cfg.get("model_type")
    if model_type in VLLM_CONFIG_REGISTRY:
        return cfg
    has_remote_code = "AutoConfig" in (cfg.get("auto_map") or {})
    has_local_code = model_type in transformers_model_types()
    if has_remote_code and not has_local_code and not trust_remote_code:
        raise _remote_code_error(path)
    if not has_remote_code and not has_local_code:
        if model_type is None:
            raise ValueError(f"Unrecognized model in {path}. Should have a `model_type` key in its config.json.")
        raise ValueError(
            f"The checkpoint you are trying to load has model type `{model_type}` "
            "but Transformers does not recognize this architecture. This could be because of an "
            "issue with the checkpoint, or because your version of Transformers is out of date.\n\n"
            "You can update Transformers with the command `pip install --upgrade transformers`. If this "
            "does not work, and the checkpoint is very new, then there may not be a release version "
            "that supports this model yet. In this case, you can get the most up-to-date code by installing "
            "Transformers from source with the command "
            "`pip install git+https://github.com/huggingface/transformers.git`")
    return cfg


def read_tokenizer_config(path: str, trust_remote_code: bool) -> dict[str, Any]:
    """tokenizer_config.json as AutoTokenizer (transformers 5.19 tokenization_auto.py:815-940) gets it.

    A tokenizer with ``auto_map.AutoTokenizer`` whose class transformers lacks is remote code:
    without ``trust_remote_code`` transformers raises, and vLLM 0.33.0 passes the ValueError on
    (tokenizers/hf.py:183-210 only rewraps "does not exist or is not currently imported." and
    "requires you to execute the tokenizer file").
    """
    f = Path(path) / "tokenizer_config.json"
    tc = json.loads(f.read_text(encoding="utf-8")) if f.is_file() else {}
    auto_map = tc.get("auto_map")
    if isinstance(auto_map, dict):
        auto_map = auto_map.get("AutoTokenizer")
    cls = (tc.get("tokenizer_class") or "").removesuffix("Fast")
    has_local_code = bool(cls) and cls in transformers_tokenizer_classes()
    if auto_map and not has_local_code and not trust_remote_code:
        raise _remote_code_error(path)
    return tc


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only transformer that memory and time depend on."""

    architectures: tuple[str, ...]
    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    qkv_bias: bool
    config_dtype: str
    derived_max_len: float
    max_len_key: str | None
    rope: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def params(self) -> int:
        h, d = self.hidden, self.head_dim
        attn = h * self.heads * d + 2 * h * self.kv_heads * d + self.heads * d * h
        if self.qkv_bias:
            attn += (self.heads + 2 * self.kv_heads) * d
        mlp = 3 * h * self.intermediate  # gate, up, down (fused or not)
        per_layer = attn + mlp + 2 * h  # two norms
        embed = self.vocab * h
        head = 0 if self.tied else self.vocab * h
        return embed + head + self.layers * per_layer + h

    def weight_bytes(self, dtype_bytes: int) -> int:
        return self.params * dtype_bytes

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Every layer's key and value: 2 x layers x kv_heads x head_dim x bytes (full attention)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


def _rope_parameters(cfg: dict[str, Any]) -> dict[str, Any]:
    """transformers 5 ``standardize_rope_params`` as vLLM's patch_rope_parameters calls it
    (transformers_utils/config.py:668-687): rope_scaling (legacy ``type`` key) with rope_theta,
    or the default rope when the model has a rope_theta and no scaling."""
    rp = cfg.get("rope_parameters")
    if isinstance(rp, dict) and rp:
        return dict(rp)
    scaling = cfg.get("rope_scaling")
    theta = cfg.get("rope_theta", cfg.get("rotary_emb_base"))
    if isinstance(scaling, dict) and scaling:
        out = dict(scaling)
        out["rope_type"] = out.get("rope_type") or out.get("type") or "default"
        if out["rope_type"] == "su":
            out["rope_type"] = "longrope"
        return out
    if theta is not None:
        return {"rope_type": "default", "rope_theta": theta}
    return {}


def shape_of(cfg: dict[str, Any]) -> ModelShape:
    mt = cfg.get("model_type", "")
    g = cfg.get
    if mt == "chatglm":  # vLLM's ChatGLMConfig (transformers_utils/configs/chatglm.py): its own names
        heads = int(g("num_attention_heads"))
        kv = int(g("multi_query_group_num")) if g("multi_query_attention") else heads
        hidden = int(g("hidden_size"))
        shape = dict(hidden=hidden, layers=int(g("num_layers")), heads=heads, kv_heads=kv,
                     head_dim=int(g("kv_channels") or hidden // heads), intermediate=int(g("ffn_hidden_size")),
                     vocab=int(g("padded_vocab_size")), qkv_bias=bool(g("add_qkv_bias")))
        cfg = {**cfg, "max_position_embeddings": g("seq_length")}  # ChatGLMConfig sets it "for long lora"
    else:
        hidden = int(g("hidden_size"))
        heads = int(g("num_attention_heads"))
        layers = g("num_hidden_layers", g("num_layers"))
        shape = dict(hidden=hidden, layers=int(layers), heads=heads,
                     kv_heads=int(g("num_key_value_heads") or heads),
                     head_dim=int(g("head_dim") or hidden // heads),
                     intermediate=int(g("intermediate_size")), vocab=int(g("vocab_size")),
                     qkv_bias=mt == "qwen2" or bool(g("attention_bias")))
    derived: float = float("inf")
    key = None
    for k in MAX_LEN_KEYS:
        v = cfg.get(k)
        if v is not None:
            if v < derived:
                key = k
            derived = min(derived, v)
    rope = _rope_parameters(cfg)
    if rope and "gemma3" not in mt and rope.get("rope_type") not in _UNSCALED_ROPE:
        factor = rope.get("factor", 1.0)
        derived *= 1.0 if factor is None else float(factor)
    dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16").replace("torch.", "")
    # a config without the key gets its class's default: the Gemma classes tie, the others here do not
    tied = bool(cfg.get("tie_word_embeddings", mt in ("gemma", "gemma2", "gemma3_text")))
    return ModelShape(architectures=tuple(cfg.get("architectures") or ()), model_type=mt,
                      tied=tied, config_dtype=dtype,
                      derived_max_len=derived, max_len_key=key, rope=rope, raw=cfg, **shape)
