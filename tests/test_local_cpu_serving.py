"""A question answered end to end by real models through the server: the keyword LLM, the
experts and the aggregator all run on vLLM's CPU build inside the Ray actors.

A trimmed copy of deployments/local-cpu.yaml keeps it to a few minutes on two
cores: two of its models, three validation questions for the profiles, short
generations. Skips (and says why) without vLLM.
"""

import importlib.util
from pathlib import Path

import pytest
import yaml
from conftest import deploy
from httpclient import get, post

ROOT = Path(__file__).resolve().parent.parent
_missing = [m for m in ("vllm", "gguf", "accelerate") if importlib.util.find_spec(m) is None]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(_missing), reason=f"needs {', '.join(_missing)} (the 'cpu' extra)"),
]


def test_real_models_answer_end_to_end(served_recorded, state_dir, tmp_path):
    from ray import serve

    full = yaml.safe_load((ROOT / "deployments" / "local-cpu.yaml").read_text())
    keep = {"smollm2-135m", "qwen2.5-coder-0.5b"}
    cfg = dict(full)
    cfg["name"] = "local-cpu-e2e"
    cfg["pool"] = {"experts": [e for e in full["pool"]["experts"] if e["name"] in keep]}
    cfg["skills"] = {**full["skills"], "keyword_model": "qwen2.5-coder-0.5b", "samples": 3}
    cfg["routing"] = {"strategy": "paper", "k": 2, "usage_floor": 0.0}
    cfg["aggregation"] = {"mode": "llm", "aggregator": "qwen2.5-coder-0.5b", "max_tokens": 48}
    cfg["generation"] = {"temperature": 0.7, "max_tokens": 48}
    cfg["profiling"] = {"max_questions": 3}
    cfg["serving"] = {"workers": 1, "cpus_per_worker": 0.5, "tasks": ["GPQA"], "request_timeout_s": 900}
    path = tmp_path / "local-cpu-e2e.yaml"
    path.write_text(yaml.safe_dump(cfg))

    deploy(path, "cpu", state_dir)
    url = served_recorded + "/cpu"
    try:
        q = "What is 7 * 8? The options are: (A) 54 (B) 56 (C) 58 (D) 64"
        status, r = post(f"{url}/v1/solve", {"question": q, "task": "GPQA"})
        assert status == 200, r
        assert r["aggregator"] == "qwen2.5-coder-0.5b" and r["response"].strip()
        assert len(r["experts"]) == 2 and set(r["experts"]) <= keep
        assert r["skills"], "the keyword LLM found no skills"
        assert all(k in r["timings"] for k in ("skills", "experts", "aggregate"))
        status, pool = get(f"{url}/v1/pool")
        assert status == 200 and pool["aggregators"]["GPQA"]["resident"] is True
        assert pool["aggregators"]["GPQA"]["model"] == "qwen2.5-coder-0.5b"
        print("\nanswer:", r["answer"], "| experts:", r["experts"], "| skills:", r["skills"],
              "| timings:", r["timings"])
        assert r["usage"]["prompt_tokens"] > 0 and r["usage"]["completion_tokens"] > 0
        # the same pool streamed to the official OpenAI client, usage included: the aggregator's answer
        # arrives token by token as vLLM writes it
        import time

        import openai

        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=900)
        t0 = time.perf_counter()
        chunks, arrivals = [], []
        for chunk in client.chat.completions.create(
                model="skillmoe", stream=True, stream_options={"include_usage": True}, extra_body={"task": "GPQA"},
                messages=[{"role": "user", "content": "Which is a prime number? The options are: (A) 21 (B) 27 (C) 29 (D) 33"}]):
            chunks.append(chunk)
            arrivals.append(time.perf_counter() - t0)
        words = [(t, c.choices[0].delta.content) for t, c in zip(arrivals, chunks)
                 if c.choices and c.choices[0].delta.content]
        text = "".join(w for _, w in words)
        assert text.strip() and chunks[0].choices[0].delta.role == "assistant"
        assert chunks[-1].usage.completion_tokens > 0 and chunks[-1].choices == []
        finish = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
        assert finish.model_extra["skillmoe"]["aggregator"] == "qwen2.5-coder-0.5b"
        assert len(words) > 3 and words[-1][0] > words[0][0], words
        print(f"streamed: {len(words)} content deltas, first after {words[0][0]:.2f} s, last after "
              f"{words[-1][0]:.2f} s, whole stream {arrivals[-1]:.2f} s; the aggregator wrote for "
              f"{finish.model_extra['skillmoe']['timings']['aggregate']:.2f} s")
    finally:
        serve.delete("cpu")
