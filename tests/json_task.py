"""A small own task whose recorded pool writes its answers as JSON, in every shape that went wrong.

Word problems with integer answers; four "models" answer each question with a JSON
object ``{"reasoning": ..., "answer": ...}``, as evaluation harnesses ask for, and
each model has a habit a reader must survive:

* ``tidy``: a clean object; the answer a number or a string holding it ("$288").
* ``rechecker``: text after the closing brace recomputes (and often changes) the answer.
* ``truncated``: a third of its responses are cut off mid-reasoning by the token limit.
* ``hedger``: some answers are "Cannot be determined" (its reasoning has numbers), others
  a calculation whose first number is not the answer; its responses end with ``</s></s>``.

``write_task`` writes the data, the recordings and a deployment file, and returns what
each response *means* (the answer field's number, or None): the reading a person would
make, written here without the project's reader, to check the project against.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

EXPERTS = ("tidy", "rechecker", "truncated", "hedger")
N_VALIDATION, N_TEST = 30, 20


def _problems(n: int, rng: random.Random) -> list[tuple[str, int, int, int]]:
    out = []
    for _ in range(n):
        count, price, extra = rng.randint(3, 40), rng.randint(2, 25), rng.randint(1, 9)
        out.append((f"A shop sells {count} boxes at ${price} each and charges ${extra} for delivery. "
                    "How many dollars does the order cost?", count, price, extra))
    return out


def _response(expert: str, count: int, price: int, extra: int, right: bool, i: int) -> tuple[str, int | None]:
    """(the response text, the number its answer field holds or None)."""
    gold = count * price + extra
    answer = gold if right else gold + (1 + i % 7)
    reasoning = f"{count} boxes at ${price} is {count * price}; plus ${extra} delivery."
    if expert == "tidy":
        value: object = answer if i % 2 else f"${answer:,}"
        return json.dumps({"reasoning": reasoning, "answer": value}), answer
    if expert == "rechecker":
        body = json.dumps({"reasoning": reasoning, "answer": answer})
        # the recomputation after the object states another number: the object's answer stands
        return body + f"\nWait, let me recompute: {count} * {price} + {extra} = {answer + 11}", answer
    if expert == "truncated":
        if i % 3 == 0:  # cut off by the token limit, mid-reasoning: no answer
            return '{"reasoning": "' + reasoning[: 20 + i % 10], None
        return json.dumps({"reasoning": reasoning, "answer": f"{count} * ${price}.00 + ${extra}.00 = "
                                                               f"${answer}.00"}), answer
    if expert == "hedger":
        if i % 4 == 0:
            return json.dumps({"reasoning": reasoning, "answer": "Cannot be determined"}) + "</s></s>", None
        return json.dumps({"reasoning": reasoning, "answer": f"{count} * {price} + {extra} = {answer}"}) + "</s></s>", answer
    raise ValueError(expert)


#: how often each expert is right, when it answers
SKILL = {"tidy": 0.8, "rechecker": 0.6, "truncated": 0.7, "hedger": 0.5}


def write_task(folder: Path, seed: int = 0) -> dict[str, dict[str, list[int | None]]]:
    """Data, recordings (in a folder named unlike the task, without a record.json) and a deployment file
    ``deployment.yaml`` under ``folder``; returns expert -> split -> the answer each response means."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    splits = {"train": _problems(N_VALIDATION, rng), "test": _problems(N_TEST, rng)}
    for split, problems in splits.items():
        name = "validation" if split == "train" else "test"
        with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for q, count, price, extra in problems:
                fh.write(json.dumps({"question": q, "gold": count * price + extra}) + "\n")
    recordings = folder / "outputs"
    recordings.mkdir(exist_ok=True)
    meant: dict[str, dict[str, list[int | None]]] = {}
    for expert in EXPERTS:
        meant[expert] = {}
        with gzip.open(recordings / f"{expert}.jsonl.gz", "wt", encoding="utf-8") as fh:
            for split, problems in splits.items():
                meant[expert][split] = []
                for i, (_, count, price, extra) in enumerate(problems):
                    text, value = _response(expert, count, price, extra, rng.random() < SKILL[expert], i)
                    meant[expert][split].append(value)
                    fh.write(json.dumps({"split": split, "index": i, "response": text}) + "\n")
    (folder / "deployment.yaml").write_text(DEPLOYMENT, encoding="utf-8")
    return meant


DEPLOYMENT = """\
name: json-task
tasks:
  - name: shop_json
    aliases: [SHOP_JSON, shop]     # an alias in other case is the same name, accepted
    data: {validation: validation.jsonl, test: test.jsonl}
    answer: {type: number}         # responses written as JSON are read from "answer"
pool:
  recorded_dir: outputs            # not named after the task: the task is the one this file serves
skills: {extractor: embedding, vocabulary: builtin, top_n: 3}
aggregation: {mode: vote}
routing: {strategy: paper, k: 3}
state_dir: state                   # relative to this file
"""
