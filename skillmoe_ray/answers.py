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


# ---------------------------------------------------------------- numbers

#: a number as written in a response: an optional sign (not a hyphen inside a word or after a digit, and
#: right before the digits: "10 - 5" is two numbers), then a simple fraction, thousands with commas, or a
#: plain or decimal number with an optional exponent
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-+\u2212]?)"
    r"(?P<num>\d+\s*/\s*\d+(?![\d,]|\.\d)"
    r"|\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)"
    r"|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
    r"|\.\d+)"
)
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*(-?\d+)\s*\}\s*\{\s*(-?\d+)\s*\}")


def _to_float(sign: str, num: str) -> float | None:
    num = num.replace(",", "").replace(" ", "")
    try:
        if "/" in num:
            top, bottom = num.split("/")
            value = int(top) / int(bottom)
        else:
            value = float(num)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    if value != value or value in (float("inf"), float("-inf")):
        return None
    return -value if sign in ("-", "\u2212") else value


def format_number(value: float) -> str:
    """The canonical text of a number: ``1234`` for 1,234.0, ``0.75`` for 3/4."""
    if value == int(value) and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


def _numbers(text: str) -> list[float]:
    text = _LATEX_FRAC.sub(lambda m: f"{m.group(1)}/{m.group(2)}", text)
    out = []
    for m in _NUMBER.finditer(text):
        value = _to_float(m.group("sign"), m.group("num"))
        if value is not None:
            out.append(value)
    return out


def parse_number(text: str | int | float | None) -> float | None:
    """A gold answer (or any short text holding one number) as a float; None if it holds none or several.

    ``"1,234"``, ``"-3.5"``, ``"3/4"``, ``"$12"``, ``"50%"``, ``"\\frac{1}{2}"`` all parse.
    """
    if text is None or isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        return float(text) if text == text else None
    found = _numbers(str(text))
    return found[0] if len(found) == 1 else None


def last_number(text: str) -> float | None:
    found = _numbers(text)
    return found[-1] if found else None


def extract_number(text: str, field: str | None = None) -> str | None:
    """The answer as a canonical number: after the last ``<field>:`` if a field is named, else the last
    number in the response (after any thinking section)."""
    if not text:
        return None
    text = strip_thinking(text)
    if field:
        value = None
        for m in _field_pattern(field).finditer(text):
            # the last "<field>:" wins; on its line, the first number is the answer ("Answer: 42 apples, 6 left")
            found = _numbers(m.group(1))
            value = found[0] if found else None
        return None if value is None else format_number(value)
    value = last_number(text)
    return None if value is None else format_number(value)


@lru_cache(maxsize=64)
def _field_pattern(field: str) -> re.Pattern[str]:
    # "Answer: 42", "**Answer:** 42", "Answer = 42"; the rest of the line is where the number is
    return re.compile(rf"(?i)(?<!\w)\**{re.escape(field)}\**\s*[:=]\s*\**([^\n]*)")


def numbers_equal(a: float, b: float, tolerance: float = 0.0, relative: float = 0.0) -> bool:
    """Equal within an absolute ``tolerance`` or a ``relative`` one (of the larger magnitude)."""
    return abs(a - b) <= max(tolerance, relative * max(abs(a), abs(b)))


# ---------------------------------------------------------------- text

_STATED = re.compile(r"(?i)answer is|answer:")


def normalize_text(text: str) -> str:
    """Case-folded, whitespace collapsed, markdown emphasis, surrounding quotes and a final period removed."""
    text = " ".join(text.replace("*", " ").split()).strip()
    text = text.strip("\"'`\u201c\u201d\u2018\u2019 ")
    text = text.rstrip(".").strip()
    return text.strip("\"'`\u201c\u201d\u2018\u2019 ").casefold()


def extract_stated(text: str) -> str | None:
    """What follows the last "answer is" / "Answer:" on its line, or None."""
    if not text:
        return None
    text = strip_thinking(text)
    last = None
    for m in _STATED.finditer(text):
        last = m
    if last is None:
        return None
    found = text[last.end():].split("\n", 1)[0]
    found = " ".join(found.replace("*", " ").split()).strip().rstrip(".").strip()
    found = found.strip("\"'`\u201c\u201d\u2018\u2019 ")
    return found or None


def extract_regex(text: str, pattern: re.Pattern[str]) -> str | None:
    """Group 1 of the last match of ``pattern``, stripped; None if it never matches."""
    if not text:
        return None
    found = None
    for m in pattern.finditer(strip_thinking(text)):
        if m.group(1) is not None and m.group(1).strip():
            found = m.group(1).strip()
    return found
