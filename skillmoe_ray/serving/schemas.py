"""HTTP request and response bodies."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .messages import AnswerRecord, TokenCount


class SolveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(description="the question, with its options for multiple choice")
    task: str | None = Field(default=None, description="MMLU_Pro, GPQA, MedMCQA or AIME24: answer format and profiles")

    @field_validator("question")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("question must not be empty")
        return v


class ExpertOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    expert: str
    answer: str | None


class Usage(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class SolveResponse(BaseModel):
    """``/v1/solve``'s body: the scheduler's :class:`~skillmoe_ray.serving.messages.AnswerRecord`, field by field."""

    model_config = ConfigDict(from_attributes=True)

    answer: str | None
    response: str
    skills: list[str]
    experts: list[str]
    expert_answers: list[ExpertOut]
    aggregator: str
    task: str
    timings: dict[str, float]
    usage: Usage | None = None


class ContentPart(BaseModel):
    """One part of a message's content; only text parts carry a question."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_call_id, ...: accepted, unused

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        """The message as text: text parts joined by newlines; any other part type is refused (400)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        texts = []
        for i, part in enumerate(self.content):
            if part.type != "text":
                raise ValueError(f"content[{i}] has type {part.type!r}; only text parts are supported")
            texts.append(part.text or "")
        return "\n".join(texts)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatRequest(BaseModel):
    """OpenAI's chat request. Sampling parameters are checked against OpenAI's ranges and honoured:
    temperature, top_p and max_tokens apply to every expert call of the request; n must be 1."""

    model_config = ConfigDict(extra="allow")  # OpenAI clients send fields we do not use (user, metadata, ...)

    model: str = "skillmoe"
    messages: list[ChatMessage] = Field(min_length=1)
    task: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1)
    seed: int | None = None


def chat_response(model: str, solved: AnswerRecord, created: int, rid: str) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": solved.response},
                     "finish_reason": "stop"}],
        "usage": solved.usage.as_dict(),
        "skillmoe": skillmoe_extra(solved),
    }


def skillmoe_extra(solved: AnswerRecord) -> dict[str, Any]:
    """What a chat response (and a stream's finish chunk) adds to OpenAI's fields: answer, skills, experts, ..."""
    return {"answer": solved.answer, "skills": list(solved.skills), "experts": list(solved.experts),
            "aggregator": solved.aggregator, "task": solved.task, "timings": dict(solved.timings)}


def chat_chunk(model: str, rid: str, created: int, delta: dict[str, Any], finish: str | None = None,
               usage: TokenCount | None = None, with_choice: bool = True) -> dict[str, Any]:
    """One server-sent event of a streamed chat completion (OpenAI's ``chat.completion.chunk``)."""
    chunk: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if with_choice else []}
    if usage is not None:
        chunk["usage"] = usage.as_dict()
    return chunk
