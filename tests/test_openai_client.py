"""The OpenAI API as standard clients see it: the official `openai` package against the served recorded pool."""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.parse
import urllib.request

import pytest
import yaml
from conftest import deploy
from httpclient import get, leaks, post

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(served_recorded):
    return openai.OpenAI(base_url=f"{served_recorded}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def streaming_app(served_recorded, state_dir, tmp_path_factory):
    """Simulated experts (instant) and an LLM aggregator, ``writer``, that writes each answer for 1.5 s
    (a real clock): streaming shows each word as it is written. ``writer`` is the weakest model, so it
    never answers as an expert. One question is admitted at a time."""
    fast = {"load_fixed_s": 0.0, "out_tokens": 1, "step_fixed_s": 0.001, "step_per_seq_s": 0.0}
    experts = [{"name": f"sim{i}", "engine": "simulated", "model": "sim", "size_gb": 1,
                "engine_args": {**fast, "accuracy": acc}} for i, acc in enumerate((0.8, 0.6, 0.5))]
    experts.append({"name": "writer", "engine": "simulated", "model": "sim", "size_gb": 1, "engine_args": {
        **fast, "accuracy": 0.05, "clock": "real", "out_tokens": 30, "step_fixed_s": 0.05}})
    cfg = {"name": "streaming", "pool": {"experts": experts}, "skills": {"extractor": "embedding"},
           "routing": {"strategy": "fixed", "k": 3}, "aggregation": {"mode": "llm", "aggregator": "writer"},
           "serving": {"workers": 1, "cpus_per_worker": 0.25, "tasks": ["GPQA"], "batch_window_s": 0.01,
                       "max_pending": 1}}
    path = tmp_path_factory.mktemp("streaming") / "streaming.yaml"
    path.write_text(yaml.safe_dump(cfg))
    deploy(path, "streaming", state_dir)
    yield served_recorded + "/streaming"
    from ray import serve

    serve.delete("streaming")


def gpqa(i: int) -> str:
    from skillmoe_ray.tasks.catalogue import load_questions

    return load_questions("GPQA", "test")[i].text


@pytest.fixture(scope="module")
def questions(recorded_runtime):
    from skillmoe_ray.tasks.catalogue import get_task

    return [q.text for q in recorded_runtime.questions(get_task("MMLU_Pro"), "test")[20:40]]


def test_models_list_the_pool_and_every_expert(client, recorded_runtime):
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "skillmoe" and set(ids[1:]) == set(recorded_runtime.expert_names)
    assert client.models.retrieve("skillmoe").id == "skillmoe"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-17")
    assert e.value.body["code"] == "model_not_found"


def test_chat_with_string_and_part_content_and_system_messages(client, questions):
    q = questions[0]
    plain = client.chat.completions.create(model="skillmoe", messages=[{"role": "user", "content": q}])
    parts = client.chat.completions.create(model="skillmoe", messages=[
        {"role": "system", "content": "You are a careful expert."},
        {"role": "user", "content": [{"type": "text", "text": q}]}], extra_body={"task": "MMLU_Pro"})
    assert plain.choices[0].message.content == parts.choices[0].message.content
    assert plain.choices[0].finish_reason == "stop" and plain.object == "chat.completion"
    extra = plain.model_extra["skillmoe"]
    assert extra["task"] == "MMLU_Pro" and len(extra["experts"]) == 3
    # text parts are joined; another part type is refused, naming it
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="skillmoe", messages=[{"role": "user", "content": [
            {"type": "text", "text": q}, {"type": "image_url", "image_url": {"url": "data:,x"}}]}])
    assert "image_url" in e.value.body["message"] and not leaks(e.value.body)


def test_usage_counts_add_up_and_match_the_solve_endpoint(client, served_recorded, questions):
    q = questions[1]
    r = client.chat.completions.create(model="skillmoe", messages=[{"role": "user", "content": q}])
    u = r.usage
    assert u.prompt_tokens > 0 and u.completion_tokens > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    status, solved = post(f"{served_recorded}/v1/solve", {"question": q})
    assert status == 200 and solved["usage"] == u.model_dump(include={"prompt_tokens", "completion_tokens",
                                                                      "total_tokens"})
    # one expert asked alone costs less than three
    one = client.chat.completions.create(model=solved["experts"][0], messages=[{"role": "user", "content": q}])
    assert 0 < one.usage.total_tokens < u.total_tokens


def test_streaming_with_and_without_usage(client, questions):
    q = questions[2]
    whole = client.chat.completions.create(model="skillmoe", messages=[{"role": "user", "content": q}])
    for include_usage in (False, True):
        kw = {"stream_options": {"include_usage": True}} if include_usage else {}
        chunks = list(client.chat.completions.create(model="skillmoe", stream=True,
                                                     messages=[{"role": "user", "content": q}], **kw))
        assert chunks[0].choices[0].delta.role == "assistant"
        with_choices = [c for c in chunks if c.choices]
        text = "".join(c.choices[0].delta.content or "" for c in with_choices)
        assert text == whole.choices[0].message.content
        assert with_choices[-1].choices[0].finish_reason == "stop"
        assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
        assert len({c.id for c in chunks}) == 1 and chunks[0].object == "chat.completion.chunk"
        if include_usage:
            assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens
        else:
            assert all(c.usage is None for c in chunks)


def test_one_expert_streamed_comes_in_one_piece_and_a_failure_ends_the_stream_with_an_error(client, questions):
    q = questions[5]
    whole = client.chat.completions.create(model="skillmoe", messages=[{"role": "user", "content": q}])
    expert = whole.model_extra["skillmoe"]["experts"][0]
    alone = client.chat.completions.create(model=expert, messages=[{"role": "user", "content": q}])
    chunks = list(client.chat.completions.create(model=expert, stream=True, messages=[{"role": "user", "content": q}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == alone.choices[0].message.content
    assert chunks[-1].model_extra["skillmoe"]["aggregator"] == expert
    # a question the recordings do not have: OpenAI's error event in the stream (the client raises it)
    with pytest.raises(openai.APIError) as e:
        list(client.chat.completions.create(model="skillmoe", stream=True, messages=[
            {"role": "user", "content": "What is the airspeed of an unladen swallow?"}]))
    assert "2,450 MMLU_Pro questions" in e.value.message and not leaks(e.value.message)


def test_out_of_range_parameters_are_refused_in_openais_error_shape(client, questions):
    msgs = [{"role": "user", "content": questions[3]}]
    for kw, param in (({"temperature": 50}, "temperature"), ({"top_p": 3}, "top_p"), ({"top_p": 0}, "top_p"),
                      ({"max_tokens": -5}, "max_tokens"), ({"n": 0}, "n"), ({"n": 2}, "n")):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="skillmoe", messages=msgs, **kw)
        err = e.value.body
        assert set(err) >= {"message", "type", "param", "code"}, err
        assert err["param"] == param and param in err["message"] and err["type"] == "invalid_request_error"
    # in range: honoured, and the answer still comes
    ok = client.chat.completions.create(model="skillmoe", messages=msgs, temperature=0, top_p=0.5, max_tokens=64)
    assert ok.choices[0].message.content


def test_one_expert_by_model_id(client, served_recorded, questions):
    q = questions[4]
    status, solved = post(f"{served_recorded}/v1/solve", {"question": q})
    expert = solved["experts"][0]
    r = client.chat.completions.create(model=expert, messages=[{"role": "user", "content": q}])
    extra = r.model_extra["skillmoe"]
    assert r.model == expert and extra["experts"] == [expert] and extra["aggregator"] == expert
    assert extra["skills"] == []  # asked by name: no recruitment
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-expert", messages=[{"role": "user", "content": q}])


def _raw(url: str, body: bytes, method: str = "POST") -> tuple[int, dict, dict]:
    req = urllib.request.Request(url, data=body if method == "POST" else None, method=method,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), dict(e.headers)


def test_odd_inputs_get_clear_errors_that_leak_nothing(served_recorded):
    lone = b'{"question": "what is \\ud800?"}'
    status, body, headers = _raw(f"{served_recorded}/v1/solve", lone)
    assert status == 400 and "Unicode" in body["error"]["message"] and headers.get("x-request-id")
    cases = [
        (f"{served_recorded}/v1/solve", b'{"question": "What is the airspeed of an unladen swallow?"}', "POST", 422),
        (f"{served_recorded}/v1/nope", b"{}", "POST", 404),
        (f"{served_recorded}/v1/solve", b"", "GET", 405),
        (f"{served_recorded}/v1/chat/completions", b'{"messages": []}', "POST", 422),
    ]
    for url, data, method, want in cases:
        status, body, headers = _raw(url, data, method)
        assert status == want, (url, status, body)
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert not leaks(body), body
        assert headers.get("x-request-id")
    # the recorded pool's unknown question says what it replays and how to serve anything
    status, body, _ = _raw(cases[0][0], cases[0][1])
    assert "2,450 MMLU_Pro questions" in body["error"]["message"] and "local-cpu.yaml" in body["error"]["message"]


def test_streaming_sends_the_aggregators_words_as_it_writes_them(streaming_app):
    client = openai.OpenAI(base_url=f"{streaming_app}/v1", api_key="unused", max_retries=0, timeout=60)
    msgs = [{"role": "user", "content": gpqa(0)}]
    whole = client.chat.completions.create(model="skillmoe", messages=msgs)
    t0 = time.perf_counter()
    chunks, arrivals = [], []
    for chunk in client.chat.completions.create(model="skillmoe", messages=msgs, stream=True,
                                                stream_options={"include_usage": True}):
        chunks.append(chunk)
        arrivals.append(time.perf_counter() - t0)
    content = [(t, c.choices[0].delta.content) for t, c in zip(arrivals, chunks) if c.choices and c.choices[0].delta.content]
    assert len(content) > 3, content
    # the first words arrive while the aggregator is still writing (1.5 s), not all at the end
    assert content[-1][0] - content[0][0] > 0.8, content
    assert "".join(text for _, text in content) == whole.choices[0].message.content
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "stop"
    extra = finish[0].model_extra["skillmoe"]
    assert extra["aggregator"] == "writer" and extra["answer"] == whole.model_extra["skillmoe"]["answer"]
    assert "writer" not in extra["experts"] and len(extra["experts"]) == 3
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage == whole.usage and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def _open_stream(url: str, question: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("POST", f"{u.path}/v1/chat/completions", body=json.dumps(
        {"model": "skillmoe", "stream": True, "messages": [{"role": "user", "content": question}]}),
        headers={"content-type": "application/json"})
    return conn, conn.getresponse()


def test_stages_are_reported_before_the_first_word(streaming_app):
    conn, resp = _open_stream(streaming_app, gpqa(1))
    try:
        assert resp.status == 200 and resp.getheader("content-type").startswith("text/event-stream")
        lines = [line.decode().rstrip("\n") for line in resp if line.strip()]
    finally:
        conn.close()
    first_word = next(i for i, line in enumerate(lines) if '"content": "' in line and '"content": ""' not in line)
    before = [line for line in lines[:first_word] if line.startswith(":")]
    assert before[0] == ": stage queued" and ": stage experts 3/3" in before and before[-1] == ": stage aggregating"
    assert lines[-1] == "data: [DONE]"


def test_a_client_that_disconnects_mid_stream_frees_its_place(streaming_app):
    """The one place there is, taken by a stream dropped after its first word, comes back at once, and the
    aggregator stops writing the abandoned answer: the next question is answered as fast as if there had
    been none (1.5 s of writing), not after the 1.3 s the abandoned answer had left."""
    conn, resp = _open_stream(streaming_app, gpqa(2))
    for line in resp:
        if b'"content": "' in line and b'"content": ""' not in line:
            break
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    dropped = time.perf_counter()
    while True:  # as a client would: retry while the server says it is full
        status, r = post(f"{streaming_app}/v1/solve", {"question": gpqa(3), "task": "GPQA"})
        if status != 503 or time.perf_counter() - dropped > 15:
            break
        time.sleep(0.05)
    waited = time.perf_counter() - dropped
    assert status == 200 and r["aggregator"] == "writer"
    assert waited < 2.4, (waited, r["timings"])
    assert get(f"{streaming_app}/v1/pool")[1]["pending"] == 0


def test_an_aggregator_lost_mid_stream_is_followed_by_the_vote(streaming_app):
    """Runs last on this deployment (its aggregator is killed for good): the words already sent stay, a note
    says the aggregator stopped, the experts' vote follows, and the finish chunk names the fallback."""
    import ray

    from skillmoe_ray.serving.ingress import FALLBACK_NOTE

    agg = get(f"{streaming_app}/v1/pool")[1]["aggregators"]["GPQA"]
    client = openai.OpenAI(base_url=f"{streaming_app}/v1", api_key="unused", max_retries=0, timeout=60)
    chunks = []
    for chunk in client.chat.completions.create(model="skillmoe", stream=True,
                                                messages=[{"role": "user", "content": gpqa(5)}]):
        chunks.append(chunk)
        if sum(bool(c.choices and c.choices[0].delta.content) for c in chunks) == 1:
            ray.kill(ray.get_actor(agg["actor_name"], namespace=agg["namespace"]), no_restart=True)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    extra = chunks[-1].model_extra["skillmoe"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert extra["aggregator"] == "vote (fallback: aggregator writer failed)" and extra["answer"] in "ABCD"
    written, vote = text.split(FALLBACK_NOTE.format(who=extra["aggregator"]))
    assert written.strip() and f"The answer is ({extra['answer']})" in vote
