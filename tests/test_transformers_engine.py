"""The transformers engine on CPU with a real packaged model (runs wherever torch runs)."""

import importlib.util

import pytest
from conftest import stream_beside_generate

from skillmoe_ray.config import ExpertConfig
from skillmoe_ray.engines.base import GenerationRequest, SamplingSettings
from skillmoe_ray.engines.registry import create_engine
from skillmoe_ray.engines.transformers_engine import TransformersEngine

_missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bool(_missing), reason=f"preparing packaged models needs {', '.join(_missing)}")]

GREEDY = SamplingSettings(temperature=0.0, max_tokens=16, seed=0)


def test_packaged_model_answers_in_batches_and_parks():
    e = create_engine(ExpertConfig(name="smol", engine="transformers", model="packaged:smollm2-135m",
                                   engine_args={"threads": 1}))
    assert isinstance(e, TransformersEngine)
    e.load()
    try:
        capital = GenerationRequest.user("What is the capital of France? Answer in one short sentence.")
        other = GenerationRequest.user("Name one primary colour. One word.")
        out = e.generate([capital, other], GREEDY)
        assert "paris" in out[0].lower() and out[1].strip()
        assert e.generate([capital], GREEDY) == out[:1]  # left padding: batching does not change greedy output
        size = e.resident_bytes()
        assert size > 200e6  # 135M parameters in bf16
        e.park()  # CPU: the weights stay in host memory, ready to come back at once
        assert not e.loaded and e.parked and e.resident_bytes() == 0 and e.host_bytes() == size
        e.load()
        assert e.generate([capital], GREEDY) == out[:1]
    finally:
        e.release()
    assert e.resident_bytes() == 0 and e.host_bytes() == 0 and not e.parked


@pytest.mark.parametrize("name,args", [("smollm2-135m", {}), ("gemma3-270m", {"prompt_format": "plain"})])
def test_stream_yields_the_text_generate_gives_as_it_is_generated(name, args):
    """Token by token from generate's thread: joined, generate's text (a plain transcript cut at its stop
    string as generate cuts it); usage counted; closing it early stops the generation."""
    import time

    e = create_engine(ExpertConfig(name=name, engine="transformers", model=f"packaged:{name}",
                                   engine_args={"threads": 1, **args}))
    e.load()
    try:
        req = GenerationRequest.user("What is the capital of France? Answer, then ask me another question.")
        sampling = SamplingSettings(temperature=0.7, max_tokens=32, seed=3)
        whole, _, _, _ = stream_beside_generate(e, req, sampling)
        prompt, completion = e.usage([req], [whole])[0]
        assert prompt > 0 and 0 < completion <= 32
        stream = e.stream(req, SamplingSettings(temperature=0.7, max_tokens=200, seed=3))
        next(stream)
        t0 = time.perf_counter()
        stream.close()  # the generating thread stops at its next token
        assert time.perf_counter() - t0 < 2.0
        assert e.generate([req], sampling) == [whole]
    finally:
        e.release()


@pytest.mark.slow
def test_prefetch_reads_the_weights_in_the_background():
    """A prefetched model loads without reading the disk again, and answers as itself."""
    e = create_engine(ExpertConfig(name="smol", engine="transformers", model="packaged:smollm2-135m",
                                   engine_args={"threads": 1}))
    assert e.prefetch() and not e.prefetch()  # one read at a time
    e.load()  # waits for the read, then nothing is left to do on a CPU
    try:
        assert e.loaded and e.resident_bytes() > 200e6
        out = e.generate([GenerationRequest.user("What is the capital of France? Answer in one short sentence.")],
                         GREEDY)
        assert "paris" in out[0].lower()
    finally:
        e.release()


def test_cuda_without_a_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    e = TransformersEngine("x", "packaged:smollm2-135m", {"device": "cuda"})
    from skillmoe_ray.errors import EngineError

    with pytest.raises(EngineError, match="no CUDA device"):
        e.load()
