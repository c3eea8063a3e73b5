"""Offline evaluation: every method on a task's test split, over several seeds.

Each method is a (router, aggregator) pair run through :class:`Pipeline` — the
same code the server runs — and is scored on the gold answers only after the
pipeline has answered.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

from ..aggregation.aggregators import AGGREGATORS, Aggregator, OrderedVoteAggregator
from ..routing.budget import expert_sizes
from ..pipeline import Pipeline
from ..profiles import Profiles
from ..tasks.reading import Readability, format_readability, pool_readability
from ..routing.routers import ROUTERS, BudgetRouter, FixedRouter, RandomRouter, Router
from ..runtime import Runtime
from ..tasks.catalogue import Question, Task


@dataclass
class Method:
    name: str
    router: Router
    aggregator: Aggregator
    #: deterministic methods give the same answers for every seed; run them once
    seeded: bool = False


class _Builders:
    """Routers and aggregators by their deployment names, built from this deployment's config.

    Going through the registries means a method here is the very object a
    server with that ``routing.strategy`` / ``aggregation.mode`` would run.
    """

    def __init__(self, rt: Runtime, prof: Profiles):
        self.rt = rt
        self.prof = prof

    def router(self, strategy: str, **overrides: object) -> Router:
        return ROUTERS[strategy](self.rt.cfg.routing.model_copy(update=overrides), self.prof)

    def aggregator(self, mode: str) -> Aggregator:
        return AGGREGATORS[mode](self.rt.cfg.aggregation, self.prof)


def standard_methods(rt: Runtime, prof: Profiles) -> list[Method]:
    ranking = prof.ranking()
    build = _Builders(rt, prof)
    vote = build.aggregator("vote")
    # the baselines: fixed expert sets that no deployment strategy names
    methods = [Method("single_best", FixedRouter("single_best", ranking[:1]), vote)]
    for k in range(1, len(ranking) + 1):
        methods.append(Method(f"fixed_top{k}_vote", build.router("fixed", k=k), vote))
    methods += [
        Method("random3_vote", RandomRouter(ranking, 3), vote, seeded=True),
        Method("all_vote", FixedRouter("all", ranking), vote),
        Method("all_weighted_vote", FixedRouter("all", ranking), build.aggregator("weighted_vote")),
        Method("skillmoe_paper", build.router("paper"), vote, seeded=True),
    ]
    if prof.aggregator.get("mode") == "llm":  # the paper's full method: its router and the chosen LLM aggregator
        methods.append(Method("skillmoe_paper_llm", build.router("paper"), build.aggregator("llm"), seeded=True))
    methods += own_methods(rt, prof)
    return methods


def own_methods(rt: Runtime, prof: Profiles) -> list[Method]:
    """This project's strategies (see docs/strategies.md for what was tried and measured)."""
    build = _Builders(rt, prof)
    vote = build.aggregator("vote")
    k = min(5, len(prof.ranking()))
    cfg = rt.cfg.routing
    methods = [
        Method(f"cascade_top{k}_vote", build.router("cascade", k=k), vote),
        Method(f"skillmoe_top{cfg.k}_vote", build.router("top_weight"), vote),
        Method(f"calibrated_top{k}_vote", build.router("calibrated", k=k), vote),
    ]
    return methods + budget_methods(rt, prof)


def budget_methods(rt: Runtime, prof: Profiles, max_calls: Sequence[int] | None = None,
                   size_weights: Sequence[float] = (1.0,)) -> list[Method]:
    """Cost-aware cascades (routing/budget.py): ask until two agree, at most ``max_calls`` experts.

    By default the budgets 3, 4 and ``routing.max_calls``, the per-skill order's
    prior strength chosen by CV on the validation split; at the largest budget
    also the plain validation-rank order (ablation) and the cost-weighted order
    (estimate / size ** w) when the pool's sizes are known (config ``size_gb``,
    else parsed from model names).
    """
    cfg = rt.cfg.routing
    n = len(prof.experts)
    budgets = sorted({min(b, n) for b in (max_calls or (3, 4, cfg.max_calls))})
    build = _Builders(rt, prof)
    ordered = OrderedVoteAggregator()
    # the deployment's router (strategy: budget) at each budget, on this config's other knobs
    plain = {"size_weight": 0.0, "max_size_gb": None}
    methods = [Method(f"budget_max{b}_vote", build.router("budget", max_calls=b, **plain), ordered) for b in budgets]
    top = budgets[-1]
    # ablation: the same cascade in plain validation-rank order (no per-skill estimates)
    methods.append(Method(f"budget_rank_max{top}_vote",
                          BudgetRouter(prof, top, prior_strength=None, name=f"budget_rank_max{top}"), ordered))
    configured = {e.name: e.size_gb for e in rt.experts}
    if expert_sizes(prof.experts, configured):
        for w in size_weights:
            routing = cfg.model_copy(update={"max_calls": top, "size_weight": w, "max_size_gb": None})
            methods.append(Method(f"budget_sized{w:g}_max{top}_vote",
                                  BudgetRouter.from_config(routing, prof, sizes_gb=configured), ordered))
    return methods


def run_method(method: Method, pipeline_for: Callable[[Method], Pipeline], questions: Sequence[Question],
               skills: Sequence[Sequence[str]], seeds: Sequence[int], task: Task) -> dict:
    per_seed, calls = [], []
    cache: dict | None = None
    for seed in seeds:
        if cache is not None and not method.seeded:
            per_seed.append(cache["acc"])
            calls.append(cache["calls"])
            continue
        sols = pipeline_for(method).solve(questions, seed=seed, skills=skills)
        acc = sum(task.is_correct(s.answer, s.question.gold) for s in sols) / len(sols)
        c = sum(s.calls for s in sols) / len(sols)
        per_seed.append(acc)
        calls.append(c)
        cache = {"acc": acc, "calls": c}
    return {
        "accuracy_mean": statistics.fmean(per_seed),
        "accuracy_std": statistics.pstdev(per_seed) if len(per_seed) > 1 else 0.0,
        "per_seed": per_seed,
        "calls_per_question": statistics.fmean(calls),
    }


def evaluate(rt: Runtime, task: Task, seeds: Sequence[int], methods: Sequence[str] | None = None,
             rebuild_profiles: bool = False, sample: int | None = None) -> dict:
    """Every method (or those named) on the test split, or on a fixed random ``sample`` of it."""
    prof = rt.profiles(task, rebuild=rebuild_profiles)
    questions = rt.questions(task, "test")
    if sample and sample < len(questions):
        import random

        picked = sorted(random.Random(0).sample(range(len(questions)), sample))
        questions = [questions[i] for i in picked]
    if rt.progress:
        print(f"extracting skills for {len(questions)} {task.name} test questions")
    skills = rt.skill_stage(prof).skills(questions)
    all_methods = standard_methods(rt, prof)
    if methods:
        wanted = set(methods)
        unknown = wanted - {m.name for m in all_methods}
        if unknown:
            from ..errors import ConfigError

            raise ConfigError(f"unknown method(s): {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(m.name for m in all_methods)}")
        all_methods = [m for m in all_methods if m.name in wanted]

    rt.executor.progress = False  # one bar over methods is enough; replayed experts answer at once
    experts = expert_results(rt, task, prof, questions)

    def pipeline_for(m: Method) -> Pipeline:
        return Pipeline(task, None, m.router, m.aggregator, rt.executor)

    results = {}
    for m in tqdm(all_methods, desc="methods", unit="method", disable=not rt.progress):
        results[m.name] = run_method(m, pipeline_for, questions, skills, seeds, task)
    return {
        "task": task.name,
        "split": "test",
        "n_questions": len(questions),
        "seeds": list(seeds),
        "pool": prof.experts,
        "validation_accuracy": prof.accuracy,
        **experts,
        "aggregator": prof.aggregator,
        "profiles": str(rt.profiles_path(task)),
        "methods": results,
    }


def expert_results(rt: Runtime, task: Task, prof: Profiles, questions: Sequence[Question]) -> dict:
    """What anyone checks first: each expert alone on validation and test, the best of them on test,
    and the oracle (a question counts if any expert of the pool answers it right), with the share of
    each expert's test responses that had no readable answer."""
    outputs = rt.pool_responses(task, questions, "experts on the test split")
    preds = {e: [task.extract(t) for t in outputs[e]] for e in prof.experts}
    correct = {e: [task.is_correct(p, q.gold) for p, q in zip(preds[e], questions)] for e in prof.experts}
    readable = pool_readability([q.qid for q in questions], outputs, preds)
    n = max(len(questions), 1)
    test = {e: sum(c) / n for e, c in correct.items()}
    rank = {e: i for i, e in enumerate(prof.ranking())}
    best = min(prof.experts, key=lambda e: (-test[e], rank[e]))
    return {
        "experts": {e: {"validation_accuracy": prof.accuracy[e], "test_accuracy": test[e],
                        "test_no_answer": readable[e].share_no_answer, "test_readability": readable[e].to_json()}
                    for e in prof.ranking()},
        "best_single_expert": {"name": best, "test_accuracy": test[best],
                               "validation_accuracy": prof.accuracy[best]},
        "oracle_accuracy": sum(any(correct[e][i] for e in prof.experts) for i in range(len(questions))) / n,
    }


def format_table(report: dict) -> str:
    rows = [("method", "accuracy (mean ± std)", "calls/question")]
    for name, r in report["methods"].items():
        rows.append((name, f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}",
                     f"{r['calls_per_question']:.2f}"))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{rows[0][0]:<{w[0]}}  {rows[0][1]:>{w[1]}}  {rows[0][2]:>{w[2]}}", "-" * (sum(w) + 4)]
    lines += [f"{a:<{w[0]}}  {b:>{w[1]}}  {c:>{w[2]}}" for a, b, c in rows[1:]]
    head = (f"{report['task']} test, {report['n_questions']} questions, seeds {','.join(map(str, report['seeds']))}, "
            f"pool of {len(report['pool'])}")
    return head + "\n" + "\n".join(lines) + "\n\n" + format_experts(report)


def format_experts(report: dict) -> str:
    """Each expert alone (validation rank order), the best single expert on test and the oracle."""
    rows = [("expert", "validation", "test", "no answer (test)")]
    for name, r in report["experts"].items():
        rows.append((name, f"{100 * r['validation_accuracy']:.2f}", f"{100 * r['test_accuracy']:.2f}",
                     f"{100 * r['test_no_answer']:.1f}%"))
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"{a:<{w[0]}}  {b:>{w[1]}}  {c:>{w[2]}}  {d:>{w[3]}}" for a, b, c, d in rows[:1]]
    lines.append("-" * (sum(w) + 6))
    lines += [f"{a:<{w[0]}}  {b:>{w[1]}}  {c:>{w[2]}}  {d:>{w[3]}}" for a, b, c, d in rows[1:]]
    best = report["best_single_expert"]
    lines.append(f"best single expert on test: {best['name']} {100 * best['test_accuracy']:.2f}")
    lines.append(f"oracle (any expert of the pool right): {100 * report['oracle_accuracy']:.2f}")
    unread = format_readability({n: Readability.from_json(r["test_readability"])
                                 for n, r in report["experts"].items()}, "test")
    if unread:
        lines += ["responses with no answer read from them:", *unread]
    return "\n".join(lines)


def write_report(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2), encoding="utf-8")


def profile_readability(prof: Profiles) -> list[str]:
    """The validation responses with no readable answer, as profiling counted them (lines to print)."""
    saved = prof.meta.get("readability") or {}
    return format_readability({n: Readability.from_json(r) for n, r in saved.items()}, "validation")
