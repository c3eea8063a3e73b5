"""The project's GPU path over the vLLM double, on a private Ray cluster with logical GPUs.

    python tests/vllm_double/run_on_ray.py actors OUT.json
    python tests/vllm_double/run_on_ray.py slow OUT.json
    python tests/vllm_double/run_on_ray.py deployment deployments/one-gpu.yaml OUT.json [--aggregator Qwen]

Run it with ``tests/vllm_double`` first on PYTHONPATH (and the repository after it) and
CUDA_VISIBLE_DEVICES unset, as on a GPU node; it sets the fake node's knobs itself
(SKILLMOE_FAKE_GPUS = the cluster's GPUs, a fresh ledger directory, the fixtures as the hub)
and passes them to every Ray worker. What happened is written to OUT.json.

``actors``: VLLMEngine in actors of its own -- one GPU each (Ray sets CUDA_VISIBLE_DEVICES),
two sharing one GPU (fractions of one placement-group bundle) whose gpu_memory_utilization
add up to less than 1 and then to more, and one with num_gpus=0.

``deployment``: the file's preflight, its experts through the real ExpertWorker actors
(start_workers with the file's serving settings and the fake GPUs' size), its LLM aggregator
(start_aggregator with the file's aggregator_gpus, the model given by --aggregator, as a task's
profile would name it) and the scheduler: the same plan twice (every expert answers two
questions each time, so the second round brings back what the first evicted), then the
aggregator merges the answers. Each failure is reported with the first line of its reason.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOUBLE = ROOT / "tests" / "vllm_double"
MODELS = ROOT / "tests" / "fixtures" / "models"
QUESTION = ("Question: Which planet is largest?\n(A) Mars\n(B) Jupiter\n(C) Venus\n(D) Mercury\n"
            'Provide your step-by-step reasoning first, and then print "The answer is (X)", where X is the answer '
            "choice (one capital letter), at the end of your response.")


def _setup(gpus: int) -> dict[str, str]:
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)  # a node's processes see every GPU unless Ray says otherwise
    env = {
        "PYTHONPATH": os.pathsep.join([str(DOUBLE), str(ROOT)]),
        "SKILLMOE_FAKE_GPU_DIR": tempfile.mkdtemp(prefix="fake-gpus-"),
        "SKILLMOE_FAKE_GPUS": str(gpus),
        "SKILLMOE_FAKE_HUB_DIR": str(MODELS),
        "SKILLMOE_MODEL_CONFIGS": str(MODELS),  # where the project reads the same configs (footprints, preflight)
        "SKILLMOE_FAKE_GPU_GB": os.environ.get("SKILLMOE_FAKE_GPU_GB", "80"),
        "SKILLMOE_FAKE_TIME_SCALE": os.environ.get("SKILLMOE_FAKE_TIME_SCALE", "0"),
        "HF_HUB_OFFLINE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        "RAY_prestart_worker_first_driver": "0",
        "TOKENIZERS_PARALLELISM": "false",
    }
    os.environ.update(env)
    return env


def _init(gpus: int, cpus: float) -> None:
    import ray

    env = _setup(gpus)
    ray.init(address="local", num_cpus=cpus, num_gpus=gpus, include_dashboard=False, log_to_driver=False,
             configure_logging=False, runtime_env={"env_vars": env})


def _why(exc: BaseException) -> str:
    """The reason of a failure without Ray's wrapping: the message of the innermost error the caller sees."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in reversed(lines):
        for marker in ("EngineError: ", "load failed on worker"):
            if marker in ln and not ln.startswith("raise "):
                return ln[ln.index(marker) + (len(marker) if marker.endswith(": ") else 0):]
    return lines[-1] if lines else type(exc).__name__


def _ledger_summary() -> dict:
    from vllm._double import hw, ledger

    gpus = {}
    for g in range(hw.num_gpus()):
        by_proc: dict[str, dict[str, int]] = {}
        for e in ledger.gpu_entries(g):
            by_proc.setdefault(f'{e["pid"]}:{e["proc"]}', {}).setdefault(e["kind"], 0)
            by_proc[f'{e["pid"]}:{e["proc"]}'][e["kind"]] += int(e["bytes"])
        gpus[g] = {"used": ledger.gpu_used(g), "processes": by_proc}
    return {"gpus": gpus, "host_pinned": ledger.host_used(), "host_pinned_peak": ledger.host_peak()}


def _wait_until_freed(timeout: float = 30.0) -> None:
    """Killed actors' processes take a moment to go; their ledger entries go with them."""
    from vllm._double import hw, ledger

    deadline = time.time() + timeout
    while time.time() < deadline and any(ledger.gpu_used(g) for g in range(hw.num_gpus())):
        time.sleep(0.2)


# ------------------------------------------------------------------ actors


class EngineActor:
    def __init__(self, name: str, model: str, engine_args: dict, size_gb: float | None = None):
        from skillmoe_ray.engines.vllm_engine import VLLMEngine

        self.engine = VLLMEngine(name, model, engine_args, size_gb=size_gb)

    def env(self) -> dict:
        return {"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid(),
                "can_park": self.engine.can_park}

    def load(self) -> dict:
        self.engine.load()
        return {k: v for k, v in self.engine.stats.items() if k.endswith("_s")}

    def generate(self, prompt: str) -> str:
        from skillmoe_ray.engines.base import GenerationRequest, SamplingSettings

        return self.engine.generate([GenerationRequest.user(prompt)], SamplingSettings(max_tokens=256, seed=0))[0]

    def park(self) -> dict:
        self.engine.park()
        return {"parked": self.engine.parked, "host_bytes": self.engine.host_bytes()}

    def memory(self) -> dict | None:
        llm = self.engine._llm
        return llm.double_memory() if llm is not None else None

    def release(self) -> None:
        self.engine.release()


def run_actors(out: dict) -> None:
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    _init(gpus=2, cpus=4)
    actor = ray.remote(EngineActor)
    qwen = "Qwen/Qwen2.5-7B-Instruct"
    args = {"max_model_len": 8192, "gpu_memory_utilization": 0.85}

    # one GPU each
    a = [actor.options(num_cpus=0.5, num_gpus=1).remote(f"Qwen{i}", qwen, args, 15.2) for i in range(2)]
    envs = ray.get([x.env.remote() for x in a])
    ray.get([x.load.remote() for x in a])
    mem = ray.get([x.memory.remote() for x in a])
    texts = ray.get([x.generate.remote(QUESTION) for x in a])
    parked = ray.get(a[0].park.remote())
    after_park = {"actor": ray.get(a[0].memory.remote()), "ledger": _ledger_summary()}
    woke = ray.get(a[0].load.remote())
    after_wake = ray.get(a[0].memory.remote())
    ray.get([x.release.remote() for x in a])
    out["one_gpu_each"] = {"env": envs, "memory": mem, "texts": texts, "parked": parked, "after_park": after_park,
                           "wake": woke, "after_wake": after_wake, "after_release": _ledger_summary()}
    for x in a:
        ray.kill(x)

    # two engines sharing one GPU: half a bundle's GPU each
    pg = placement_group([{"CPU": 1, "GPU": 1}], strategy="STRICT_PACK")
    ray.get(pg.ready())
    shared = {}
    for util in (0.45, 0.6):
        b = [actor.options(num_cpus=0.25, num_gpus=0.5, scheduling_strategy=PlacementGroupSchedulingStrategy(
            pg, placement_group_bundle_index=0)).remote(f"S{i}", qwen, {**args, "gpu_memory_utilization": util}, 15.2)
            for i in range(2)]
        res = {"env": ray.get([x.env.remote() for x in b]), "loads": []}
        for x in b:  # one after the other, as two workers would start
            try:
                ray.get(x.load.remote())
                res["loads"].append("ok")
            except Exception as exc:  # noqa: BLE001 - the refusal is the finding
                res["loads"].append(_why(exc))
        res["ledger"] = _ledger_summary()
        for x in b:
            ray.kill(x)
        _wait_until_freed()  # the killed actors' processes go, and their memory with them
        res["after_kill"] = _ledger_summary()
        shared[str(util)] = res
    out["two_on_one_gpu"] = shared
    ray.util.remove_placement_group(pg)

    # num_gpus=0 next to a worker that holds GPU 0 (the aggregator's setting in the shipped deployments)
    w = actor.options(num_cpus=0.25, num_gpus=1).remote("Worker", qwen, args, 15.2)
    z = actor.options(num_cpus=0.25, num_gpus=0).remote("Aggregator", qwen, args, 15.2)
    zero = {"worker_env": ray.get(w.env.remote()), "env": ray.get(z.env.remote())}
    ray.get(w.load.remote())
    try:
        ray.get(z.load.remote())
        zero["load"] = "ok"
        zero["memory"] = ray.get(z.memory.remote())
    except Exception as exc:  # noqa: BLE001
        zero["load"] = _why(exc)
    zero["ledger"] = _ledger_summary()
    out["num_gpus_0"] = zero


# ------------------------------------------------------------------ a deployment file


def run_deployment(path: str, aggregator: str, out: dict) -> None:
    """The file's pool as the scheduler deployment starts it (preflight, workers with their budgets, the LLM
    aggregator on its own GPU share), then the same batch twice through the scheduler (every expert answers
    two questions each time: the second round brings back what the first evicted), and the aggregator
    merging the answers."""
    import math

    import ray

    from skillmoe_ray.config import load_config
    from skillmoe_ray.engines.base import GenerationRequest, SamplingSettings
    from skillmoe_ray.pool import pool_experts
    from skillmoe_ray.preflight import preflight, ray_nodes
    from skillmoe_ray.prompts import expert_prompt
    from skillmoe_ray.serving.actors import cost_model_for, start_aggregator, start_workers
    from skillmoe_ray.serving.scheduler import RayExecutor, Scheduler, limits_for
    from skillmoe_ray.solution import ExpertAnswer
    from skillmoe_ray.tasks.catalogue import Catalogue

    cfg = load_config(ROOT / path)
    sv = cfg.serving
    experts = pool_experts(cfg)
    gpus = math.ceil(sv.workers * sv.gpus_per_worker + sv.aggregator_gpus)
    _init(gpus=gpus, cpus=sv.workers * sv.cpus_per_worker + 1)
    gpu_gb = float(os.environ["SKILLMOE_FAKE_GPU_GB"]) * (1 << 30) / 1e9  # the double's GPUs are in GiB
    host_gb = float(os.environ.get("SKILLMOE_FAKE_HOST_BUDGET_GB", "64"))  # a GPU node's RAM for parked weights
    catalogue = Catalogue.from_config(cfg)
    task = catalogue.get("GPQA")
    out["deployment"] = {"file": path, "workers": sv.workers, "gpus": gpus, "aggregator_gpus": sv.aggregator_gpus,
                         "aggregator": aggregator, "gpu_gb": gpu_gb, "host_budget_gb": host_gb}
    report = preflight(cfg, experts, MODELS, gpu_gb, nodes=ray_nodes())
    out["preflight"] = [f.render(path) for f in report.findings if f.level == "error"]

    # as the scheduler deployment starts the pool (scheduler_deployment.py): workers first, then the aggregator
    workers, pg, _ = start_workers(experts, sv.workers, sv.gpus_per_worker, sv.cpus_per_worker, catalogue,
                                   sv.models_per_worker, host_budget_gb=host_gb, prefetch=sv.prefetch,
                                   strategy=sv.placement_strategy, gpu_memory_gb=gpu_gb,
                                   gpu_memory_fraction=sv.gpu_memory_fraction)
    infos = ray.get([w.info.remote() for w in workers])
    out["worker_gpus"] = {i["wid"]: i["cuda_visible_devices"] for i in infos}
    budgets = ray.get([w.budgets.remote() for w in workers])
    out["budgets"] = budgets
    by_name = {e.name: e for e in experts}
    agg, _ = start_aggregator("llm", {"GPQA": [e.name for e in experts]}, {}, by_name[aggregator], catalogue,
                              sv.aggregator_gpus, cfg.aggregation.max_tokens, gpu_memory_gb=gpu_gb)
    try:
        out["aggregator_start"] = {"ok": True, **ray.get(agg.info.remote(), timeout=300)}
    except Exception as exc:  # noqa: BLE001 - a refused start is a finding
        out["aggregator_start"] = {"ok": False, "why": _why(exc)}
    out["after_aggregator"] = _ledger_summary()

    questions = catalogue.questions(task, "test")[:2]
    plan = {e.name: [(qi, j, GenerationRequest.user(expert_prompt(task, q.text), key=q.qid))
                     for qi, q in enumerate(questions)] for j, e in enumerate(experts)}
    limits = limits_for(ray.get(workers[0].traits.remote()), budgets, sv.prefetch)
    ex = RayExecutor(Scheduler(workers, limits, cost_model_for(experts)))
    out["rounds"] = []
    texts: dict = {}
    try:
        for _ in range(2):
            texts = ex.run(plan, SamplingSettings(temperature=0.7, max_tokens=512, seed=0))
            out["rounds"].append({"answered": len(texts), "asked": sum(len(v) for v in plan.values()),
                                  "unhealthy": {k: v.splitlines()[0] for k, v in ex.unhealthy.items()},
                                  "ledger": _ledger_summary()})
    except Exception as exc:  # noqa: BLE001
        out["rounds"].append({"error": _why(exc)})
    finally:
        ex.close()
    infos = ray.get([w.info.remote() for w in workers])
    out["workers"] = [{k: i[k] for k in ("wid", "cuda_visible_devices", "loads", "wakes", "resident", "parked")}
                      for i in infos]
    out["failed"] = {}
    for i in infos:
        for name, why in i["failed"].items():
            out["failed"].setdefault(name, why.splitlines()[0])
    # one worker told of a job list with every expert twice: it parks (sleeps) what the list needs again,
    # as far as its host budget holds them, and wakes them for their second job
    out["parking"] = _park_all(workers[0], experts)
    # the aggregator merges each question's answers, on the GPU share it was given
    answers = [[ExpertAnswer(e.name, texts.get((qi, j), ""), task.extract(texts.get((qi, j), "")))
                for j, e in enumerate(experts[:3])] for qi in range(len(questions))]
    try:
        merged = ray.get(agg.aggregate.remote("GPQA", questions, answers, 0), timeout=300)
        out["aggregated"] = [{"answer": a, "aggregator": who} for a, _, who in merged]
    except Exception as exc:  # noqa: BLE001
        out["aggregated"] = {"error": _why(exc)}
    out["after_plan"] = _ledger_summary()


def _park_all(worker, experts) -> dict:
    import ray

    from skillmoe_ray.engines.base import GenerationRequest, SamplingSettings

    jobs = [(e.name, [(i, 0, GenerationRequest.user(QUESTION, key="GPQA/test/0"))])
            for i, e in enumerate(list(experts) * 2)]
    before = ray.get(worker.info.remote())
    try:
        res = ray.get(worker.run.remote(jobs, SamplingSettings(max_tokens=64, seed=0)), timeout=600)
    except Exception as exc:  # noqa: BLE001
        return {"error": _why(exc)}
    after = ray.get(worker.info.remote())
    st = res["stats"]
    return {"jobs": len(st["jobs"]), "answered": len(res["texts"]),
            "failed": {k: v.splitlines()[0] for k, v in st["failed"].items()},
            "loads": after["loads"] - before["loads"], "wakes": after["wakes"] - before["wakes"],
            "parked": st["parked"], "resident": st["resident"], "ledger": _ledger_summary()}


def run_slow(out: dict) -> None:
    """A generation far slower than the scheduler predicts, on the double with real sleeps: the worker is
    checked when the deadline passes, found alive and working, and kept."""
    import ray

    from skillmoe_ray.config import ExpertConfig
    from skillmoe_ray.engines.base import GenerationRequest, SamplingSettings
    from skillmoe_ray.serving.actors import cost_model_for, start_workers
    from skillmoe_ray.serving.scheduler import RayExecutor, Scheduler, limits_for

    os.environ.update({"SKILLMOE_FAKE_TIME_SCALE": "1", "SKILLMOE_FAKE_ENGINE_START_S": "0",
                       "SKILLMOE_FAKE_DISK_GBPS": "100", "SKILLMOE_FAKE_HBM_GBPS": "250"})  # ~30 ms a decode step
    _init(gpus=1, cpus=2)
    expert = ExpertConfig(name="Phi", engine="vllm", model="microsoft/Phi-3.5-mini-instruct", size_gb=7.6,
                          engine_args={"max_model_len": 4096})
    workers, pg, _ = start_workers([expert], 1, 1.0, 1.0, gpu_memory_gb=80 * (1 << 30) / 1e9)
    budgets = ray.get([w.budgets.remote() for w in workers])
    limits = limits_for(ray.get(workers[0].traits.remote()), budgets, False)
    sched = Scheduler(workers, limits, cost_model_for([expert]), job_timeout_factor=1.0, job_timeout_min_s=0.3,
                      probe_interval_s=0.2)
    req = GenerationRequest.user(QUESTION, key="GPQA/test/0")
    ex = RayExecutor(sched)
    try:
        ex.run({"Phi": [(0, 0, req)]}, SamplingSettings(max_tokens=16, seed=0))  # loads it, and a first measurement
        sched.times.experts["Phi"].step_s = 1e-4  # as if it had measured 10,000 tokens a second
        predicted = sched.times.predict("Phi", "resident", 128)
        t0 = time.perf_counter()
        texts = ex.run({"Phi": [(1, 0, req)]}, SamplingSettings(max_tokens=128, seed=0))
        out["slow"] = {"took_s": time.perf_counter() - t0, "deadline_s": 0.3 + predicted, "answered": len(texts),
                       "slow_jobs": sched.pool.slow_jobs, "alive": sched.pool.views[0].alive,
                       "events": [e["event"] for e in sched.events]}
    finally:
        ex.close()


def _ledger_entries(gpu: int) -> list[dict]:
    from vllm._double import ledger

    return ledger.gpu_entries(gpu)


def main(argv: list[str]) -> int:
    out: dict = {"started": time.time()}
    target = argv[-1]
    try:
        if argv[1] == "actors":
            run_actors(out)
        elif argv[1] == "slow":
            run_slow(out)
        elif argv[1] == "deployment":
            agg = argv[argv.index("--aggregator") + 1] if "--aggregator" in argv else "Qwen"
            run_deployment(argv[2], agg, out)
        else:
            raise SystemExit(__doc__)
    except Exception:  # noqa: BLE001 - what went wrong goes into the report too
        out["error"] = traceback.format_exc()
    finally:
        out["seconds"] = time.time() - out["started"]
        Path(target).write_text(json.dumps(out, indent=1, default=str))
        try:
            import ray

            ray.shutdown()
        except Exception:  # noqa: BLE001
            pass
        ledger_dir = os.environ.get("SKILLMOE_FAKE_GPU_DIR", "")
        if os.path.basename(ledger_dir).startswith("fake-gpus-"):  # the one _setup made
            shutil.rmtree(ledger_dir, ignore_errors=True)
    return 1 if "error" in out else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
