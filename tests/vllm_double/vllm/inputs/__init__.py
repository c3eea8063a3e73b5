"""vllm 0.33.0 inputs/llm.py:95-128: the prompt dicts (TypedDicts, as in vLLM)."""

from __future__ import annotations

from typing import Any, Union

from typing_extensions import NotRequired, TypedDict


class _PromptOptions(TypedDict):
    multi_modal_data: NotRequired[Any]
    media_io_kwargs: NotRequired[Any]
    mm_processor_kwargs: NotRequired[Any]
    multi_modal_uuids: NotRequired[Any]
    cache_salt: NotRequired[str]


class TextPrompt(_PromptOptions):
    """Schema for a text prompt."""

    prompt: str


class TokensPrompt(_PromptOptions):
    """Schema for a tokenized prompt."""

    prompt_token_ids: list[int]
    prompt: NotRequired[str]
    token_type_ids: NotRequired[list[int]]
    prompt_token_offsets: NotRequired[list[tuple[int, int]] | None]


PromptType = Union[str, TextPrompt, TokensPrompt]

__all__ = ["PromptType", "TextPrompt", "TokensPrompt"]
