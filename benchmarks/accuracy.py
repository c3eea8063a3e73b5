"""Accuracy of every method against the baselines, with a bar chart.

Two parts:

* ``--recorded`` (default): ``skillmoe evaluate`` over the recorded MMLU-Pro
  pool (eight real models' outputs, 2,100 test questions) for several seeds.
* ``--real``: the real CPU pool (``deployments/local-cpu.yaml``: four small
  models on vLLM CPU) end to end -- keyword LLM, routing, experts, LLM
  aggregator -- on a small fixed sample of each data set, with the baseline
  that fits (the single best model; ``--methods`` adds others). On 2 CPU
  cores one data set takes ~20 minutes (profiles on 12 validation questions,
  then each method's loads and generations), so the sample is one or two
  questions per data set; the table says how tiny.

    python benchmarks/accuracy.py                      # recorded pool, seeds 0,1,2
    python benchmarks/accuracy.py --real --no-recorded --questions 1   # the real CPU pool only

Writes benchmarks/results/accuracy-recorded.{json,md,png} and accuracy-real-cpu.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, markdown_table, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("MMLU_Pro", "GPQA", "MedMCQA", "AIME24")


def bar_chart(methods: dict, title: str, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no chart", file=sys.stderr)
        return False
    names = list(methods)
    means = [100 * methods[n]["accuracy_mean"] for n in names]
    errs = [100 * methods[n]["accuracy_std"] for n in names]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(names) + 1.5))
    ax.barh(names, means, xerr=errs, color="#4a7ab5", ecolor="black", capsize=3)
    for y, (m, e, n) in enumerate(zip(means, errs, names)):
        ax.text(m + e + 0.5, y, f"{m:.1f} ({methods[n]['calls_per_question']:.1f} calls)", va="center", fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("accuracy % (mean over seeds, error bar = std)")
    ax.set_xlim(0, max(means) + 12)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def table(methods: dict) -> str:
    rows = [[n, f"{100 * r['accuracy_mean']:.2f}", f"{100 * r['accuracy_std']:.2f}", f"{r['calls_per_question']:.2f}"]
            for n, r in methods.items()]
    return markdown_table(["method", "accuracy %", "std", "expert calls/question"], rows)


def recorded(seeds: list[int]) -> None:
    from skillmoe_ray.config import load_config
    from skillmoe_ray.offline.evaluate import evaluate
    from skillmoe_ray.runtime import Runtime
    from skillmoe_ray.tasks.catalogue import get_task

    cfg = load_config(ROOT / "deployments" / "recorded-mmlu-pro.yaml")
    report = evaluate(Runtime.from_config(cfg), get_task("MMLU_Pro"), seeds)
    title = (f"MMLU-Pro test, {report['n_questions']} questions, recorded pool of {len(report['pool'])} real models, "
             f"seeds {','.join(map(str, seeds))}")
    md = f"{title}\n\n{table(report['methods'])}\n"
    png = RESULTS / "accuracy-recorded.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    if bar_chart(report["methods"], title, png):
        md += f"\n![accuracy by method]({png.name})\n"
    print(md)
    write_results("accuracy-recorded", report, md)


REAL_METHODS = "single_best,skillmoe_paper_llm"


def real(n_questions: int, tasks: list[str], seed: int, methods: list[str]) -> None:
    """The real CPU pool, one data set after another; the result files are rewritten after each."""
    from skillmoe_ray.config import load_config
    from skillmoe_ray.offline.evaluate import evaluate
    from skillmoe_ray.runtime import Runtime
    from skillmoe_ray.tasks.catalogue import get_task

    cfg = load_config(ROOT / "deployments" / "local-cpu.yaml")
    # one model runs at a time in this process: let each engine use the cores (the server's 1 thread per engine
    # is for an expert worker and the aggregator side by side); threads are not part of the pool's profiles
    for e in cfg.pool.experts:
        e.engine_args.pop("threads", None)
    rt = Runtime.from_config(cfg)
    reports, rows = {}, []
    for name in tasks:
        task = get_task(name)
        t0 = time.perf_counter()
        rt.profiles(task)  # built once per pool and task on the validation split, then saved
        t1 = time.perf_counter()
        report = evaluate(rt, task, [seed], methods=methods, sample=n_questions)
        report["profile_s"], report["evaluate_s"] = t1 - t0, time.perf_counter() - t1
        reports[name] = report
        print(f"{name}: profiles {report['profile_s']:.0f} s, evaluation {report['evaluate_s']:.0f} s", flush=True)
        for m, r in report["methods"].items():
            rows.append([name, report["n_questions"], m, f"{100 * r['accuracy_mean']:.0f}",
                         f"{r['calls_per_question']:.1f}", f"{report['evaluate_s']:.0f}"])
        md = (f"Real CPU pool (`deployments/local-cpu.yaml`, {len(rt.experts)} models on vLLM CPU), seed {seed}. "
              f"**Only {n_questions} test question(s) per data set**: one question moves accuracy by "
              f"{100 / n_questions:.0f} points, so this shows the system running end to end on real models, not "
              "which method is better. Data sets not listed were not run.\n\n"
              + markdown_table(["data set", "questions", "method", "accuracy %", "model calls/question",
                                "evaluation s (all methods)"], rows) + "\n"
              + f"\nProfiles (validation split, {cfg.profiling.max_questions} questions per data set; built once "
              "and saved, 0 s when already built): "
              + ", ".join(f"{n} {r['profile_s']:.0f} s" for n, r in reports.items()) + ".\n")
        write_results("accuracy-real-cpu", {"reports": reports}, md)
    print(md)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--real", action="store_true", help="also run the real CPU pool on a small sample")
    ap.add_argument("--no-recorded", action="store_true", help="skip the recorded pool")
    ap.add_argument("--questions", type=int, default=2, help="test questions per data set for --real")
    ap.add_argument("--tasks", default=",".join(TASKS), help="data sets for --real")
    ap.add_argument("--methods", default=REAL_METHODS, help=f"methods for --real (default {REAL_METHODS}; "
                    "each costs a load and a generation per expert it calls)")
    args = ap.parse_args(argv)
    if not args.no_recorded:
        recorded([int(s) for s in args.seeds.split(",")])
    if args.real:
        real(args.questions, args.tasks.split(","), int(args.seeds.split(",")[0]), args.methods.split(","))
    return 0


if __name__ == "__main__":
    sys.exit(main())
