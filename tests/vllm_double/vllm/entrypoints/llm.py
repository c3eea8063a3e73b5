"""vllm 0.33.0 entrypoints/llm.py (LLM) and entrypoints/common/offline.py (OfflineInferenceMixin).

The constructor has vLLM's signature (llm.py:177-222); keywords beyond it go to EngineArgs
(llm.py:295-336), so an unknown one is a TypeError there. ``generate`` renders each prompt
(``_preprocess_cmpl_one``), adds it with output kind FINAL_ONLY (offline.py:568-587) under the
next ``request_counter`` id and steps the engine until nothing is left (offline.py:589-642),
as vLLM does; ``sleep`` / ``wake_up`` go to the engine (llm.py:839-888).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..engine.arg_utils import HARMLESS, MODELLED, EngineArgs
from ..exceptions import VLLMValidationError
from ..outputs import RequestOutput
from ..platforms import current_platform
from ..sampling_params import RequestOutputKind, SamplingParams
from ..utils.counter import Counter
from ..v1.engine.llm_engine import LLMEngine, preprocess_prompt


class LLM:
    """An LLM for generating texts from given prompts and sampling parameters."""

    def __init__(
        self,
        model: str,
        *,
        runner: Any = "auto",
        convert: Any = "auto",
        tokenizer: str | None = None,
        tokenizer_mode: Any = "auto",
        skip_tokenizer_init: bool = False,
        trust_remote_code: bool = False,
        allowed_local_media_path: str = "",
        allowed_media_domains: list[str] | None = None,
        tensor_parallel_size: int = 1,
        dtype: Any = "auto",
        quantization: Any = None,
        revision: str | None = None,
        tokenizer_revision: str | None = None,
        chat_template: Path | str | None = None,
        seed: int = 0,
        gpu_memory_utilization: float = 0.92,
        cpu_offload_gb: float = 0,
        offload_group_size: int = 0,
        offload_num_in_group: int = 1,
        offload_prefetch_step: int = 1,
        offload_params: set[str] | None = None,
        enforce_eager: bool = False,
        enable_return_routed_experts: bool = False,
        return_sampling_mask: bool = False,
        disable_custom_all_reduce: bool = False,
        hf_token: bool | str | None = None,
        hf_overrides: Any = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
        pooler_config: Any = None,
        structured_outputs_config: Any = None,
        profiler_config: Any = None,
        attention_config: Any = None,
        kv_cache_memory_bytes: int | None = None,
        compilation_config: Any = None,
        quantization_config: Any = None,
        logits_processors: Any = None,
        spec_method: str | None = None,
        spec_model: str | None = None,
        spec_tokens: int | None = None,
        **kwargs: Any,
    ) -> None:
        """LLM constructor."""
        explicit = {k: v for k, v in locals().items() if k not in ("self", "kwargs", "__class__")}
        if "disable_log_stats" not in kwargs:
            kwargs["disable_log_stats"] = True
        # llm.py:279-293
        _dp_size = int(kwargs.get("data_parallel_size", 1))
        _distributed_executor_backend = kwargs.get("distributed_executor_backend")
        if _dp_size > 1 and not _distributed_executor_backend == "external_launcher" and not current_platform.is_tpu():
            raise ValueError(
                f"LLM(data_parallel_size={_dp_size}) is not supported for single-"
                "process usage and may hang. Please use "
                "the explicit multi-process data-parallel example at "
                "'examples/features/data_parallel/data_parallel_offline.py'."
            )
        ea_kwargs = {k: v for k, v in explicit.items() if k not in ("chat_template",)}
        engine_args = EngineArgs(**ea_kwargs, **kwargs)  # TypeError for a keyword EngineArgs has not
        _refuse_unmodelled(explicit, kwargs)
        self.llm_engine = LLMEngine.from_engine_args(engine_args=engine_args)
        self.model_config = self.llm_engine.model_config
        self.engine_class = type(self.llm_engine)
        self.request_counter = Counter()
        self.default_sampling_params: dict[str, Any] | None = None
        self.supported_tasks = self.llm_engine.get_supported_tasks()
        self.runner_type = self.model_config.runner_type
        self.chat_template = chat_template

    @classmethod
    def from_engine_args(cls, engine_args: Any) -> "LLM":
        return cls(**vars(engine_args))

    def get_tokenizer(self) -> Any:
        return self.llm_engine.get_tokenizer()

    def get_default_sampling_params(self) -> SamplingParams:
        return SamplingParams()

    # ------------------------------------------------------------ generation (offline.py)

    def generate(
        self,
        prompts: Any,
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool | Callable[..., Any] = True,
        lora_request: Any = None,
        priority: int | Sequence[int] | None = None,
        tokenization_kwargs: dict[str, Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
    ) -> list[RequestOutput]:
        if self.model_config.runner_type != "generate":
            raise ValueError("LLM.generate() is only supported for generative models.")
        if lora_request is not None:
            raise NotImplementedError("[vllm double] LoRA is not modelled")
        if sampling_params is None:
            sampling_params = self.get_default_sampling_params()
        seq_prompts = [prompts] if isinstance(prompts, (str, dict)) else list(prompts)
        seq_params = self._params_to_seq(sampling_params, len(seq_prompts))
        added: list[str] = []
        try:
            for prompt, params in zip(seq_prompts, seq_params):
                added.append(self._add_request(
                    self._preprocess_cmpl_one(prompt, tokenization_kwargs, mm_processor_kwargs=mm_processor_kwargs),
                    params))
        except Exception:
            if added:
                self.llm_engine.abort_request(added, internal=True)
            raise
        return self._run_engine(output_type=RequestOutput, use_tqdm=use_tqdm)

    def _params_to_seq(self, params: Any, num_requests: int) -> Sequence[Any]:
        if isinstance(params, Sequence):
            if len(params) != num_requests:
                raise VLLMValidationError(
                    f"The lengths of prompts ({num_requests}) "
                    f"and params ({len(params)}) must be the same.")
            return params
        return [params] * num_requests

    def _preprocess_cmpl(self, prompts: Sequence[Any], tokenization_kwargs: dict[str, Any] | None = None,
                         mm_processor_kwargs: dict[str, Any] | None = None) -> Sequence[dict[str, Any]]:
        if mm_processor_kwargs:
            raise NotImplementedError("[vllm double] multi-modal prompts are not modelled")
        return [preprocess_prompt(self.llm_engine, p, tokenization_kwargs) for p in prompts]

    def _preprocess_cmpl_one(self, prompt: Any, tokenization_kwargs: dict[str, Any] | None = None,
                             mm_processor_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
        (engine_input,) = self._preprocess_cmpl([prompt], tokenization_kwargs, mm_processor_kwargs=mm_processor_kwargs)
        return engine_input

    def _add_request(self, prompt: dict[str, Any], params: SamplingParams, lora_request: Any = None,
                     priority: int = 0) -> str:
        if isinstance(params, SamplingParams):
            params.output_kind = RequestOutputKind.FINAL_ONLY  # "We only care about the final output"
        request_id = str(next(self.request_counter))
        return self.llm_engine.add_request(request_id, prompt, params, lora_request=lora_request, priority=priority)

    def _run_engine(self, output_type: Any, *, use_tqdm: bool | Callable[..., Any] = True) -> list[Any]:
        outputs: list[Any] = []
        while self.llm_engine.has_unfinished_requests():
            for output in self.llm_engine.step():
                assert isinstance(output, output_type)
                if output.finished:
                    outputs.append(output)
        return sorted(outputs, key=lambda x: int(x.request_id))

    # ------------------------------------------------------------ sleep mode

    def sleep(self, level: int = 1, mode: Any = "abort"):
        """Level 1: offload model weights to CPU, discard KV cache (llm.py:839-870)."""
        self.llm_engine.sleep(level=level, mode=mode)

    def wake_up(self, tags: list[str] | None = None) -> bool:
        return self.llm_engine.wake_up(tags)

    def reset_prefix_cache(self, reset_running_requests: bool = False, reset_connector: bool = False) -> bool:
        return True

    # ------------------------------------------------------------ the double's view

    def double_memory(self) -> dict[str, Any]:
        """What this engine holds (device bytes by kind, pinned host bytes) and its modelled seconds."""
        return self.llm_engine.engine_core.engine_core.memory()


_SIGNATURE = inspect.signature(LLM.__init__)


def _refuse_unmodelled(explicit: dict[str, Any], kwargs: dict[str, Any]) -> None:
    """Any argument set to something the double does not model raises (never a silent pass)."""
    given = {k: v for k, v in explicit.items()
             if k != "model" and v != _SIGNATURE.parameters[k].default}
    given.update(kwargs)
    for name, value in given.items():
        if name in MODELLED or name in HARMLESS or name == "chat_template":
            continue
        if name in ("hf_overrides", "compilation_config") and not value:
            continue
        raise NotImplementedError(f"[vllm double] engine argument {name}={value!r} is not modelled by the double")
