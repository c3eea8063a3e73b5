"""Turning chat messages into model input, shared by the engines that run real models.

Instruction-tuned models carry a chat template in their tokenizer and get it.
A base model has none (the packaged Gemma 3 270M is one): its messages are
rendered as a plain transcript

    <system text>

    User: <user text>

    Assistant:

so that a few-shot prompt reads as a document to continue; generation stops
where the model starts writing the next ``User:`` turn. ``prompt_format`` in an
expert's ``engine_args`` forces either way ("chat" or "plain"; default "auto").
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from typing import Any, Literal, Sequence

PromptFormat = Literal["auto", "chat", "plain"]

#: where a plain-transcript completion is cut: the model starting the next turn
PLAIN_STOP = ("\nUser:", "\n\nUser:")


#: markers no model means as text: chat-turn and end-of-text tokens in their ``<|...|>`` spellings (Llama 3,
#: Qwen, Phi, GPT), DeepSeek's full-width ones and Gemma's turn markers; removed wherever they are
_MARKERS = re.compile(r"<\|[A-Za-z_]+(?:_id)?\|>|<\uff5c[^<>\uff5c]{1,40}\uff5c>|<(?:end|start)_of_turn>")
#: end- and start-of-sequence tokens that can also be text (``<s>`` is HTML's strikethrough): removed
#: only as a run at the start or the end of a response, where a recording that kept them has them
_EDGE = r"(?:\s*(?:</s>|<s>|<eos>|<bos>|<pad>|<unk>|\[/INST\]))+"
_EDGES = re.compile(rf"^{_EDGE}|{_EDGE}\s*$")


def strip_special_tokens(text: str) -> str:
    """A response without the special tokens a model or a recording left in it (``</s></s>``,
    ``<|eot_id|>``): they are not part of the answer a client reads."""
    if "<" not in text and "[" not in text:
        return text
    return _EDGES.sub("", _MARKERS.sub("", text))


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string in it, and whether there was one."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class Deltas:
    """A response decoded anew as it grows, turned into the deltas a stream may send.

    A delta never holds what a later token could still change: a partial character (the decoder's
    U+FFFD while a multi-byte character is incomplete) or the start of a stop string. At the first
    stop string the text is cut as :func:`cut_at_stop` cuts the whole one, and ``stopped`` is set.
    Joined, the deltas are the final text exactly.
    """

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self.stops = tuple(stops)
        self.sent = 0
        self.stopped = False

    def update(self, text: str, final: bool = False) -> str:
        text, self.stopped = cut_at_stop(text, self.stops)
        end = len(text)
        if not (final or self.stopped):
            while end > self.sent and text[end - 1] == "\ufffd":
                end -= 1
            end -= max((k for s in self.stops for k in range(1, len(s)) if text[:end].endswith(s[:k])), default=0)
        if end <= self.sent:
            return ""
        delta, self.sent = text[self.sent:end], end
        return delta


def render_plain(messages: Sequence[dict[str, str]]) -> str:
    parts: list[str] = []
    for m in messages:
        role, content = m.get("role", "user"), m.get("content", "")
        if role == "system":
            parts.append(content.strip())
        elif role == "assistant":
            parts.append(f"Assistant: {content.strip()}")
        else:
            parts.append(f"User: {content.strip()}")
    parts.append("Assistant:")
    return "\n\n".join(parts)


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def use_chat(tokenizer: Any, fmt: PromptFormat = "auto") -> bool:
    if fmt == "chat":
        return True
    if fmt == "plain":
        return False
    return has_chat_template(tokenizer)


def encode_messages(
    tokenizer: Any,
    messages: Sequence[dict[str, str]],
    fmt: PromptFormat = "auto",
    chat_template: str | None = None,
) -> list[int]:
    """Token ids of the prompt for ``messages``: chat template when there is one, else a plain transcript."""
    if use_chat(tokenizer, fmt) or chat_template:
        kw: dict[str, Any] = {"tokenize": False, "add_generation_prompt": True}
        if chat_template:
            kw["chat_template"] = chat_template
        text = tokenizer.apply_chat_template(list(messages), **kw)
        # the template writes any BOS itself
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer.encode(render_plain(messages), add_special_tokens=True))


def request_seeds(seed: int | None, messages: Sequence[Sequence[dict[str, str]]]) -> list[int | None]:
    """One sampling seed per request of a batch.

    The same prompt twice in a batch (an expert recruited twice for one
    question, a keyword prompt sampled k times) must give independent samples,
    yet a request's result must not depend on what else is in the batch. So the
    seed mixes the batch seed, the prompt and which repeat of that prompt this
    is. ``None`` stays ``None`` (fresh randomness).
    """
    if seed is None:
        return [None] * len(messages)
    seen: Counter[str] = Counter()
    out: list[int | None] = []
    for msgs in messages:
        key = json.dumps(list(msgs), sort_keys=True, ensure_ascii=False)
        n = seen[key]
        seen[key] += 1
        h = hashlib.sha256(f"{seed}\0{n}\0{key}".encode("utf-8")).digest()
        out.append(int.from_bytes(h[:4], "little") & 0x7FFFFFFF)
    return out
