import math

import pytest
from conftest import stream_beside_generate

from skillmoe_ray.config import ExpertConfig
from skillmoe_ray.engines.base import GenerationRequest, SamplingSettings, as_sibling
from skillmoe_ray.engines.registry import create_engine
from skillmoe_ray.engines.simulated import Clock, CostConstants, SimulatedEngine, SimulatedSpec, independent_draws
from skillmoe_ray.execution import group_by_expert
from skillmoe_ray.tasks.catalogue import get_task, load_questions


def test_cost_model_formulas():
    c = CostConstants(load_fixed_s=20, load_gbps=2, step_fixed_s=0.01, step_per_seq_s=0.001, out_tokens=100, max_batch=8)
    assert c.load_s(16) == pytest.approx(28.0)
    assert c.generate_s(0) == 0
    assert c.generate_s(1) == pytest.approx(100 * 0.011)
    assert c.generate_s(4) == pytest.approx(100 * 0.014)
    # batching: 4 prompts in one batch cost far less than 4 single runs
    assert c.generate_s(4) < 4 * c.generate_s(1) / 2
    # past max_batch, continuous batching is throughput-bound: 1000 tokens, 8 sequences at a time
    assert c.generate_s(10) == pytest.approx(10 * 100 / 8 * (0.01 + 8 * 0.001))
    # the KV cache caps concurrency: 1000 tokens of KV hold 2 sequences of 100 + a 400-token prompt
    kv = CostConstants(step_fixed_s=0.01, step_per_seq_s=0.0, out_tokens=100, kv_tokens=1000, prompt_tokens=400)
    assert kv.concurrency(100) == 2 and kv.generate_s(10) == pytest.approx(10 * 100 / 2 * 0.01)
    # tensor parallel divides a step by 1 + (g - 1) * efficiency
    assert c.generate_s(4, tp=4) == pytest.approx(c.generate_s(4) / (1 + 3 * c.tp_efficiency))


def test_lengths_cut_at_the_cap():
    c = CostConstants(out_tokens=1000, cap_tokens=4000)
    longest1, mean = c.lengths(1)
    assert mean == pytest.approx(1000 * (1 - math.exp(-4)))
    assert longest1 == pytest.approx(mean)  # one response: its expected length
    longest, _ = c.lengths(200)
    assert 3500 < longest < 4000  # 200 responses: the longest nearly reaches the cap
    assert c.lengths(200, cap=0)[0] == 1000  # no cap: fixed lengths


def test_virtual_clock_adds_load_once_and_generation_per_batch():
    clock = Clock(virtual=True)
    consts = CostConstants(out_tokens=50)
    e = SimulatedEngine("m", SimulatedSpec(size_gb=8, accuracy=1.0, constants=consts), clock)
    reqs = [GenerationRequest.user("p", key=f"GPQA/test/{i}") for i in range(5)]
    e.generate(reqs, SamplingSettings(max_tokens=4096))
    e.generate(reqs, SamplingSettings(max_tokens=4096))
    assert e.loads == 1
    assert clock.elapsed_s == pytest.approx(consts.load_s(8) + 2 * consts.generate_s(5, 50))
    e.release()
    e.generate(reqs[:1], SamplingSettings(max_tokens=10))  # reload after release; max_tokens caps the tokens
    assert e.loads == 2 and clock.elapsed_s == pytest.approx(2 * consts.load_s(8) + 2 * consts.generate_s(5, 50)
                                                              + consts.generate_s(1, 10))


def test_real_clock_sleeps_scaled_time():
    import time

    clock = Clock(virtual=False, scale=0.001)
    t0 = time.perf_counter()
    clock.spend(200.0)  # 0.2 s of real time
    assert 0.15 < time.perf_counter() - t0 < 2.0 and clock.elapsed_s == 200.0


@pytest.mark.parametrize("accuracy", [0.2, 0.8])
def test_answers_follow_the_configured_accuracy(accuracy):
    task = get_task("GPQA")
    qs = load_questions(task, "train")
    e = SimulatedEngine("m", SimulatedSpec(accuracy=accuracy), Clock())
    out = e.generate([GenerationRequest.user("p", key=q.qid) for q in qs], SamplingSettings(seed=0))
    acc = sum(task.is_correct(task.extract(t), q.gold) for t, q in zip(out, qs)) / len(qs)
    assert acc == pytest.approx(accuracy, abs=0.08)
    assert out == e.generate([GenerationRequest.user("p", key=q.qid) for q in qs], SamplingSettings(seed=0))


def test_per_skill_accuracy_and_registry():
    expert = ExpertConfig(name="sim", engine="simulated", model="sim-8b", size_gb=16,
                          engine_args={"accuracy": 0.0, "skill_accuracy": {"algebra": 1.0}, "out_tokens": 10})
    e = create_engine(expert)
    assert isinstance(e, SimulatedEngine) and e.spec.constants.out_tokens == 10
    q = load_questions("AIME24", "test")[0]
    good = e.generate([GenerationRequest.user("p", key=q.qid, meta={"skills": ["algebra"]})], SamplingSettings())[0]
    bad = e.generate([GenerationRequest.user("p", key=q.qid, meta={"skills": ["law"]})], SamplingSettings())[0]
    task = get_task("AIME24")
    assert task.is_correct(task.extract(good), q.gold) and not task.is_correct(task.extract(bad), q.gold)


def test_a_prompt_that_quotes_simulated_answers_is_as_long_as_they_are():
    """An answer states its simulated length; whoever reads it pays for those tokens (thinking stripped)."""
    from skillmoe_ray.prompts import aggregation_prompt

    task = get_task("GPQA")
    q = load_questions(task, "test")[0]
    r1 = SimulatedEngine("r1", SimulatedSpec(constants=CostConstants(out_tokens=7000, cap_tokens=32768,
                                                                     answer_tokens=500)), Clock())
    plain = SimulatedEngine("p", SimulatedSpec(constants=CostConstants(out_tokens=700, cap_tokens=4096,
                                                                       prompt_tokens=300)), Clock())
    sampling = SamplingSettings(max_tokens=32768)
    answers = [e.generate([GenerationRequest.user("p", key=q.qid)], sampling)[0] for e in (r1, plain)]
    assert answers[0].startswith("<think>[simulated reasoning: ") and task.extract(answers[0]) is not None
    reader = GenerationRequest.user(aggregation_prompt(task, q.text, answers), key=q.qid, role="aggregator")
    quoted = 500 + round(plain.spec.constants.mean_length(32768))
    assert plain.prompt_tokens(reader) == 300 + quoted
    before = plain.clock.elapsed_s
    plain.generate([reader], sampling)
    assert plain.clock.elapsed_s - before == pytest.approx(plain.spec.constants.generate_s(1, 32768, 1, 300 + quoted))


def test_stream_spreads_the_answer_over_its_modelled_time():
    """Word by word, the whole modelled time spent: the first word long before the last; joined, generate's text."""
    consts = CostConstants(out_tokens=40, step_fixed_s=0.01, step_per_seq_s=0.0, load_fixed_s=0.0)
    e = SimulatedEngine("m", SimulatedSpec(size_gb=1, accuracy=0.5, constants=consts), Clock(virtual=False))
    req = GenerationRequest.user("a question that is not in any data set", key="GPQA/request/7")
    sampling = SamplingSettings(max_tokens=4096, seed=3)
    whole, usage, pieces, arrivals = stream_beside_generate(e, req, sampling)
    assert len(pieces) >= 5
    assert e.usage([req], [whole]) == usage and usage[0][1] > 0
    modelled = consts.generate_s(1, 4096)  # 0.4 s
    assert arrivals[0] < modelled / 3 and arrivals[-1] >= 0.9 * modelled, (arrivals, modelled)
    # a served request (no data-set key) is answered by its prompt: the same question, the same answer
    other = GenerationRequest.user("a question that is not in any data set", key="GPQA/request/8")
    assert e.generate([other], sampling) == [whole]


def test_calls_that_overlap_share_decode_steps_and_a_lone_call_takes_its_batch_time():
    """Continuous batching on a real clock (scaled): one call alone takes what the batch formula says;
    ten single prompts arriving 5 simulated seconds apart finish together far sooner than one after another,
    each slower than alone (every running sequence adds its reads to a step)."""
    import threading
    import time

    from skillmoe_ray.engines.base import GenerationRequest, SamplingSettings
    from skillmoe_ray.engines.simulated import Clock, CostConstants, SimulatedEngine, SimulatedSpec

    consts = CostConstants(load_fixed_s=0.0, step_fixed_s=0.0038, out_tokens=7000, cap_tokens=32768,
                           kv_tokens=200000, kv_s_per_token=8.5e-8, prefill_s_per_token=6e-5)
    scale = 0.002
    e = SimulatedEngine("r1", SimulatedSpec(size_gb=16, constants=consts), Clock(virtual=False, scale=scale))
    e.load()
    sampling = SamplingSettings(max_tokens=32768)
    one = [GenerationRequest.user("q")]
    alone = e._batch_s(one, sampling)
    t0 = time.perf_counter()
    e.generate(one, sampling)
    took = (time.perf_counter() - t0) / scale
    assert alone * 0.97 < took < alone * 1.1 + 2.0, (took, alone)

    each: list[float] = []

    def later(i: int) -> None:
        time.sleep(5 * i * scale)
        start = time.perf_counter()
        e.generate([GenerationRequest.user(f"q{i}")], sampling)
        each.append((time.perf_counter() - start) / scale)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=later, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = (time.perf_counter() - t0) / scale
    assert e._decode.peak >= 5 and len(each) == 10
    assert total < 0.5 * 10 * alone, (total, alone)  # not one after another
    assert min(each) > alone, each  # sharing a step costs each a little


def test_a_questions_prompts_split_over_calls_still_wait_for_the_longest_of_them():
    """Three prompts of one question to one expert, run as one call or as three: the question waits for
    the expected longest of three either way (the top-ranked call carries it), not for one mean length."""
    c = CostConstants(step_fixed_s=0.01, step_per_seq_s=0.0, kv_s_per_token=0.0, prefill_s_per_token=0.0,
                      out_tokens=100, cap_tokens=10**9)
    spec = SimulatedSpec(size_gb=1.0, constants=c)
    q = GenerationRequest.user("Which is right?")
    experts = ["R1", "Other", "R1", "R1"]
    marked = [as_sibling(q, 7, experts, slot) for slot in range(4)]
    assert [m.meta.get("sibling") for m in marked] == [(7, 1, 3), None, (7, 2, 3), (7, 3, 3)]
    assert marked[1] is q  # an expert asked once is one draw: nothing to mark
    sampling = SamplingSettings(max_tokens=10**9)

    def seconds(requests: list[GenerationRequest]) -> float:
        clock = Clock(virtual=True)
        SimulatedEngine("R1", spec, clock).generate(requests, sampling)
        return clock.elapsed_s - c.load_s(1.0)

    together = seconds([marked[0], marked[2], marked[3]])
    assert together == pytest.approx(c.generate_s(3, 10**9)) == pytest.approx(0.01 * 100 * (1 + 1 / 2 + 1 / 3))  # one call: the batch formula, as before
    split = [seconds([m]) for m in (marked[0], marked[2], marked[3])]
    # the top rank alone waits for the longest of three draws (its KV reads are one sequence's, not three)
    assert split[2] == pytest.approx(0.01 * 100 * (1 + 1 / 2 + 1 / 3))
    # the others for the shortest and the middle one of three
    assert split[0] == pytest.approx(0.01 * 100 / 3) and split[1] == pytest.approx(0.01 * 100 * (1 / 3 + 1 / 2))
    # two questions in one call are independent draws; unmarked copies of one request count one each
    other = as_sibling(q, 8, experts, 3)
    assert independent_draws([marked[3], other]) == pytest.approx(6.0)
    assert independent_draws([q, q]) == 2.0
    # the offline plan marks them the same way
    plan = group_by_expert([experts], [q])
    assert [r.meta.get("sibling") for _, _, r in plan["R1"]] == [(0, 1, 3), (0, 2, 3), (0, 3, 3)]
