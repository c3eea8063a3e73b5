"""The prompt texts the paper's stages send to models: keywords, experts, aggregator.

Kept apart from the code that uses them so every word a model reads is in one
place, and a recording made with these prompts stays valid as long as this
file does not change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from .tasks.answers import strip_thinking

if TYPE_CHECKING:
    from .tasks.catalogue import Task

#: the reference's keyword-extraction prompt (skill extraction with an LLM)
KEYWORD_PROMPT = (
    "Question: {question}\n"
    "What are the core knowledge, subjects or skills needed to solve this problem? "
    "List 2-5 keywords separated in comma. "
    "Example keywords: psychology, virology, behavioral theory, microbiology, "
    "diplomacy, political science, property law, finance, business. "
    "Give ONLY the keywords, no other words or explanation. "
    "Follow this format: Keywords: <keyword1>, <keyword2>..."
)

AGGREGATION_PREAMBLE = (
    "You have been provided with a set of responses from various open-source models to the latest user query. "
    "Your task is to synthesize these responses into a single, high-quality response. "
    "It is crucial to critically evaluate the information provided in these responses, "
    "recognizing that some of it may be biased or incorrect. "
    "Your response should not simply replicate the given answers but should offer a refined, "
    "accurate, and comprehensive reply to the instruction. "
    "Ensure your response is well-structured, coherent, and adheres "
    "to the highest standards of accuracy and reliability. "
    "Responses from models:\n\n"
)


def expert_prompt(task: Task, question: str) -> str:
    """The question and the task's answer format; the aggregator's prompt ends with the same text."""
    return f"Question: {question}\n{task.instruction()}"


def aggregation_prompt(task: Task, question: str, responses: Sequence[str]) -> str:
    """The reference's aggregation prompt: the responses first, then the question and answer format.

    Thinking blocks are cut so the aggregator reads conclusions, not another
    model's scratch work, and its context stays short.
    """
    parts = [AGGREGATION_PREAMBLE]
    for i, response in enumerate(responses, 1):
        parts.append(f"### Model {i}'s response:\n{strip_thinking(response)}\n\n")
    parts.append(expert_prompt(task, question))
    return "".join(parts)
