"""Model switching time per model size, against the hardware floor.

Two modes:

* ``--config deployments/local-cpu.yaml`` (default): the real packaged pool on
  this machine. For each expert: cold load, generate, release, and then
  ``--cycles`` alternations with the next expert on one engine slot, timing
  every switch (release + load). The floor on a CPU is reading the weights once
  from the page cache (measured: bytes / memory copy bandwidth).
* ``--random-shapes 1b,3b,8b`` (GPU machine): Llama-shaped models with random
  weights built on the GPU box itself (no hub), parked in pinned host memory
  by the transformers engine and brought back; the floor is the bytes over the
  measured pinned host-to-device bandwidth. Goal: within 1.5x of the floor for
  the 8B shape (vLLM's own sleep/wake takes about 2.2 s for 8B).
  ``benchmarks/gpu_proof.py`` is the fuller GPU run (floor at 1, 4 and 16 GiB,
  switches between sizes, decode throughput); its H200 figures are in
  benchmarks/results/gpu-proof-h200.md.

Writes benchmarks/results/swap-<device>.json and .md.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def host_copy_gbps(nbytes: int = 1 << 30) -> float:
    """Memory copy bandwidth on this host (the CPU floor's denominator)."""
    import numpy as np

    src = np.ones(nbytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return nbytes / best / 1e9


def folder_bytes(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


def bench_pool(config: str, cycles: int, engine_kind: str | None) -> tuple[list[dict], dict]:
    from skillmoe_ray.config import load_config
    from skillmoe_ray.engines.base import GenerationRequest, SamplingSettings
    from skillmoe_ray.engines.registry import create_engine
    from skillmoe_ray.models import resolve_model
    from skillmoe_ray.pool import pool_experts

    cfg = load_config(config)
    experts = pool_experts(cfg)
    if engine_kind:
        experts = [e.model_copy(update={"engine": engine_kind}) for e in experts]
    gbps = host_copy_gbps()
    req = [GenerationRequest.user("What is 7*8? Answer with the number only.")]
    sampling = SamplingSettings(temperature=0.0, max_tokens=8, seed=0)
    rows = []
    engines = {}
    for e in experts:
        path = resolve_model(e.model, progress=True)
        eng = create_engine(e)
        t0 = time.perf_counter()
        eng.load()
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        eng.generate(req, sampling)
        gen = time.perf_counter() - t0
        t0 = time.perf_counter()
        eng.release()
        rel = time.perf_counter() - t0
        engines[e.name] = eng
        nbytes = folder_bytes(path)
        rows.append({"model": e.name, "engine": e.engine, "bytes": nbytes, "cold_load_s": cold, "generate_s": gen,
                     "release_s": rel, "floor_s": nbytes / (gbps * 1e9)})
    # alternate neighbours on one slot as a worker does: every switch = park the current + load the next
    # (vLLM on CPU has no sleep mode, so its park is a release; transformers keeps host weights)
    names = [r["model"] for r in rows]
    switches: dict[str, list[float]] = {n: [] for n in names}
    current = None
    for i in range(cycles * len(names)):
        nxt = names[i % len(names)]
        t0 = time.perf_counter()
        if current is not None:
            engines[current].park()
        engines[nxt].load()
        switches[nxt].append(time.perf_counter() - t0)
        engines[nxt].generate(req, sampling)
        current = nxt
    for eng in engines.values():
        eng.release()
    for r in rows:
        s = switches[r["model"]]
        r["switch_median_s"] = statistics.median(s) if s else float("nan")
        r["switches"] = len(s)
        r["vs_floor"] = r["switch_median_s"] / r["floor_s"] if r["floor_s"] else float("nan")
    return rows, {"host_copy_gbps": gbps}


def bench_random_shapes(shapes: list[str], cycles: int) -> tuple[list[dict], dict]:
    import torch

    from skillmoe_ray.engines.transformers_engine import TransformersEngine

    if not torch.cuda.is_available():
        raise SystemExit("--random-shapes needs a CUDA GPU")
    nbytes = 1 << 30
    host = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    best = float("inf")
    for _ in range(5):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        dev.copy_(host, non_blocking=True)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    h2d = nbytes / best / 1e9
    del host, dev
    from gpu_proof import Dev, build_llama

    dev = Dev()
    rows = []
    for shape in shapes:
        model = build_llama(dev, shape)  # random weights, built on the GPU
        eng = TransformersEngine(f"random-{shape}", "unused", {"device": "cuda"})
        eng.adopt(model)  # packed into pinned host memory as a read model is, then loaded
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        waits = []
        for _ in range(cycles):
            eng.park()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            eng.load()
            waits.append(time.perf_counter() - t0)
        floor = size / (h2d * 1e9)
        rows.append({"model": f"llama-{shape} (random)", "engine": "transformers", "bytes": size,
                     "switch_median_s": statistics.median(waits), "switches": len(waits), "floor_s": floor,
                     "vs_floor": statistics.median(waits) / floor})
        eng.release()
        del model
        gc.collect()
        torch.cuda.empty_cache()
    return rows, {"h2d_pinned_gbps": h2d, "device": torch.cuda.get_device_name(0)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "deployments" / "local-cpu.yaml"))
    p.add_argument("--engine", choices=["vllm", "transformers"], help="override the pool's engine")
    p.add_argument("--cycles", type=int, default=3)
    p.add_argument("--random-shapes", help="comma-separated Llama shapes (1b,3b,8b): GPU mode")
    args = p.parse_args()
    if args.random_shapes:
        rows, extra = bench_random_shapes(args.random_shapes.split(","), args.cycles)
        name = "swap-gpu"
    else:
        rows, extra = bench_pool(args.config, args.cycles, args.engine)
        name = f"swap-cpu-{args.engine or 'config'}"
    table = markdown_table(
        ["model", "engine", "GB", "cold load s", "switch median s", "floor s", "switch / floor"],
        [[r["model"], r["engine"], f"{r['bytes'] / 1e9:.2f}", f"{r.get('cold_load_s', float('nan')):.2f}",
          f"{r['switch_median_s']:.3f}", f"{r['floor_s']:.3f}", f"{r['vs_floor']:.1f}x"] for r in rows])
    print(table)
    print(extra)
    jpath, _ = write_results(name, {"rows": rows, **extra}, table + "\n\n" + str(extra))
    print(f"results: {jpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
