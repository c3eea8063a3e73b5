"""Answer extraction and checking for the four task formats.

Multiple-choice answers follow the MMLU-Pro evaluation harness: the *first*
"answer is (X)" wins, because base models often keep generating few-shot
continuations after their answer, and a later match belongs to a question the
model invented. AIME answers are the last ``\\boxed{}`` and are compared with
math-verify, gold first (its argument order matters).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
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


_BARE_CHOICE = re.compile(r"^\s*\(?([A-J])\)?(?:[.):\s]|$)|^\s*\(?([a-j])\)?\s*$")


def choice_value(value: str, num_choices: int) -> str | None:
    """The letter an answer field holds: ``B``, ``(B)``, ``B. text``, or a stated "answer is (B)"."""
    letters = choice_letters(num_choices)
    m = _BARE_CHOICE.match(value)
    letter = (m.group(1) or m.group(2)).upper() if m else None
    if letter and letter in letters:
        return letter
    return extract_choice(value, num_choices)


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
    """The answer as a canonical number: the last number of the last ``<field>:`` value if a field is
    named (``Answer:``, ``"answer":``, ``**Answer:**``: decorations are the same field), else the last
    number in the response (after any thinking section)."""
    if not text:
        return None
    text = strip_thinking(text)
    if field:
        value = field_value(text, field)
        return None if value is None else number_in(value)
    value = last_number(text)
    return None if value is None else format_number(value)


def number_in(value: str) -> str | None:
    """The last number of an answer's own text ("24 * $12.00 = $288.00" is 288), canonical; None if none."""
    found = last_number(value)
    return None if found is None else format_number(found)


def field_name(field: str) -> str:
    """The bare name of a field as a user may write it: ``"answer":``, ``**Answer:**``, ``answer =`` are
    ``answer`` / ``Answer``."""
    return field.strip().strip("*_`\"' ").rstrip(":=").strip().strip("*_`\"' ")


@lru_cache(maxsize=64)
def _field_pattern(field: str) -> re.Pattern[str]:
    # Answer: 42 / **Answer:** 42 / "answer": "42" / Answer = 42; what follows is the field's value
    name = re.escape(field_name(field) or field)
    return re.compile(rf"(?i)(?<![\w])[*_`\"']*{name}[*_`\"']*\s*[:=]\s*\**\s*")


def field_value(text: str, field: str) -> str | None:
    """The value of the last ``<field>:`` of a response: a quoted string to its closing quote (as JSON
    writes it), else the rest of the line; None if the field is not there."""
    last = None
    for m in _field_pattern(field).finditer(text):
        last = m
    if last is None:
        return None
    rest = text[last.end():]
    if rest.startswith('"'):
        value, _ = _json_string(rest)
        return value
    return rest.split("\n", 1)[0]


# ---------------------------------------------------------------- answers written as JSON

#: the start of a JSON object with a string key
_OBJECT = re.compile(r'\{\s*"')
_FENCE_OPEN = re.compile(r"^```[A-Za-z]*\s*")


@dataclass(frozen=True)
class JsonAnswer:
    """A response written as a JSON object: the text of its answer field (None: absent, null or cut off)."""

    value: str | None


def _json_string(text: str) -> tuple[str, bool]:
    """The string that ``text`` starts with (a ``"``), unescaped, and whether it was closed; a string cut
    short by the end of the response is read as far as it goes."""
    i, escaped = 1, False
    while i < len(text):
        c = text[i]
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == '"':
            try:
                return json.loads(text[: i + 1]), True
            except json.JSONDecodeError:
                return text[1:i], True
        i += 1
    raw = text[1:].rstrip("\\")
    try:
        return json.loads(f'"{raw}"'), False
    except json.JSONDecodeError:
        return raw, False


def _as_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return format_number(float(value)) if value == value else None
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _lookup(obj: dict, key: str) -> tuple[bool, object]:
    for k, v in obj.items():
        if isinstance(k, str) and k.strip().casefold() == key.casefold():
            return True, v
    return False, None


def _lenient(body: str, key: str) -> str | None:
    """The key's value in a JSON object that does not parse (cut short, or with a stray character)."""
    pattern = re.compile(rf'(?i)"{re.escape(key)}"\s*:\s*')
    last = None
    for m in pattern.finditer(body):
        last = m
    if last is None:
        return None
    rest = body[last.end():]
    if rest.startswith('"'):
        value, closed = _json_string(rest)
        return value if closed else None  # an answer cut off mid-string is no answer
    token = re.match(r"[^,}\]\n]*", rest).group(0).strip()
    if not token or token == "null" or len(rest) == len(token):  # nothing, null, or cut off mid-value
        return None
    return token


def json_answer(text: str, key: str) -> JsonAnswer | None:
    """How a response written as JSON answers: the value of ``key`` when the response is, starts with
    or ends with a JSON object. None when the response is not written as JSON (read it as text).

    A response that *starts* with an object is read only from that object: text after its closing
    brace (a recomputation, a second thought) is not the answer, and an object cut short (the token
    limit) or without the key answers nothing rather than a number from its reasoning. A response that
    ends with an object is read from it when the object has the key. Keys match regardless of case.
    """
    if not text:
        return None
    body = strip_thinking(text).strip()
    fence = _FENCE_OPEN.match(body)
    if fence:
        body = body[fence.end():]
    decoder = json.JSONDecoder()
    if _OBJECT.match(body):
        try:
            obj, _ = decoder.raw_decode(body)
        except json.JSONDecodeError:
            return JsonAnswer(_lenient(body, key))
        if isinstance(obj, dict):
            return JsonAnswer(_as_text(_lookup(obj, key)[1]))
    tail = body.rstrip().removesuffix("```").rstrip()
    for m in reversed(list(_OBJECT.finditer(tail))):
        try:
            obj, end = decoder.raw_decode(tail, m.start())
        except json.JSONDecodeError:
            continue
        if end != len(tail):
            return None  # the last object that parses is not at the end: text follows it
        has, value = _lookup(obj, key) if isinstance(obj, dict) else (False, None)
        return JsonAnswer(_as_text(value)) if has else None
    return None


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


def clean_stated(value: str) -> str | None:
    """An answer field's text as a stated answer: spacing, surrounding emphasis and quotes, and a final
    period removed."""
    found = " ".join(value.split()).strip().strip("*_").strip().rstrip(".").strip()
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
