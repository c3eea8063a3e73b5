import json

import pytest

from skillmoe_ray.errors import DataError
from skillmoe_ray.tasks import TASKS, get_task, load_questions

SIZES = {"AIME24": (354, 30), "GPQA": (249, 198), "MMLU_Pro": (350, 2100), "MedMCQA": (504, 4183)}


@pytest.mark.parametrize("name", list(TASKS))
def test_builtin_data_sets_load(name):
    train, test = load_questions(name, "train"), load_questions(name, "test")
    assert (len(train), len(test)) == SIZES[name]
    task = get_task(name)
    for q in train[:20] + test[:20]:
        assert q.text and q.gold
        if task.answer_format == "choice":
            assert q.gold in "ABCDEFGHIJ"[: task.num_choices]
    assert test[5].qid == f"{name}/test/5"


def test_mmlu_pro_has_categories():
    assert {q.category for q in load_questions("MMLU_Pro", "train")} >= {"law", "math", "history"}


def test_unknown_task_names_the_known_ones():
    with pytest.raises(DataError, match="MMLU_Pro"):
        get_task("MMLU")


def test_malformed_data_file_names_file_and_item(tmp_path):
    (tmp_path / "GPQA_train.json").write_text(json.dumps([{"question": "q", "gold_answer": "A"}, {"gold_answer": "B"}]))
    with pytest.raises(DataError, match=r"GPQA_train.json: item 1: field 'question'"):
        load_questions("GPQA", "train", tmp_path)
    (tmp_path / "GPQA_test.json").write_text("{not json")
    with pytest.raises(DataError, match="GPQA_test.json: not valid JSON"):
        load_questions("GPQA", "test", tmp_path)
    with pytest.raises(DataError, match="not found"):
        load_questions("AIME24", "test", tmp_path)
