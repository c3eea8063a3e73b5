"""The transformers engine on CPU with a real packaged model (runs wherever torch runs)."""

import importlib.util

import pytest

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
