import gzip
import json

import pytest

from skillmoe_ray.engines.base import GenerationRequest, SamplingSettings
from skillmoe_ray.engines.recorded import RecordedEngine, builtin_recorded_dir, read_recording
from skillmoe_ray.errors import DataError, EngineError
from skillmoe_ray.tasks.catalogue import load_questions

S = SamplingSettings()


def test_replays_real_recordings_by_key_and_by_text():
    path = builtin_recorded_dir() / "gemma-7b.jsonl.gz"
    engine = RecordedEngine("gemma-7b", path)
    assert engine.task.name == "MMLU_Pro"
    first = json.loads(gzip.open(path, "rt").readline())
    q = load_questions("MMLU_Pro", first["split"])[first["index"]]
    by_key = engine.generate([GenerationRequest.user("p", key=q.qid)], S)
    by_text = engine.generate([GenerationRequest.user("p", question=q.text)], S)
    assert by_key == by_text == [first["response"]]
    assert engine.loaded and engine.resident_bytes() > 500_000
    engine.release()
    assert not engine.loaded and engine.resident_bytes() == 0


def test_unknown_question_and_other_roles_are_clear_errors():
    engine = RecordedEngine("gemma-7b", builtin_recorded_dir() / "gemma-7b.jsonl.gz")
    with pytest.raises(EngineError, match="no recording"):
        engine.generate([GenerationRequest.user("p", question="What is the capital of Mars?")], S)
    with pytest.raises(EngineError, match="aggregator"):
        engine.generate([GenerationRequest.user("p", key="MMLU_Pro/test/0", role="aggregator")], S)


def test_malformed_recordings_name_file_and_line(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"split": "train", "index": 0, "pred": "A", "response": "r"}\n{"split": "dev", "index": 1}\n')
    with pytest.raises(DataError, match=r"m.jsonl:2: field 'split'"):
        read_recording(p)
    p.write_text('{"split": "train", "index": 0, "response": "r"}\nnot json\n')
    with pytest.raises(DataError, match=r"m.jsonl:2: not valid JSON"):
        read_recording(p)
    bad = tmp_path / "x.jsonl.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(DataError, match="cannot read"):
        read_recording(bad)
