"""HTTP request and response bodies."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


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
    expert: str
    answer: str | None


class SolveResponse(BaseModel):
    answer: str | None
    response: str
    skills: list[str]
    experts: list[str]
    expert_answers: list[ExpertOut]
    aggregator: str
    task: str
    timings: dict[str, float]


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send fields we do not use (temperature, n, ...)

    model: str = "skillmoe"
    messages: list[ChatMessage] = Field(min_length=1)
    task: str | None = None
    stream: bool = False


def chat_response(model: str, solved: dict[str, Any], created: int, rid: str) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": solved["response"]},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        "skillmoe": {k: solved[k] for k in ("answer", "skills", "experts", "aggregator", "task", "timings")},
    }
