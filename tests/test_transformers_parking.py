"""The transformers engine's parking code (one flat host buffer per model, one copy per load) on a tiny random
Llama built in the test: no download, and on a CPU the ``host_copy`` engine arg runs the GPU path's code."""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from skillmoe_ray.engines.transformers_engine import ALIGN, HostWeights, TransformersEngine  # noqa: E402


def tiny_llama(tied: bool):
    conf = transformers.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, vocab_size=211, tie_word_embeddings=tied)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(conf).to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval()


@pytest.mark.parametrize("tied", [False, True])
def test_park_and_load_through_one_flat_buffer_keep_the_model_exact(tied):
    model = tiny_llama(tied)
    ids = torch.randint(0, 211, (2, 9))
    with torch.inference_mode():
        want = model(ids).logits
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    e = TransformersEngine("tiny", "unused", {"device": "cpu", "host_copy": True})
    e.adopt(model)
    weights = e._weights
    assert isinstance(weights, HostWeights) and not weights.pinned
    assert size <= weights.nbytes < size + ALIGN * len(weights.params)
    assert all(off % ALIGN == 0 for _, off in weights.params)
    if tied:
        assert model.lm_head.weight is model.model.embed_tokens.weight
    buf = weights.device_buffer.untyped_storage().data_ptr()
    assert all(p.untyped_storage().data_ptr() == buf for p in model.parameters())  # views of the device buffer
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, want)
    for _ in range(2):
        e.park()
        assert e.parked and e.resident_bytes() == 0 and e.host_bytes() == size
        assert weights.device_buffer is None
        host = weights.buffer.untyped_storage().data_ptr()
        assert all(p.untyped_storage().data_ptr() == host for p in model.parameters())
        e.load()
        assert e.loaded and e.resident_bytes() == size
        with torch.inference_mode():
            assert torch.equal(model(ids).logits, want)
    e.release()
    assert e.model is None and e._weights is None and e.resident_bytes() == 0


def test_cpu_without_host_copy_parks_in_place():
    model = tiny_llama(False)
    e = TransformersEngine("tiny", "unused", {"device": "cpu"})
    e.adopt(model)
    assert e._weights is None and e.loaded
    e.park()
    assert e.parked and e.host_bytes() > 0
    e.load()
    e.release()
