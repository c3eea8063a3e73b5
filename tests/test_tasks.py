import json

import pytest

from skillmoe_ray.config import load_config
from skillmoe_ray.errors import ConfigError, DataError
from skillmoe_ray.tasks.catalogue import TASKS, get_task, load_questions

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


# ---------------------------------------------------------------- tasks defined in deployment files


def deployment(tmp_path, tasks_yaml: str, extra: str = "", name: str = "d.yaml"):
    p = tmp_path / name
    p.write_text("pool: {recorded_dir: 'builtin:mmlu_pro'}\n" + tasks_yaml + extra)
    return p


def write_data(tmp_path, name="val.jsonl", rows=None):
    rows = rows if rows is not None else [{"question": "1+1?", "gold": 2}, {"question": "2+3?", "gold": "5"}]
    text = "\n".join(json.dumps(r) for r in rows) + "\n" if name.endswith(".jsonl") else json.dumps(rows)
    (tmp_path / name).write_text(text)
    return name


def test_builtins_are_definitions_of_the_same_kind():
    from skillmoe_ray.config import BUILTIN_TASKS_FILE, builtin_task_specs

    specs = {s.name: s for s in builtin_task_specs()}
    assert list(specs) == ["MMLU_Pro", "GPQA", "MedMCQA", "AIME24"] == list(TASKS)
    assert specs["MMLU_Pro"].answer.type == "choice" and specs["MMLU_Pro"].answer.options == 10
    assert specs["AIME24"].answer.type == "boxed"
    assert all(s.source == BUILTIN_TASKS_FILE for s in specs.values())
    assert get_task("mmlu-pro").data_path("test").name == "MMLU_Pro_test.json"


def test_a_defined_task_is_in_the_catalogue_and_served_by_default(tmp_path):
    from skillmoe_ray.tasks.catalogue import Catalogue, NumberFormat

    write_data(tmp_path)
    cfg = load_config(deployment(tmp_path, """tasks:
  - name: sums
    aliases: [Addition]
    data: {validation: val.jsonl}
    answer: {type: number, field: Total, tolerance: 0.5}
    instruction: 'End with "Total: N".'
"""))
    assert cfg.serving.tasks == ["sums"]  # the file's own tasks unless serving.tasks says otherwise
    cat = Catalogue.from_config(cfg)
    task = cat.get("addition")  # aliases and names match case-insensitively
    assert task.name == "sums" and task.answer == NumberFormat("Total", 0.5, 0.0)
    assert task.instruction() == 'End with "Total: N".' and task.splits() == ["train"]
    assert cat.get("GPQA").num_choices == 4  # the built-ins are there too
    qs = cat.questions("sums", "train")
    assert [(q.qid, q.gold) for q in qs] == [("sums/train/0", "2"), ("sums/train/1", "5")]
    with pytest.raises(DataError, match=r"d.yaml: task sums has no test data \(set data.test"):
        cat.questions(task, "test")
    with pytest.raises(DataError, match="unknown task 'nope'; known tasks: MMLU_Pro, GPQA, MedMCQA, AIME24, sums"):
        cat.get("nope")
    # the catalogue is plain data: it travels to replicas and actors as it is
    import pickle

    assert pickle.loads(pickle.dumps(cat)) == cat


def test_task_files_are_included_with_paths_relative_to_them(tmp_path):
    sub = tmp_path / "mytask"
    sub.mkdir()
    write_data(sub, "v.json", [{"question": "Capital of France?", "gold_answer": "Paris"}])
    (sub / "task.yaml").write_text("tasks:\n  - {name: capitals, data: {validation: v.json}, answer: exact}\n")
    cfg = load_config(deployment(tmp_path, "tasks: [mytask/task.yaml]\n", "serving: {tasks: [capitals, GPQA]}\n"))
    from skillmoe_ray.tasks.catalogue import Catalogue

    task = Catalogue.from_config(cfg).get("capitals")
    assert task.answer_format == "exact" and task.data_path("train") == sub / "v.json"
    assert cfg.serving.tasks == ["capitals", "GPQA"]


@pytest.mark.parametrize(
    "tasks_yaml,extra,where,message",
    [
        ("tasks:\n  - {name: t, data: {validation: val.jsonl}, answer: {type: choice, options: 12}}\n", "",
         "d.yaml: tasks.0.answer.choice.options", "less than or equal to 10"),
        ("tasks:\n  - {name: t, data: {validation: val.jsonl}, answer: {type: multiple}}\n", "",
         "d.yaml: tasks.0.answer", "does not match any of the expected tags"),
        ("tasks:\n  - {name: t, data: {validation: val.jsonl}, answer: {type: number, tolerence: 1}}\n", "",
         "d.yaml: tasks.0.answer.number.tolerence", "unknown field"),
        ("tasks:\n  - {name: t, data: {validation: val.jsonl}, answer: {type: regex, pattern: 'a(b)(c)'},"
         " instruction: x}\n", "", "d.yaml: tasks.0.answer.regex.pattern", "exactly one capture group (the answer), has 2"),
        ("tasks:\n  - {name: t, data: {validation: val.jsonl}, answer: {type: regex, pattern: 'a(b'},"
         " instruction: x}\n", "", "d.yaml: tasks.0.answer.regex.pattern", "not a valid regular expression"),
        ("tasks:\n  - {name: t, data: {validation: val.jsonl}, answer: {type: regex, pattern: 'A: (.+)'}}\n", "",
         "d.yaml: tasks.0", "a regex answer needs 'instruction'"),
        ("tasks:\n  - {name: t, answer: boxed}\n", "", "d.yaml: tasks.0.data", "required field is missing"),
        ("tasks:\n  - {name: 'my task', data: {validation: val.jsonl}, answer: boxed}\n", "", "d.yaml: tasks.0.name",
         "a task name is letters"),
        ("tasks:\n  - {name: t, data: {validation: missing.jsonl}, answer: boxed}\n", "",
         "d.yaml: tasks.0.data.validation", "data file not found"),
        ("tasks:\n  - {name: t, data: {validation: val.jsonl, test: gone.json}, answer: boxed}\n", "",
         "d.yaml: tasks.0.data.test", "data file not found"),
        ("tasks:\n  - {name: gpqa, data: {validation: val.jsonl}, answer: boxed}\n", "",
         "d.yaml: tasks.0.name", "names the built-in task GPQA"),
        ("tasks:\n  - {name: t, aliases: [aime], data: {validation: val.jsonl}, answer: boxed}\n", "",
         "d.yaml: tasks.0.aliases", "names the built-in task AIME24"),
        ("tasks:\n  - {name: t, data: {validation: val.jsonl}, answer: boxed}\n"
         "  - {name: T, data: {validation: val.jsonl}, answer: boxed}\n", "",
         "d.yaml: tasks.1.name", "already the name of task t"),
        ("tasks:\n  - {name: t, data: {validation: val.jsonl}, answer: boxed}\n", "serving: {tasks: [t, nope]}\n",
         "d.yaml: serving.tasks.1", "unknown task 'nope' (defined: MMLU_Pro, GPQA, MedMCQA, AIME24, t)"),
        ("tasks: {name: t}\n", "", "d.yaml: tasks", "expected a list"),
        ("tasks: [nothere.yaml]\n", "", "d.yaml: tasks.0", "file of task definitions not found"),
    ],
)
def test_task_definition_errors_name_file_and_field(tmp_path, tasks_yaml, extra, where, message):
    write_data(tmp_path)
    with pytest.raises(ConfigError) as e:
        load_config(deployment(tmp_path, tasks_yaml, extra))
    assert where in str(e.value) and message in str(e.value), str(e.value)


def test_errors_in_an_included_file_name_that_file(tmp_path):
    write_data(tmp_path)
    (tmp_path / "task.yaml").write_text("tasks:\n  - {name: t, data: {validation: val.jsonl}, answer: {type: number,"
                                        " tolerance: -1}}\n")
    with pytest.raises(ConfigError, match=r"task.yaml: tasks.0.answer.number.tolerance: Input should be greater"):
        load_config(deployment(tmp_path, "tasks: [task.yaml]\n"))
    (tmp_path / "task.yaml").write_text("- not a mapping\n")
    with pytest.raises(ConfigError, match=r"task.yaml: expected a mapping with 'tasks'"):
        load_config(deployment(tmp_path, "tasks: [task.yaml]\n"))


@pytest.mark.parametrize(
    "name,content,answer,message",
    [
        ("v.jsonl", '{"question": "a", "gold": 1}\n{"question": "b", "gold": \n', "number",
         r"v.jsonl:2: not valid JSON"),
        ("v.jsonl", '{"question": "a", "gold": 1}\n\n["x"]\n', "number", r"v.jsonl:3: expected an object"),
        ("v.jsonl", '{"question": "", "gold": 1}\n', "number", r"v.jsonl:1: field 'question' must be a non-empty"),
        ("v.jsonl", '{"question": "a", "gold": "many"}\n', "number",
         r"v.jsonl:1: gold answer 'many' must be a number \(task t, answer type number\)"),
        ("v.json", '[{"question": "a", "gold": "E"}]', "{type: choice, options: 4}",
         r"v.json: item 0: gold answer 'E' must be one of the letters A-D"),
        ("v.json", '[{"question": "a", "gold": [1]}]', "exact", r"v.json: item 0: field 'gold' must be a string"),
        ("v.json", '[{"question": "a", "gold": "x", "gold_answer": "y"}]', "exact",
         r"v.json: item 0: fields 'gold' and 'gold_answer' disagree"),
        ("v.json", '[{"question": "a", "gold": "x", "category": 3}]', "exact",
         r"v.json: item 0: field 'category' must be a string"),
        ("v.json", '{"question": "a"}', "exact", r"v.json: expected a JSON list of questions"),
        ("v.json", b"\xff\xfe", "exact", r"v.json: not a UTF-8 text file"),
    ],
)
def test_data_file_errors_name_file_and_line_or_item(tmp_path, name, content, answer, message):
    from skillmoe_ray.tasks.catalogue import Catalogue

    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    cfg = load_config(deployment(tmp_path, f"tasks:\n  - {{name: t, data: {{validation: {name}}}, answer: {answer}}}\n"))
    with pytest.raises(DataError, match=message):
        Catalogue.from_config(cfg).questions("t", "train")


def test_data_files_accept_both_gold_fields_and_ignore_extra_ones(tmp_path):
    from skillmoe_ray.tasks.catalogue import Catalogue

    write_data(tmp_path, "v.json", [{"question": "a", "gold_answer": 3, "id": "x1"},
                                    {"question": "b", "gold": "4", "gold_answer": "4", "category": "c"},
                                    {"question": "c"}])
    cfg = load_config(deployment(tmp_path, "tasks:\n  - {name: t, data: {validation: v.json}, answer: number}\n"))
    qs = Catalogue.from_config(cfg).questions("t", "train")
    assert [(q.gold, q.category) for q in qs] == [("3", None), ("4", "c"), (None, None)]  # a gold may be missing


def test_splits_parse():
    from skillmoe_ray.tasks.catalogue import splits_of

    assert splits_of("validation, test") == ["train", "test"] and splits_of("train,train") == ["train"]
    with pytest.raises(DataError, match="unknown split 'dev'"):
        splits_of("dev")
