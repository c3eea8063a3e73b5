"""Answer extraction and checking for the four task formats.

Multiple-choice answers follow the MMLU-Pro evaluation harness: the *first*
"answer is (X)" wins, because base models often keep generating few-shot
continuations after their answer, and a later match belongs to a question the
model invented. AIME answers are the last ``\\boxed{}`` and are compared with
math-verify, gold first (its argument order matters).
"""

from __future__ import annotations

import re
from functools import lru_cache

LETTERS = "ABCDEFGHIJ"


def choice_letters(num_choices: int) -> str:
    if not 2 <= num_choices <= len(LETTERS):
        raise ValueError(f"num_choices must be between 2 and {len(LETTERS)}, got {num_choices}")
    return LETTERS[:num_choices]


@lru_cache(maxsize=16)
def _choice_patterns(num_choices: int) -> tuple[re.Pattern[str], re.Pattern[str]]:
    letters = choice_letters(num_choices)
    primary = re.compile(rf"answer is \(?([{letters}])\)?")
    fallback = re.compile(rf"[aA]nswer:\s*\(?([{letters}])\)?")
    return primary, fallback


def extract_choice(text: str, num_choices: int) -> str | None:
    """The chosen letter, or None when the response states no answer."""
    if not text:
        return None
    text = strip_thinking(text)
    primary, fallback = _choice_patterns(num_choices)
    match = primary.search(text)
    if match:
        return match.group(1)
    match = fallback.search(text)
    return match.group(1) if match else None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced."""
    if not text:
        return None
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        # "\boxed 5" form
        rest = text[start:].split(None, 1)
        return rest[1].split("$")[0].strip() if len(rest) > 1 else None
    depth = 0
    for i in range(brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : i].strip()
    return None


def strip_thinking(text: str) -> str:
    """Drop a reasoning model's ``<think>`` section, as the reference does before aggregation."""
    return text.split("</think>")[-1]


def extract_boxed(text: str) -> str | None:
    return last_boxed(strip_thinking(text)) if text else None


@lru_cache(maxsize=100_000)
def math_equal(gold: str, pred: str) -> bool:
    """math-verify equivalence, with a plain string fast path."""
    if pred is None:
        return False
    if gold.strip() == pred.strip():
        return True
    from math_verify import parse, verify

    try:
        gold_parsed = parse(f"${gold}$") or parse(gold)
        pred_parsed = parse(f"${pred}$") or parse(pred)
        return bool(verify(gold_parsed, pred_parsed))
    except Exception:  # math-verify raises on unparsable input; that is "not equal"
        return False
