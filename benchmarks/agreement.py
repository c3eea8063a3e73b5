"""How often the experts of a question all agree, and what skipping the aggregator then saves.

``aggregation.skip_when_agreed`` lets a question whose k experts gave one answer keep it without asking
the LLM aggregator. This measures, with the paper's routing (k = 3, seeds 0-2), on the test split:

* the recorded pools (real models' recorded answers: MMLU-Pro, 8 models; the arithmetic example, 4 small
  ones): how often all three agree, and how often the agreed answer is right (what the aggregator would
  have had to overturn);
* the paper-scale simulated pool (GPQA, 16 simulated experts): how often they agree, and the planner's
  predicted seconds per question at W = 1 and 4 with every question aggregated and with agreements
  skipped (the fitted Table 6 cost model of ``latency.py``).

    python benchmarks/agreement.py

Writes benchmarks/results/agreement.{json,md}.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, sim_state_dir, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SEEDS = (0, 1, 2)


def solve(config: Path, task_name: str, state_dir: str | None = None, limit: int | None = None):
    """The paper's routing and a vote over the test split, per seed: (task, questions, solutions by seed)."""
    from skillmoe_ray.aggregation.aggregators import VoteAggregator
    from skillmoe_ray.config import load_config
    from skillmoe_ray.pipeline import Pipeline
    from skillmoe_ray.routing.routers import ROUTERS
    from skillmoe_ray.runtime import Runtime

    cfg = load_config(config)
    if state_dir:
        cfg.state_dir = state_dir
    rt = Runtime.from_config(cfg, progress=False)
    rt.executor.progress = False
    task = rt.task(task_name)
    prof = rt.profiles(task)
    questions = rt.questions(task, "test")[:limit]
    skills = rt.skill_stage(prof).skills(questions)
    router = ROUTERS["paper"](cfg.routing.model_copy(update={"k": 3}), prof)
    pipeline = Pipeline(task, None, router, VoteAggregator(prof.ranking()), rt.executor)
    return task, questions, {seed: pipeline.solve(questions, seed=seed, skills=skills) for seed in SEEDS}


def agreement(task, solutions) -> tuple[list[int], float]:
    """Indices of the questions whose experts all agree, and how often that answer is right."""
    from skillmoe_ray.aggregation.votes import agreed

    hits = [i for i, s in enumerate(solutions) if agreed([a.pred for a in s.answers], task) is not None]
    right = [task.is_correct(solutions[i].answer, solutions[i].question.gold) for i in hits]
    return hits, (sum(right) / len(right) if right else 0.0)


def one_expert(solutions, hits) -> float:
    """Of the agreements, the share where the recruitment drew one expert k times (draws with replacement)."""
    return sum(len(set(solutions[i].experts)) == 1 for i in hits) / len(hits) if hits else 0.0


def recorded_row(label: str, config: Path, task_name: str, state_dir: str) -> list:
    task, questions, by_seed = solve(config, task_name, state_dir)
    fire, right, alone = zip(*[(len(h) / len(questions), r, one_expert(sols, h))
                               for sols in by_seed.values() for h, r in [agreement(task, sols)]])
    vote = statistics.fmean(sum(task.is_correct(s.answer, s.question.gold) for s in sols) / len(sols)
                            for sols in by_seed.values())
    return [label, len(questions), f"{100 * statistics.fmean(fire):.1f}%", f"{100 * statistics.fmean(alone):.1f}%",
            f"{100 * statistics.fmean(right):.1f}%", f"{100 * vote:.1f}%"]


def simulated(state_dir: str) -> tuple[list, list]:
    import latency  # the fitted cost model of the paper's Table 6
    from skillmoe_ray.scheduling.makespan import planner_plan

    config = ROOT / "deployments" / "paper-scale-sim.yaml"
    task, questions, by_seed = solve(config, "GPQA", state_dir)
    s = latency.setup(str(config), state_dir)
    fitted, _, _ = latency.calibrate(s)
    fires, alone = [], []
    rows = []
    for seed, sols in by_seed.items():
        hits, right = agreement(task, sols)
        fires.append(len(hits) / len(sols))
        alone.append(one_expert(sols, hits))
        if seed != 0:
            continue
        selections = [s_.experts for s_ in sols]
        asked = [sel for i, sel in enumerate(selections) if i not in set(hits)]
        for w in (1, 4):
            full = planner_plan(selections, s["aggregator"], fitted, w, s["agg_tokens"])[0] / len(sols)
            skip = planner_plan(selections, s["aggregator"], fitted, w, s["agg_tokens"], aggregated=asked)[0] / len(sols)
            rows.append([w, f"{full:.2f}", f"{skip:.2f}", f"{100 * (full - skip) / full:.1f}%",
                         f"{len(asked)} of {len(sols)}"])
    summary = ["paper-scale simulated (GPQA)", len(questions), f"{100 * statistics.fmean(fires):.1f}%",
               f"{100 * statistics.fmean(alone):.1f}%", "-", "-"]
    return summary, rows


def main() -> int:
    state = sim_state_dir()
    rows = [
        recorded_row("recorded MMLU-Pro (8 real models)", ROOT / "deployments" / "recorded-mmlu-pro.yaml",
                     "MMLU_Pro", state),
        recorded_row("recorded arithmetic (4 small real models)", ROOT / "examples" / "arithmetic" / "recorded.yaml",
                     "arithmetic", state),
    ]
    sim_summary, sim_rows = simulated(state)
    rows.append(sim_summary)
    md1 = markdown_table(["pool", "test questions", "all 3 agree", "of those, one expert drawn 3x",
                          "agreed answer right", "vote accuracy"], rows)
    md2 = markdown_table(["workers", "s/q, every question aggregated", "s/q, agreements skipped", "saved",
                          "aggregated"], sim_rows)
    print(md1 + "\n\n" + md2)
    setting = ("The paper's routing (k = 3) over each pool's test split, seeds 0-2 (means); a vote merges. "
               "'All 3 agree': the questions aggregation.skip_when_agreed answers without the LLM aggregator; "
               "'agreed answer right': how often that answer is correct (what an aggregator would have had to "
               "overturn to gain). The paper's recruitment draws with replacement, so an agreement is often one "
               "expert drawn three times, which an aggregator reading the same chain of thought thrice would hardly "
               "overturn. "
               "The simulated pool's seconds are the planner's prediction with latency.py's "
               "fitted Table 6 cost model, seed 0: the experts' batch, then the aggregator's over every question "
               "or over those without an agreement.")
    payload = {"setting": setting, "pools": rows, "simulated_latency": sim_rows}
    jpath, mpath = write_results("agreement", payload, f"{setting}\n\n{md1}\n\n{md2}\n")
    print(f"\nwrote {jpath}, {mpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
