"""Accuracy of every method against the baselines, with a bar chart.

Two parts:

* ``--recorded`` (default): ``skillmoe evaluate`` over the recorded MMLU-Pro
  pool (eight real models' outputs, 2,100 test questions) for several seeds.
* ``--real``: the real CPU pool (``deployments/local-cpu.yaml``: four small
  models on vLLM CPU) end to end -- keyword LLM, routing, experts, LLM
  aggregator -- on a small fixed sample of each data set, with the baselines
  that fit (single best model, fixed top-3 vote). The sample is tiny (a few
  questions per data set on 2 CPU cores); the table says how tiny.

    python benchmarks/accuracy.py                      # recorded pool, seeds 0,1,2
    python benchmarks/accuracy.py --real --questions 2 # the real CPU pool too

Writes benchmarks/results/accuracy-recorded.{json,md,png} and accuracy-real-cpu.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
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
    for y, (m, n) in enumerate(zip(means, names)):
        ax.text(m + 0.5, y, f"{m:.1f} ({methods[n]['calls_per_question']:.1f} calls)", va="center", fontsize=7)
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
    from skillmoe_ray.evaluate import evaluate
    from skillmoe_ray.runtime import Runtime
    from skillmoe_ray.tasks import get_task

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


def real(n_questions: int, tasks: list[str], seed: int) -> None:
    from skillmoe_ray.config import load_config
    from skillmoe_ray.evaluate import evaluate
    from skillmoe_ray.runtime import Runtime
    from skillmoe_ray.tasks import get_task

    cfg = load_config(ROOT / "deployments" / "local-cpu.yaml")
    rt = Runtime.from_config(cfg)
    reports, rows = {}, []
    for name in tasks:
        task = get_task(name)
        report = evaluate(rt, task, [seed], methods=["single_best", "fixed_top3_vote", "skillmoe_paper_llm"],
                          sample=n_questions)
        reports[name] = report
        for m, r in report["methods"].items():
            rows.append([name, report["n_questions"], m, f"{100 * r['accuracy_mean']:.0f}",
                         f"{r['calls_per_question']:.1f}"])
    md = (f"Real CPU pool (`deployments/local-cpu.yaml`, {len(rt.experts)} models on vLLM CPU), seed {seed}. "
          f"**Only {n_questions} test questions per data set**: one question moves accuracy by "
          f"{100 / n_questions:.0f} points, so this shows the system running end to end on real models, not "
          "which method is better.\n\n"
          + markdown_table(["data set", "questions", "method", "accuracy %", "model calls/question"], rows) + "\n")
    print(md)
    write_results("accuracy-real-cpu", {"reports": reports}, md)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--real", action="store_true", help="also run the real CPU pool on a small sample")
    ap.add_argument("--no-recorded", action="store_true", help="skip the recorded pool")
    ap.add_argument("--questions", type=int, default=2, help="test questions per data set for --real")
    ap.add_argument("--tasks", default=",".join(TASKS), help="data sets for --real")
    args = ap.parse_args(argv)
    if not args.no_recorded:
        recorded([int(s) for s in args.seeds.split(",")])
    if args.real:
        real(args.questions, args.tasks.split(","), int(args.seeds.split(",")[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
