"""vllm 0.33.0 v1/engine/llm_engine.py (LLMEngine) with its input and output processing.

The frontend half of vLLM: the tokenizer is loaded here (renderer_from_config, before any
engine core starts, llm_engine.py:97-100 -- so a tokenizer that needs remote code fails here,
in the caller's process), prompts are validated against max_model_len
(input_processor.py:557-601), request ids get vLLM's random suffix (input_processor.py:354-371;
outputs carry the caller's id, output_processor.py:441-460), and engine-core tokens become
RequestOutputs with vLLM's stop-string and output-kind rules (detokenizer: held-back text,
DELTA / CUMULATIVE / FINAL_ONLY).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Mapping

from ... import envs
from ...config import VllmConfig
from ...exceptions import VLLMValidationError
from ...outputs import CompletionOutput, RequestOutput
from ...sampling_params import RequestOutputKind, SamplingParams
from ..._double.model import read_tokenizer_config
from ..._double.tokenizer import FakeTokenizer
from .core import EngineCoreRequest, make_client


def load_tokenizer(vllm_config: VllmConfig) -> FakeTokenizer | None:
    mc = vllm_config.model_config
    if mc.skip_tokenizer_init:
        return None
    tc = read_tokenizer_config(mc.tokenizer_path, mc.trust_remote_code)
    return FakeTokenizer(mc.tokenizer, tc, mc.shape.vocab)


@dataclass
class _RequestState:
    external_req_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    token_ids: list[int]
    text: str = ""
    sent_text: int = 0
    sent_tokens: int = 0
    finished: bool = False


class LLMEngine:
    """Legacy LLMEngine for backwards compatibility."""

    def __init__(
        self,
        vllm_config: VllmConfig,
        executor_class: Any = None,
        log_stats: bool = False,
        aggregate_engine_logging: bool = False,
        usage_context: Any = None,
        stat_loggers: list[Any] | None = None,
        mm_registry: Any = None,
        multiprocess_mode: bool = False,
    ) -> None:
        self.vllm_config = vllm_config
        self.model_config = vllm_config.model_config
        self.log_stats = log_stats
        self._tokenizer = load_tokenizer(vllm_config)
        self._states: dict[str, _RequestState] = {}
        self._external: dict[str, list[str]] = {}
        self.should_execute_dummy_batch = False
        self.engine_core = make_client(multiprocess_mode, vllm_config, self._tokenizer)

    @classmethod
    def from_engine_args(cls, engine_args: Any, usage_context: Any = None, stat_loggers: list[Any] | None = None,
                         enable_multiprocessing: bool = False) -> "LLMEngine":
        vllm_config = engine_args.create_engine_config(usage_context)
        if envs.VLLM_ENABLE_V1_MULTIPROCESSING:
            enable_multiprocessing = True
        return cls(vllm_config=vllm_config, log_stats=not engine_args.disable_log_stats,
                   usage_context=usage_context, stat_loggers=stat_loggers, multiprocess_mode=enable_multiprocessing)

    # ------------------------------------------------------------ requests

    def get_num_unfinished_requests(self) -> int:
        return len(self._states)

    def has_unfinished_requests(self) -> bool:
        return bool(self._states) or self.engine_core.dp_engines_running()

    def get_supported_tasks(self) -> tuple[str, ...]:
        return self.engine_core.get_supported_tasks()

    def abort_request(self, request_ids: list[str], internal: bool = False) -> None:
        """output_processor.py:599-645: external ids abort every request made under them."""
        internal_ids: list[str] = []
        for rid in request_ids:
            if internal:
                internal_ids.append(rid)
            else:
                internal_ids.extend(self._external.pop(rid, []))
        for iid in internal_ids:
            self._states.pop(iid, None)
        self.engine_core.abort_requests(internal_ids)

    def add_request(
        self,
        request_id: str,
        prompt: Any,
        params: SamplingParams,
        arrival_time: float | None = None,
        lora_request: Any = None,
        tokenization_kwargs: dict[str, Any] | None = None,
        trace_headers: Mapping[str, str] | None = None,
        priority: int = 0,
        session_id: str | None = None,
        prompt_text: str | None = None,
        kv_hints: Any = None,
    ) -> str:
        if not isinstance(request_id, str):
            raise TypeError(f"request_id must be a string, got {type(request_id)}")
        if not isinstance(params, SamplingParams):
            raise NotImplementedError("[vllm double] only SamplingParams (generation) are modelled")
        engine_input = self._to_engine_input(prompt, tokenization_kwargs)
        ids = list(engine_input["prompt_token_ids"])
        self._validate_prompt_len(len(ids))
        params = params.clone()
        mc = self.model_config
        if params.max_tokens is None:  # input_processor.py:477-480
            params.max_tokens = mc.max_model_len - len(ids)
        if self._tokenizer is not None and self._tokenizer.eos_token_id is not None:
            params._eos_token_id = self._tokenizer.eos_token_id
        if params.n != 1:
            raise NotImplementedError("[vllm double] n > 1 is not modelled")
        # input_processor.py:354-371: the internal id gets 8 random characters
        internal = f"{request_id}-{uuid.uuid4().hex[:8]}"
        self._states[internal] = _RequestState(request_id, engine_input.get("prompt"), ids, params, [])
        self._external.setdefault(request_id, []).append(internal)
        self.engine_core.add_request(EngineCoreRequest(internal, request_id, ids, params))
        return internal

    def _to_engine_input(self, prompt: Any, tokenization_kwargs: dict[str, Any] | None) -> dict[str, Any]:
        if isinstance(prompt, dict) and prompt.get("type") == "token":
            return prompt
        return preprocess_prompt(self, prompt, tokenization_kwargs)

    def _validate_prompt_len(self, prompt_len: int) -> None:
        """input_processor.py:557-601 (decoder prompt of a text-only model)."""
        if prompt_len == 0:
            raise VLLMValidationError("The decoder prompt cannot be empty")
        max_prompt_len = self.model_config.max_model_len
        suggestion = "Make sure that `max_model_len` is no smaller than the number of text tokens."
        if prompt_len > max_prompt_len:
            raise VLLMValidationError(
                f"The decoder prompt (length {prompt_len}) is "
                f"longer than the maximum model length of {max_prompt_len}. "
                f"{suggestion}")
        if prompt_len == max_prompt_len:
            suggestion = ("Make sure that `max_model_len` is no smaller than the "
                          "number of text tokens (prompt + requested output tokens).")
            raise VLLMValidationError(
                f"The decoder prompt (length {prompt_len}) plus the number of "
                f"requested output tokens (at least 1) is longer than the maximum "
                f"model length of {max_prompt_len}. {suggestion}")

    def step(self) -> list[RequestOutput]:
        outputs = []
        for out in self.engine_core.get_output():
            st = self._states.get(out.request_id)
            if st is None:
                continue
            ro = self._process(st, out)
            if st.finished:
                self._states.pop(out.request_id, None)
                ids = self._external.get(st.external_req_id, [])
                if out.request_id in ids:
                    ids.remove(out.request_id)
                if not ids:
                    self._external.pop(st.external_req_id, None)
            if ro is not None:
                outputs.append(ro)
        return outputs

    def _process(self, st: _RequestState, out: Any) -> RequestOutput | None:
        """Detokenize, apply stop strings (the detokenizer's check), and shape the output by its kind."""
        tok, sp = self._tokenizer, st.params
        st.token_ids.extend(out.new_token_ids)
        finish, stop_reason = out.finish_reason, out.stop_reason
        text = tok.decode(st.token_ids, skip_special_tokens=sp.skip_special_tokens) if tok else ""
        for s in sp.stop or []:
            idx = text.find(s)
            if idx >= 0:
                text = text[:idx + len(s)] if sp.include_stop_str_in_output else text[:idx]
                finish, stop_reason = "stop", s
                self.engine_core.abort_requests([out.request_id])
                break
        st.text = text
        st.finished = finish is not None
        kind = sp.output_kind
        if kind == RequestOutputKind.FINAL_ONLY and not st.finished:
            return None
        buffer = 0 if st.finished else sp.output_text_buffer_length
        visible = len(text) - buffer if buffer else len(text)
        if kind == RequestOutputKind.DELTA:
            new_text = text[st.sent_text:visible] if visible > st.sent_text else ""
            st.sent_text = max(st.sent_text, visible)
            new_ids = st.token_ids[st.sent_tokens:]
            st.sent_tokens = len(st.token_ids)
        else:
            new_text, new_ids = text[:visible], list(st.token_ids)
        comp = CompletionOutput(index=0, text=new_text, token_ids=new_ids, cumulative_logprob=None, logprobs=None,
                                finish_reason=finish, stop_reason=stop_reason)
        return RequestOutput(st.external_req_id, st.prompt, st.prompt_token_ids, None, [comp], st.finished)

    # ------------------------------------------------------------ sleep mode

    def sleep(self, level: int = 1, mode: str = "abort") -> None:
        if mode == "abort":
            self._states.clear()
            self._external.clear()
        self.engine_core.sleep(level, mode)

    def wake_up(self, tags: list[str] | None = None) -> bool:
        return self.engine_core.wake_up(tags)

    def is_sleeping(self) -> bool:
        return self.engine_core.is_sleeping()

    # ------------------------------------------------------------ tokenizer

    @property
    def tokenizer(self) -> FakeTokenizer | None:
        return self._tokenizer

    def get_tokenizer(self) -> FakeTokenizer:
        if self._tokenizer is None:
            raise ValueError("Unable to get tokenizer because `skip_tokenizer_init=True`")
        return self._tokenizer


def preprocess_prompt(engine: LLMEngine, prompt: Any, tokenization_kwargs: dict[str, Any] | None = None) -> dict:
    """A prompt as the renderer makes it an EngineInput (renderers: text is encoded with special tokens)."""
    if isinstance(prompt, str):
        prompt = {"prompt": prompt}
    if not isinstance(prompt, dict):
        raise TypeError(f"[vllm double] unsupported prompt type {type(prompt).__name__}")
    if "prompt_embeds" in prompt or "multi_modal_data" in prompt:
        raise NotImplementedError("[vllm double] embeddings and multi-modal prompts are not modelled")
    if "prompt_token_ids" in prompt:
        return {"type": "token", "prompt_token_ids": list(prompt["prompt_token_ids"]), "prompt": prompt.get("prompt")}
    kw = {"add_special_tokens": True, **(tokenization_kwargs or {})}
    ids = engine.get_tokenizer().encode(prompt["prompt"], **kw)
    return {"type": "token", "prompt_token_ids": ids, "prompt": prompt["prompt"]}
