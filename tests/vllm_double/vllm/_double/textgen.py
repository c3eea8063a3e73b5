"""What the double's models write: deterministic, and in the form the prompt asks for.

The reply is a function of the model, the prompt and the sampling seed (hashed), so two
runs give the same text and two experts may disagree. It reads the prompt the way a model
would follow the project's instructions (skillmoe_ray/prompts.py, tasks.py):

* the keyword prompt ("List 2-5 keywords separated in comma ... Keywords: <keyword1>, ...")
  gets ``Keywords: a, b, c`` -- three keywords fixed by the question and a fourth that
  varies with the seed, so KeywordExtractor's vote (seen in >= 2 of k samples) keeps three;
* an answer instruction that quotes the sentence to print (``"The answer is (X)"``,
  ``"The answer is N"``, ``"The answer is \\boxed{N}"``, ``"Answer: N"``) gets a short reasoning
  and that sentence with a value: a letter among the question's options, a number, a word;
* an aggregation prompt ("Responses from models:") gets the answer most of the responses gave;
* a plain transcript (ends with "Assistant:") goes on with a "User:" turn after the answer,
  as a base model does, so the project's stop strings are exercised.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter

KEYWORDS = (
    "algebra", "geometry", "number theory", "probability", "statistics", "calculus", "combinatorics",
    "physics", "mechanics", "thermodynamics", "electromagnetism", "quantum mechanics", "chemistry",
    "organic chemistry", "biochemistry", "biology", "genetics", "microbiology", "virology", "anatomy",
    "physiology", "pharmacology", "pathology", "medicine", "psychology", "economics", "finance",
    "business", "law", "property law", "history", "philosophy", "ethics", "computer science",
    "engineering", "political science", "sociology", "astronomy", "geology", "linguistics",
)

_FILLER = (
    "First, I restate what the question asks.", "The key facts are given in the question.",
    "I consider each option in turn.", "Some options can be ruled out quickly.",
    "Checking the remaining candidates against the facts narrows it down.",
    "A quick calculation confirms the estimate.", "This is consistent with the standard result.",
    "I double-check the reasoning for mistakes.", "Nothing contradicts this conclusion.",
)


def _h(*parts: object) -> int:
    data = "\x00".join(str(p) for p in parts).encode("utf-8", "replace")
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "little")


def _question(prompt: str) -> str:
    m = list(re.finditer(r"Question:\s*", prompt))
    return prompt[m[-1].end():] if m else prompt


def _options(text: str) -> list[str]:
    letters = re.findall(r"(?:^|\s)\(?([A-J])[).:]\s", text, flags=re.MULTILINE)
    seen = sorted(set(letters))
    if len(seen) >= 2 and seen == [chr(ord("A") + i) for i in range(len(seen))]:
        return seen
    return ["A", "B", "C", "D"]


def respond(model: str, prompt: str, seed: int | None) -> str:
    """The whole reply (before max_tokens, stop strings and the context cut it)."""
    plain = prompt.rstrip().endswith("Assistant:")
    q = _question(prompt)
    if "keywords" in prompt.lower() and "separated in comma" in prompt:
        k = _h("kw", q)
        fixed = [KEYWORDS[(k >> (8 * i)) % len(KEYWORDS)] for i in range(3)]
        extra = KEYWORDS[_h("kw", q, seed) % len(KEYWORDS)]
        words = list(dict.fromkeys(fixed + [extra]))
        text = "Keywords: " + ", ".join(words)
    else:
        text = _answer(model, prompt, q, seed)
    if plain:
        text += "\n\nUser: Thank you. Can you explain it again?"
    return text


def _answer(model: str, prompt: str, q: str, seed: int | None) -> str:
    quoted = re.findall(r'"([^"]*\b[XN]\b[^"]*)"', prompt)
    template = quoted[-1] if quoted else "The answer is X"
    k = _h(model, q, seed)
    if "Responses from models:" in prompt:
        given = re.findall(r"answer is \(?([A-J])\)?", prompt[:prompt.rfind("Question:")])
        if given:
            value = Counter(given).most_common(1)[0][0]
            return f"Most responses agree, and the reasoning holds up. {_fill(template, value)}"
    if "(X)" in template:
        opts = _options(q)
        value = opts[k % len(opts)]
    elif "N" in template.split() or "{N}" in template or template.endswith("N"):
        value = str(k % 97 + 3)
    else:
        value = ("yes", "no", "true", "false", "four")[k % 5]
    steps = " ".join(_FILLER[(k >> (4 * i)) % len(_FILLER)] for i in range(2 + k % 5))
    return f"Let me work through this step by step. {steps} {_fill(template, value)}."


def _fill(template: str, value: str) -> str:
    out = re.sub(r"\(X\)", f"({value})", template)
    out = re.sub(r"\{N\}", "{" + value + "}", out)
    return re.sub(r"\b[XN]\b", value, out)
