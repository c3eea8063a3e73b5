"""Accuracy against cost: expert calls and summed expert size per question, for every method on a pool.

Runs every method of ``skillmoe evaluate`` (and, with ``--sweep``, the budget
cascades over every max_calls, both orders and several size weights) through
the same :class:`Pipeline`, on the test split, for several seeds, and reports
per method: accuracy, expert calls per question and summed expert size per
question (GB of weights asked). Marks the Pareto front (no other method is at
least as accurate for less or equal cost) on each cost axis.

Sizes come from the pool config's ``size_gb``; where it is missing (the
recorded pool) they are the parameter count in the model's name at 16 bits
(2 bytes per parameter; Phi-3-mini: 3.8 B), see :func:`budget.size_from_name`.

    python benchmarks/frontier.py                     # recorded MMLU-Pro pool, seeds 0,1,2
    python benchmarks/frontier.py --sweep             # plus every budget variant

Writes benchmarks/results/frontier-<config>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, markdown_table, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TARGET = (2.5, 50.00)  # the target: top-5 vote's accuracy at <= 2.5 calls


def pareto(points: dict[str, tuple[float, float]]) -> set[str]:
    """Names of the points no other point dominates (accuracy >= and cost <=, one strictly)."""
    front = set()
    for n, (cost, acc) in points.items():
        if not any((c <= cost and a >= acc) and (c < cost or a > acc) for m, (c, a) in points.items() if m != n):
            front.add(n)
    return front


def sweep_methods(rt, prof):
    """Budget cascades over every max_calls, in both orders, and cost-weighted at several weights and size budgets."""
    from skillmoe_ray.offline.evaluate import Method
    from skillmoe_ray.aggregation.aggregators import OrderedVoteAggregator
    from skillmoe_ray.routing.budget import expert_sizes
    from skillmoe_ray.routing.routers import BudgetRouter

    ordered = OrderedVoteAggregator()
    n = len(prof.experts)
    sizes = expert_sizes(prof.experts, {e.name: e.size_gb for e in rt.experts})
    out = []
    for b in range(1, n + 1):
        out.append(Method(f"sweep_skill_max{b}", BudgetRouter(prof, b, name=f"sweep_skill_max{b}"), ordered))
        out.append(Method(f"sweep_rank_max{b}", BudgetRouter(prof, b, prior_strength=None), ordered))
    if sizes:
        for w in (0.25, 0.5, 1.0, 2.0):
            for b in (3, 4, 5):
                out.append(Method(f"sweep_sized{w:g}_max{b}",
                                  BudgetRouter(prof, min(b, n), prior_strength=None, sizes=sizes, size_weight=w), ordered))
        for gb in (24, 32, 40, 48, 64):
            out.append(Method(f"sweep_rank_size{gb}gb", BudgetRouter(prof, n, prior_strength=None, sizes=sizes,
                                                                    max_size_gb=gb), ordered))
    return out


def measure(config: Path, task_name: str, seeds: list[int], sweep: bool) -> dict:
    from skillmoe_ray.config import load_config
    from skillmoe_ray.offline.evaluate import standard_methods
    from skillmoe_ray.pipeline import Pipeline
    from skillmoe_ray.runtime import Runtime
    from skillmoe_ray.routing.budget import expert_sizes
    from skillmoe_ray.tasks.catalogue import get_task

    cfg = load_config(config)
    rt = Runtime.from_config(cfg, progress=False)
    task = get_task(task_name)
    prof = rt.profiles(task)
    questions = rt.questions(task, "test")
    skills = rt.skill_stage(prof).skills(questions)
    configured = {e.name: e.size_gb for e in rt.experts}
    sizes = expert_sizes(prof.experts, configured) or {}
    methods = standard_methods(rt, prof) + (sweep_methods(rt, prof) if sweep else [])
    rows = {}
    for m in methods:
        accs, calls, gbs = [], [], []
        for i, seed in enumerate(seeds):
            if i and not m.seeded:  # deterministic: same answers every seed
                accs.append(accs[0]), calls.append(calls[0]), gbs.append(gbs[0])
                continue
            sols = Pipeline(task, None, m.router, m.aggregator, rt.executor).solve(questions, seed=seed, skills=skills)
            accs.append(sum(task.is_correct(s.answer, s.question.gold) for s in sols) / len(sols))
            calls.append(sum(s.calls for s in sols) / len(sols))
            gbs.append(sum(sizes.get(a.expert, float("nan")) for s in sols for a in s.answers) / len(sols))
        rows[m.name] = {
            "accuracy_mean": statistics.fmean(accs), "accuracy_std": statistics.pstdev(accs), "per_seed": accs,
            "calls_per_question": statistics.fmean(calls), "size_gb_per_question": statistics.fmean(gbs),
            "sweep": m.name.startswith("sweep_"),
        }
    return {
        "config": str(config.relative_to(ROOT) if config.is_relative_to(ROOT) else config),
        "task": task.name, "n_questions": len(questions), "seeds": seeds,
        "sizes_gb": sizes,
        "sizes_from": {e: ("config size_gb" if configured.get(e) else "model name, 16-bit") for e in sizes},
        "target": {"calls_per_question": TARGET[0], "accuracy": TARGET[1]},
        "methods": rows,
    }


def fronts(methods: dict) -> tuple[set[str], set[str]]:
    acc = {n: 100 * r["accuracy_mean"] for n, r in methods.items()}
    by_calls = pareto({n: (methods[n]["calls_per_question"], acc[n]) for n in methods})
    by_size = pareto({n: (methods[n]["size_gb_per_question"], acc[n]) for n in methods})
    return by_calls, by_size


def table(report: dict) -> str:
    methods = report["methods"]
    by_calls, by_size = fronts(methods)
    rows = []
    for n, r in sorted(methods.items(), key=lambda kv: (kv[1]["calls_per_question"], -kv[1]["accuracy_mean"])):
        rows.append([n, f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}",
                     " / ".join(f"{100 * a:.2f}" for a in r["per_seed"]), f"{r['calls_per_question']:.2f}",
                     f"{r['size_gb_per_question']:.1f}", "✓" if n in by_calls else "", "✓" if n in by_size else ""])
    return markdown_table(["method", "accuracy % (mean ± std)", "per seed", "calls/question", "GB/question",
                           "Pareto (calls)", "Pareto (GB)"], rows)


def plot(report: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plot", file=sys.stderr)
        return False
    methods = report["methods"]
    by_calls, by_size = fronts(methods)
    fig, axes = plt.subplots(1, 2, figsize=(14, 6))
    for ax, key, front, label in ((axes[0], "calls_per_question", by_calls, "expert calls per question"),
                                  (axes[1], "size_gb_per_question", by_size, "summed expert size per question (GB)")):
        for n, r in methods.items():
            x, y = r[key], 100 * r["accuracy_mean"]
            colour = "#999999" if r["sweep"] else ("#d62728" if n.startswith("budget") else "#1f77b4")
            ax.scatter(x, y, s=14 if r["sweep"] else 30, color=colour, zorder=3)
            if not r["sweep"]:
                ax.annotate(n.replace("_vote", ""), (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
        pts = sorted((methods[n][key], 100 * methods[n]["accuracy_mean"]) for n in front)
        ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", color="black", lw=0.8, label="Pareto front")
        ax.axhline(TARGET[1], color="#2ca02c", ls="--", lw=0.8, label="best fixed vote (top-5)")
        if key == "calls_per_question":
            ax.axvline(TARGET[0], color="#2ca02c", ls=":", lw=0.8, label="target: 2.5 calls")
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy % (test, mean over seeds)")
        ax.set_ylim(min(100 * r["accuracy_mean"] for r in methods.values()) - 1, 51.5)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{report['task']} test ({report['n_questions']} questions), {report['config']}, seeds "
                 f"{','.join(map(str, report['seeds']))}; red: budget cascades, grey: sweep", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "deployments" / "recorded-mmlu-pro.yaml"))
    ap.add_argument("--task", default="MMLU_Pro")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--sweep", action="store_true", help="also every budget variant (max_calls 1..n, orders, sizes)")
    args = ap.parse_args(argv)
    config = Path(args.config).resolve()
    report = measure(config, args.task, [int(s) for s in args.seeds.split(",")], args.sweep)
    name = f"frontier-{config.stem}" + ("-sweep" if args.sweep else "")
    sizes = ", ".join(f"{e} {g:g}" for e, g in report["sizes_gb"].items())
    md = (f"{report['task']} test, {report['n_questions']} questions, `{report['config']}`, seeds "
          f"{','.join(map(str, report['seeds']))}. Expert sizes (GB; from the model names at 16 bits where the "
          f"config gives none): {sizes}.\n\n{table(report)}\n")
    RESULTS.mkdir(parents=True, exist_ok=True)
    png = RESULTS / f"{name}.png"
    if plot(report, png):
        md += f"\n![accuracy against cost]({png.name})\n"
    print(md)
    write_results(name, report, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
