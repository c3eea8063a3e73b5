"""GPU proof in one run: the copy floor, model switching and decode throughput on one NVIDIA GPU.

Parts, in order, each under a time cap, the results file rewritten after each
(so a run stopped at its limit still returns what it finished):

1. ``env``: the device, driver, torch and transformers, which of the
   project's dependencies import there.
2. ``floor``: host-to-device bandwidth from pinned memory for 1, 4 and 16 GiB
   copies (one pinned and one device buffer, a dedicated stream), plus the
   device-to-device bandwidth (a decode step's roofline).
3. ``switch``: Llama-shaped models of 1B, 3B and 8B with random weights, built
   on the GPU, handed to the transformers engine
   (:meth:`TransformersEngine.adopt`: packed into one pinned host buffer, as a
   model read from disk is), then parked and loaded ``--cycles`` times. Each
   load is compared with the floor (bytes / 16 GiB bandwidth), with one copy of
   exactly the model's buffer into a preallocated device buffer, and with the
   engine's previous way (one ``.to(device)`` per tensor). Logits after the
   switches must equal those before.
4. ``decode``: the 8B shape's decode steps at batch sizes 1-64 through
   ``model.generate`` (what the engine's ``generate`` calls): per-step time =
   (time for N+1 new tokens - time for 1) / N.
5. ``graph``: the same step with a static KV cache replayed as a CUDA graph
   (the GPU's own cost of a step, as an engine with CUDA graphs such as vLLM
   pays it; eager HF decode is bound by kernel launches at small batches).

The device has no Ray, vLLM or (perhaps) pydantic: the engine module is
imported without the package's ``__init__`` if the normal import fails.

    python3 benchmarks/gpu_proof.py --out DIR            # on the GPU machine
    python benchmarks/gpu_proof.py --tiny --out /tmp/p   # on a CPU: tiny shapes, the same code
    python benchmarks/gpu_proof.py --report DIR/gpu_proof.json --name gpu-proof-h200
        # here: benchmarks/results/<name>.{json,md} and <name>-constants.json (refitted simulated constants)
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

GiB = 1 << 30
LLAMA_SHAPES = {  # hidden, intermediate, layers, heads, kv heads, vocab (Llama 3.2 1B, 3B, 3.1 8B)
    "1b": (2048, 8192, 16, 32, 8, 128256),
    "3b": (3072, 8192, 28, 24, 8, 128256),
    "8b": (4096, 14336, 32, 32, 8, 128256),
    "tiny": (64, 128, 2, 4, 2, 512),
    "tiny2": (96, 192, 3, 4, 2, 512),
}
BATCHES = (1, 2, 4, 8, 16, 32, 64)
#: the paper-scale pool's KV read per token per step (deployments/paper-scale-sim.yaml), to split a measured
#: per-sequence cost into step_per_seq_s and the KV part the simulated engine adds on its own
SIM_KV_S_PER_TOKEN = 8.5e-8


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Run:
    """The results so far, written after each part; a global deadline and per-part caps."""

    def __init__(self, out: Path, budget_s: float):
        self.out = out
        self.t0 = time.monotonic()
        self.deadline = self.t0 + budget_s
        self.data: dict = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                           "command": "python3 " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
                           "parts": {}, "errors": {}}
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        tmp = self.out / "gpu_proof.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.out / "gpu_proof.json")

    def part(self, name: str, fn, cap_s: float, need_s: float = 5.0, *a, **kw):
        """Run one part with ``cap_s`` seconds (or what is left of the budget); its error is recorded, not raised."""
        if self.left() < need_s:
            log(f"SKIP {name}: {self.left():.0f} s left, needs ~{need_s:.0f}")
            self.data["errors"][name] = f"skipped: {self.left():.0f} s left"
            self.save()
            return None
        until = time.monotonic() + min(cap_s, self.left())
        log(f"START {name} (cap {min(cap_s, self.left()):.0f} s)")
        t0 = time.monotonic()
        try:
            out = fn(until, *a, **kw)
        except Exception as exc:  # noqa: BLE001 - a part's failure must not lose the others
            log(f"FAIL {name}: {exc!r}")
            self.data["errors"][name] = "".join(traceback.format_exception(exc))[-3000:]
            out = None
        else:
            self.data["parts"][name] = out
            log(f"DONE {name} in {time.monotonic() - t0:.1f} s")
        self.save()
        return out


def import_engine():
    """The transformers engine; without the package's ``__init__`` (which needs pydantic) if that fails."""
    try:
        from skillmoe_ray.engines.transformers_engine import TransformersEngine

        return TransformersEngine, "package import"
    except ImportError as exc:
        import types

        pkg = types.ModuleType("skillmoe_ray.engines")
        pkg.__path__ = [str(ROOT / "skillmoe_ray" / "engines")]
        sys.modules["skillmoe_ray.engines"] = pkg
        from skillmoe_ray.engines.transformers_engine import TransformersEngine

        return TransformersEngine, f"engine module alone ({exc})"


class Dev:
    """CUDA when there is one, else the CPU (the tiny test run): timing and synchronisation either way."""

    def __init__(self):
        import torch

        self.torch = torch
        self.cuda = torch.cuda.is_available()
        self.name = "cuda" if self.cuda else "cpu"

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def timed(self, fn) -> float:
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0

    def empty(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------- parts


def part_env(until: float, dev: Dev) -> dict:
    import torch

    info: dict = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                  "torch": torch.__version__, "cuda_available": dev.cuda}
    try:
        info["memory_gib"] = round(int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    for mod in ("transformers", "pydantic", "yaml", "ray", "vllm", "numpy"):
        try:
            m = __import__(mod)
            info[mod] = getattr(m, "__version__", "present")
        except Exception as exc:  # noqa: BLE001
            info[mod] = f"missing ({type(exc).__name__})"
    if dev.cuda:
        p = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(0), capability=f"{p.major}.{p.minor}",
                    device_memory_gib=round(p.total_memory / GiB, 1), multiprocessors=p.multi_processor_count,
                    torch_cuda=torch.version.cuda)
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,pcie.link.gen.max,"
                                  "pcie.link.width.max", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            info["nvidia_smi"] = out.stdout.strip() or out.stderr.strip()
        except (OSError, subprocess.TimeoutExpired) as exc:
            info["nvidia_smi"] = repr(exc)
    else:
        info["device"] = "cpu (no CUDA: tiny test run)"
    log(json.dumps(info))
    return info


def part_floor(until: float, dev: Dev, sizes_gib: list[float], reps: int) -> dict:
    torch = dev.torch
    nbytes = [int(s * GiB) for s in sizes_gib]
    most = max(nbytes)
    t0 = time.perf_counter()
    host = torch.empty(most, dtype=torch.uint8, pin_memory=dev.cuda)
    pin_s = time.perf_counter() - t0
    d = torch.empty(most, dtype=torch.uint8, device=dev.name)
    stream = torch.cuda.Stream() if dev.cuda else None
    log(f"pinned {most / GiB:.1f} GiB in {pin_s:.2f} s")

    def copy(dst, src) -> None:
        if stream is None:
            dst.copy_(src)
            return
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            dst.copy_(src, non_blocking=True)
        stream.synchronize()

    rows = []
    for n in nbytes:
        times = []
        for i in range(reps + 1):  # the first is a warm-up
            if time.monotonic() > until and len(times) >= 1:
                break
            dt = dev.timed(lambda: copy(d[:n], host[:n]))
            if i:
                times.append(dt)
        if not times:
            times = [dt]
        row = {"gib": n / GiB, "bytes": n, "reps": len(times), "best_s": min(times),
               "median_s": statistics.median(times), "gbps_best": n / min(times) / 1e9,
               "gbps_median": n / statistics.median(times) / 1e9}
        rows.append(row)
        log(f"H2D {n / GiB:5.2f} GiB: median {row['median_s'] * 1e3:8.2f} ms = {row['gbps_median']:6.2f} GB/s "
            f"(best {row['gbps_best']:.2f})")
    out = {"pin_s": pin_s, "h2d": rows}
    # the other directions, once each (context: parking a model read on the GPU, and a decode step's roofline)
    n = nbytes[-1]
    dt = dev.timed(lambda: copy(host[:n], d[:n]))
    out["d2h"] = {"bytes": n, "s": dt, "gbps": n / dt / 1e9}
    half = min(n, 4 * GiB) // 2
    times = [dev.timed(lambda: d[half:2 * half].copy_(d[:half])) for _ in range(4)][1:]
    out["d2d"] = {"bytes": half, "median_s": statistics.median(times),
                  "gbps_read_plus_write": 2 * half / statistics.median(times) / 1e9}
    log(f"D2H {out['d2h']['gbps']:.2f} GB/s; D2D {out['d2d']['gbps_read_plus_write']:.0f} GB/s (read + write)")
    host = d = None  # noqa: F841 - freed before the next part
    dev.empty()
    return out


def build_llama(dev: Dev, shape: str):
    """A Llama-shaped model with random bf16 weights, built on the device (fast) rather than on the CPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    h, inter, layers, heads, kv, vocab = LLAMA_SHAPES[shape]
    conf = LlamaConfig(hidden_size=h, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=kv, vocab_size=vocab, tie_word_embeddings=False,
                       max_position_embeddings=4096, bos_token_id=1, eos_token_id=None, pad_token_id=0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(dev.name):
            model = LlamaForCausalLM(conf)
    finally:
        torch.set_default_dtype(old)
    with torch.no_grad():
        for p in model.parameters():  # random, whatever the library's init did (or skipped)
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.eval()


def part_switch(until: float, dev: Dev, shapes: list[str], cycles: int, floor: dict | None, keep: dict) -> dict:
    torch = dev.torch
    Engine, how = import_engine()
    log(f"engine imported: {how}")
    bw16 = floor["h2d"][-1]["gbps_median"] if floor else None
    rows = []
    for shape in shapes:
        if time.monotonic() > until:
            log(f"switch: out of time before {shape}")
            break
        t0 = time.perf_counter()
        model = build_llama(dev, shape)
        dev.sync()
        build_s = time.perf_counter() - t0
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        eng = Engine(f"random-{shape}", "unused", {"device": dev.name, "host_copy": True, "free_on_park": False})
        adopt_s = dev.timed(lambda: eng.adopt(model))
        first_load_s = eng.last_load_s
        w = eng._weights
        log(f"{shape}: {size / 1e9:.2f} GB built in {build_s:.1f} s, packed to host + first load {adopt_s:.2f} s "
            f"(load {first_load_s:.3f} s)")
        ids = torch.randint(0, model.config.vocab_size, (1, 16), device=dev.name)
        with torch.inference_mode():
            want = model(ids).logits[:, -1].float().cpu()
        parks, loads = [], []
        for _ in range(cycles):
            parks.append(dev.timed(eng.park))
            loads.append(dev.timed(eng.load))
            if time.monotonic() > until and len(loads) >= 2:
                break
        with torch.inference_mode():
            got = model(ids).logits[:, -1].float().cpu()
        exact = bool(torch.equal(got, want))
        # the same with free_on_park: the park gives the block back to the driver, the load allocates anew
        eng.args["free_on_park"] = True
        freed = []
        for _ in range(max(2, min(3, cycles))):
            eng.park()
            freed.append(dev.timed(eng.load))
        eng.args["free_on_park"] = False
        # the floor for exactly these bytes: one copy of the packed buffer into a device buffer that already exists
        eng.park()
        target = torch.empty(w.nbytes, dtype=torch.uint8, device=dev.name)
        stream = torch.cuda.Stream() if dev.cuda else None

        def copy_only() -> None:
            if stream is None:
                target.copy_(w.buffer)
                return
            with torch.cuda.stream(stream):
                target.copy_(w.buffer, non_blocking=True)
            stream.synchronize()

        copies = [dev.timed(copy_only) for _ in range(3)]
        target = None  # noqa: F841
        dev.empty()
        alloc_s = dev.timed(lambda: torch.empty(w.nbytes, dtype=torch.uint8, device=dev.name))  # a fresh allocation
        dev.empty()
        # the engine's previous way: one .to(device) per tensor, every tensor a fresh allocation
        legacy = []
        for _ in range(max(1, min(3, cycles))):
            def per_tensor() -> None:
                for (p, _), view in zip(w.params, w._host_views):
                    p.data = view.to(dev.name, non_blocking=True)

            legacy.append(dev.timed(per_tensor))
            w.to_host()
            dev.empty()
            if time.monotonic() > until:
                break
        eng.load()
        row = {"shape": shape, "bytes": size, "packed_bytes": w.nbytes, "pinned": w.pinned, "tensors": len(w.params),
               "build_s": build_s, "adopt_s": adopt_s, "first_load_s": first_load_s,
               "park_s": parks, "load_s": loads, "load_median_s": statistics.median(loads),
               "switch_median_s": statistics.median([a + b for a, b in zip(parks, loads)]),
               "copy_only_median_s": statistics.median(copies), "alloc_s": alloc_s,
               "legacy_load_s": legacy, "legacy_median_s": statistics.median(legacy), "logits_exact": exact,
               "free_on_park_load_s": freed, "free_on_park_median_s": statistics.median(freed)}
        if bw16:
            row["floor_s"] = size / (bw16 * 1e9)
            row["load_vs_floor"] = row["load_median_s"] / row["floor_s"]
            row["switch_vs_floor"] = row["switch_median_s"] / row["floor_s"]
            row["legacy_vs_floor"] = row["legacy_median_s"] / row["floor_s"]
            row["free_on_park_vs_floor"] = row["free_on_park_median_s"] / row["floor_s"]
        row["load_vs_copy_only"] = row["load_median_s"] / row["copy_only_median_s"]
        rows.append(row)
        log(f"{shape}: load median {row['load_median_s'] * 1e3:.1f} ms, park {statistics.median(parks) * 1e3:.1f} ms, "
            f"copy only {row['copy_only_median_s'] * 1e3:.1f} ms, free_on_park load "
            f"{row['free_on_park_median_s'] * 1e3:.1f} ms, alloc {alloc_s * 1e3:.1f} ms, per-tensor (old) "
            f"{row['legacy_median_s'] * 1e3:.1f} ms, floor {row.get('floor_s', float('nan')) * 1e3:.1f} ms "
            f"-> {row.get('load_vs_floor', float('nan')):.2f}x; logits exact: {exact}")
        keep.setdefault("engines", {})[shape] = eng
        if shape == shapes[-1]:
            keep["engine"], keep["model"] = eng, model  # the largest stays loaded for the decode parts
        else:
            eng.park()
    return {"engine_import": how, "floor_gbps": bw16, "rows": rows}


def part_alternate(until: float, dev: Dev, keep: dict, cycles: int, floor_gbps: float | None) -> dict:
    """A worker's switches: park the loaded model, load the next one (another size), round and round."""
    engines = keep["engines"]
    order = list(engines)
    current = engines[order[-1]]
    times: dict = {n: {"park_s": [], "load_s": []} for n in order}
    for _ in range(cycles):
        for name in order:
            if time.monotonic() > until:
                break
            nxt = engines[name]
            if nxt is current:
                continue
            times[name]["park_s"].append(dev.timed(current.park))
            times[name]["load_s"].append(dev.timed(nxt.load))
            current = nxt
    if current is not keep["engine"]:
        current.park()
        keep["engine"].load()
    for name in order[:-1]:  # the smaller ones are done
        engines[name].release()
    dev.empty()
    rows = []
    for name in order:
        t = times[name]
        if not t["load_s"]:
            continue
        size = keep["switch_bytes"][name]
        switch = statistics.median([a + b for a, b in zip(t["park_s"], t["load_s"])])
        row = {"into": name, "bytes": size, "switches": len(t["load_s"]), **t,
               "load_median_s": statistics.median(t["load_s"]), "switch_median_s": switch}
        if floor_gbps:
            row["floor_s"] = size / (floor_gbps * 1e9)
            row["load_vs_floor"] = row["load_median_s"] / row["floor_s"]
            row["switch_vs_floor"] = switch / row["floor_s"]
        rows.append(row)
        log(f"alternate into {name}: load median {row['load_median_s'] * 1e3:.1f} ms, park + load "
            f"{switch * 1e3:.1f} ms -> {row.get('switch_vs_floor', float('nan')):.2f}x floor")
    return {"order": order, "rows": rows}


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares y = a + b x."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - b * mx, b


def part_decode(until: float, dev: Dev, keep: dict, prompt: int, new: int, batches: tuple[int, ...]) -> dict:
    torch = dev.torch
    model = keep["model"]
    vocab = model.config.vocab_size

    def gen(ids, n: int) -> None:
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=0)

    warm = torch.randint(2, vocab, (1, prompt), device=dev.name)
    gen(warm, 3)
    rows = []
    for bs in batches:
        if time.monotonic() > until:
            log(f"decode: out of time before batch {bs}")
            break
        ids = torch.randint(2, vocab, (bs, prompt), device=dev.name)
        t1 = min(dev.timed(lambda: gen(ids, 1)) for _ in range(2))
        tn = dev.timed(lambda: gen(ids, new + 1))
        step = (tn - t1) / new
        rows.append({"batch": bs, "prefill_plus_one_s": t1, "total_s": tn, "new_tokens": new + 1, "step_s": step,
                     "tokens_per_s": bs / step})
        log(f"eager decode bs={bs:3d}: step {step * 1e3:7.2f} ms, {bs / step:8.1f} tok/s (prefill+1 {t1 * 1e3:.1f} ms)")
    out = {"prompt_tokens": prompt, "rows": rows}
    if len(rows) >= 2:
        a, b = fit_line([r["batch"] for r in rows], [r["step_s"] for r in rows])
        out["fit"] = {"step_fixed_s": a, "step_per_seq_s": b}
    return out


def part_graph(until: float, dev: Dev, keep: dict, prompt: int, new: int, batches: tuple[int, ...]) -> dict:
    """Decode steps with a static KV cache, replayed as a CUDA graph (eager on a CPU: the same calls, untimed)."""
    torch = dev.torch
    from transformers import StaticCache

    model = keep["model"]
    vocab = model.config.vocab_size
    rows = []
    for bs in batches:
        if time.monotonic() > until:
            log(f"graph: out of time before batch {bs}")
            break
        cache = StaticCache(config=model.config, max_cache_len=prompt + new + 16)
        ids = torch.randint(2, vocab, (bs, prompt), device=dev.name)
        with torch.inference_mode():
            out = model(input_ids=ids, past_key_values=cache, use_cache=True,
                        cache_position=torch.arange(prompt, device=dev.name))
            tok = out.logits[:, -1:].argmax(-1)
            pos = torch.tensor([prompt], device=dev.name)
            pos_ids = torch.full((bs, 1), prompt, device=dev.name, dtype=torch.long)

            def step():
                return model(input_ids=tok, past_key_values=cache, cache_position=pos, position_ids=pos_ids,
                             use_cache=True).logits

            graph = None
            if dev.cuda:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(2):
                        step()
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    logits = step()
                run = graph.replay
            else:
                logits = step()
                run = step
            eager_step = dev.timed(step)

            def steps() -> None:
                for _ in range(new):
                    run()
                    pos.add_(1)
                    pos_ids.add_(1)

            pos.fill_(prompt)
            pos_ids.fill_(prompt)
            total = dev.timed(steps)
            assert logits.shape[0] == bs
        s = total / new
        rows.append({"batch": bs, "step_s": s, "tokens_per_s": bs / s, "steps": new, "eager_static_step_s": eager_step})
        log(f"graph decode bs={bs:3d}: step {s * 1e3:7.2f} ms, {bs / s:8.1f} tok/s "
            f"(the same step eager: {eager_step * 1e3:.1f} ms)")
        cache = logits = graph = None  # noqa: F841 - freed before the next batch
    out = {"prompt_tokens": prompt, "rows": rows}
    if len(rows) >= 2:
        a, b = fit_line([r["batch"] for r in rows], [r["step_s"] for r in rows])
        out["fit"] = {"step_fixed_s": a, "step_per_seq_s": b}
    return out


def part_variants(until: float, dev: Dev, keep: dict, cycles: int) -> dict:
    """Where a load's time over one plain copy goes: the ways to bring the largest parked model back, each after
    the engine's park (device memory given back), timed from there to weights in place."""
    torch = dev.torch
    eng = keep["engine"]
    w = eng._weights
    stream = torch.cuda.Stream() if dev.cuda else None
    chunk = 256 << 20

    def on_stream(fn) -> None:
        if stream is None:
            fn()
            return
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
        stream.synchronize()

    def fresh() -> object:
        return torch.empty(w.nbytes, dtype=torch.uint8, device=dev.name)

    def one_copy() -> None:
        d = fresh()
        on_stream(lambda: d.copy_(w.buffer, non_blocking=True))

    def chunked() -> None:
        d = fresh()

        def go() -> None:
            for i in range(0, w.nbytes, chunk):
                d[i:i + chunk].copy_(w.buffer[i:i + chunk], non_blocking=True)
        on_stream(go)

    def per_tensor_into_flat() -> None:
        d = fresh()

        def go() -> None:
            for (p, off), view in zip(w.params, w._host_views):
                w._view(d, p, off).copy_(view, non_blocking=True)
        on_stream(go)

    def per_tensor_to() -> None:
        held = [view.to(dev.name, non_blocking=True) for view in w._host_views]
        dev.sync()
        held.clear()

    def touch_then_copy() -> dict:
        d = fresh()
        t_touch = dev.timed(lambda: d.zero_())
        t_copy = dev.timed(lambda: on_stream(lambda: d.copy_(w.buffer, non_blocking=True)))
        return {"touch_s": t_touch, "copy_s": t_copy}

    eng.park()
    out: dict = {}
    for name, fn in (("engine_load", None), ("one_copy_fresh", one_copy), ("chunked_256MiB_fresh", chunked),
                     ("per_tensor_into_flat_fresh", per_tensor_into_flat), ("per_tensor_to_fresh", per_tensor_to)):
        times = []
        for _ in range(cycles):
            if time.monotonic() > until:
                break
            dev.empty()
            if fn is None:
                times.append(dev.timed(eng.load))
                eng.park()
            else:
                times.append(dev.timed(fn))
        dev.empty()
        if times:
            out[name] = {"s": times, "median_s": statistics.median(times)}
            log(f"variant {name:28s}: median {statistics.median(times) * 1e3:7.1f} ms  "
                f"{[round(t * 1e3, 1) for t in times]}")
    tt = [touch_then_copy() for _ in range(2)]
    dev.empty()
    out["touch_then_copy"] = tt
    log(f"variant touch then copy: {[{k: round(v * 1e3, 1) for k, v in x.items()} for x in tt]}")
    # the engine's load with a pause after the park's empty_cache (does the driver finish freeing lazily?)
    times = []
    for _ in range(cycles):
        dev.empty()
        time.sleep(0.5)
        times.append(dev.timed(eng.load))
        eng.park()
    out["engine_load_after_pause"] = {"s": times, "median_s": statistics.median(times)}
    log(f"variant engine load after 0.5 s pause: {[round(t * 1e3, 1) for t in times]}")
    # the device buffer kept between loads (no empty_cache): what reuse would give
    d = fresh()
    times = [dev.timed(lambda: on_stream(lambda: d.copy_(w.buffer, non_blocking=True))) for _ in range(cycles)]
    out["one_copy_reused"] = {"s": times, "median_s": statistics.median(times)}
    log(f"variant one copy reused buffer: {[round(t * 1e3, 1) for t in times]}")
    d = None  # noqa: F841
    dev.empty()
    eng.load()
    return out


def run(args) -> int:
    dev = Dev()
    tiny = args.tiny or not dev.cuda
    r = Run(Path(args.out), args.budget_s)
    r.data["tiny"] = tiny
    keep: dict = {}
    shapes = args.shapes.split(",") if args.shapes else (["tiny", "tiny2"] if tiny else ["1b", "3b", "8b"])
    sizes = [float(s) for s in args.sizes.split(",")] if args.sizes else ([1 / 256, 1 / 64] if tiny else [1, 4, 16])
    prompt, new = (8, 4) if tiny else (args.prompt, args.new_tokens)
    batches = (1, 2, 4) if tiny else BATCHES
    parts = args.parts.split(",")
    r.data["env"] = r.part("env", part_env, 30, 1, dev) or {}
    floor = r.part("floor", part_floor, 60, 10, dev, sizes, args.reps) if "floor" in parts else None
    if "switch" in parts:
        sw = r.part("switch", part_switch, 150, 20, dev, shapes, args.cycles, floor, keep)
        if sw and "alternate" in parts and len(keep.get("engines", {})) > 1:
            keep["switch_bytes"] = {row["shape"]: row["bytes"] for row in sw["rows"]}
            r.part("alternate", part_alternate, 40, 10, dev, keep, 3, sw["floor_gbps"])
    if "model" in keep:
        if "decode" in parts:
            r.part("decode", part_decode, 60, 10, dev, keep, prompt, new, batches)
        if "graph" in parts:
            r.part("graph", part_graph, 60, 10, dev, keep, prompt, new, batches)
        if "variants" in parts:
            r.part("variants", part_variants, 90, 10, dev, keep, args.cycles)
        keep["engine"].release()
    log(f"all done in {time.monotonic() - r.t0:.0f} s; errors: {list(r.data['errors'])}")
    return 0


# ---------------------------------------------------------------------------------------------- report (here)


def refit(data: dict) -> dict:
    """The simulated engine's constants from the measurements (CostConstants field names)."""
    parts = data["parts"]
    out: dict = {}
    src = "graph" if parts.get("graph", {}).get("fit") else "decode"
    dec = parts.get(src, {})
    if dec.get("fit"):
        new = max(r.get("steps", r.get("new_tokens", 1) - 1) for r in dec["rows"])
        ctx = dec["prompt_tokens"] + new / 2  # a sequence's mean context over the measured steps
        out["step_fixed_s"] = dec["fit"]["step_fixed_s"]
        # the simulated engine adds kv_s_per_token * context per sequence on its own
        out["step_per_seq_s"] = max(0.0, dec["fit"]["step_per_seq_s"] - SIM_KV_S_PER_TOKEN * ctx)
        out["_decode_source"] = src
        out["_per_seq_measured_s"] = dec["fit"]["step_per_seq_s"]
        out["_mean_context_tokens"] = ctx
    sw = parts.get("switch", {})
    rows = sw.get("rows", [])
    if len(rows) >= 2:  # load = wake_fixed_s + GB / h2d_gbps, over the sizes
        a, b = fit_line([r["bytes"] / 1e9 for r in rows], [r["load_median_s"] for r in rows])
        if b > 0:
            out["h2d_gbps"] = 1.0 / b
            out["wake_fixed_s"] = max(0.0, a)
    return out


def report(args) -> int:
    from _common import markdown_table

    data = json.loads(Path(args.report).read_text())
    env, parts = data.get("env", {}), data["parts"]
    name = args.name
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    md = [f"# {name}\n",
          f"Device: {env.get('device')} ({env.get('nvidia_smi', '')}), torch {env.get('torch')} (CUDA "
          f"{env.get('torch_cuda')}), transformers {env.get('transformers')}, {env.get('cpus')} CPUs.  ",
          f"Date: {data['date']}  ",
          f"Command (on the device, repo root): `{data['command']}`; report: "
          f"`python benchmarks/gpu_proof.py --report {os.path.basename(args.report)} --name {name}`.  ",
          f"Engine import there: {parts.get('switch', {}).get('engine_import', '?')}.\n"]
    if "floor" in parts:
        f = parts["floor"]
        md.append("## Floor: host-to-device from pinned memory\n")
        md.append(markdown_table(["copy", "median ms", "GB/s (median)", "GB/s (best)", "reps"], [
            [f"{r['gib']:g} GiB", f"{r['median_s'] * 1e3:.1f}", f"{r['gbps_median']:.2f}", f"{r['gbps_best']:.2f}",
             r["reps"]] for r in f["h2d"]]))
        md.append(f"\nPinning the 16 GiB buffer took {f['pin_s']:.2f} s. Device to host: {f['d2h']['gbps']:.2f} GB/s; "
                  f"device to device: {f['d2d']['gbps_read_plus_write']:.0f} GB/s (read + write).\n")
    if "switch" in parts:
        md.append("## Switching: park to pinned host memory and back (transformers engine)\n")
        md.append(markdown_table(
            ["model", "GB", "floor ms", "load ms", "load / floor", "park ms", "park + load / floor",
             "free_on_park load ms", "/ floor", "one copy ms", "old per-tensor ms", "/ floor", "logits exact"],
            [[f"llama-{r['shape']} (random)", f"{r['bytes'] / 1e9:.2f}", f"{r.get('floor_s', float('nan')) * 1e3:.0f}",
              f"{r['load_median_s'] * 1e3:.0f}", f"{r.get('load_vs_floor', float('nan')):.2f}x",
              f"{statistics.median(r['park_s']) * 1e3:.1f}", f"{r.get('switch_vs_floor', float('nan')):.2f}x",
              f"{r['free_on_park_median_s'] * 1e3:.0f}", f"{r.get('free_on_park_vs_floor', float('nan')):.2f}x",
              f"{r['copy_only_median_s'] * 1e3:.0f}", f"{r['legacy_median_s'] * 1e3:.0f}",
              f"{r.get('legacy_vs_floor', float('nan')):.2f}x", r["logits_exact"]] for r in parts["switch"]["rows"]]))
        md.append("\nMedians. Floor = bytes / the 16 GiB copy's median bandwidth. Load = the engine's `load()` of "
                  "the model just parked (one device allocation, served from torch's cache, one copy of the packed "
                  "pinned buffer on the model's stream, the parameters pointed at their views). free_on_park = the "
                  "same with the park giving the block back to the driver. One copy = the packed buffer into a "
                  "device buffer that already exists. Old = the engine before this change (one `.to(device)` per "
                  "tensor, after the memory was given back). Loads per size: "
                  + ", ".join(f"{r['shape']} {len(r['load_s'])}" for r in parts["switch"]["rows"]) + ".\n")
    if "alternate" in parts:
        md.append("## A worker's switches: park the loaded model, load another\n")
        md.append(markdown_table(["into", "GB", "switches", "park ms", "load ms", "floor ms", "load / floor",
                                  "park + load / floor"], [
            [f"llama-{r['into']}", f"{r['bytes'] / 1e9:.2f}", r["switches"], f"{statistics.median(r['park_s']) * 1e3:.1f}",
             f"{r['load_median_s'] * 1e3:.0f}", f"{r.get('floor_s', float('nan')) * 1e3:.0f}",
             f"{r.get('load_vs_floor', float('nan')):.2f}x", f"{r.get('switch_vs_floor', float('nan')):.2f}x"]
            for r in parts["alternate"]["rows"]]))
        md.append("\nRound robin " + " -> ".join(parts["alternate"]["order"]) + ", medians.\n")
    if "variants" in parts:
        md.append("## Ways to bring the 8B back (where the time over one copy goes)\n")
        v = parts["variants"]
        md.append(markdown_table(["variant", "median ms", "each ms"], [
            [k, f"{x['median_s'] * 1e3:.1f}", ", ".join(f"{t * 1e3:.1f}" for t in x["s"])]
            for k, x in v.items() if isinstance(x, dict) and "median_s" in x]))
        md.append("\nEach after the memory was given back (`empty_cache`) except `one_copy_reused`; "
                  "touch then copy: " + "; ".join(f"{t['touch_s'] * 1e3:.1f} + {t['copy_s'] * 1e3:.1f} ms"
                                                  for t in v.get("touch_then_copy", [])) + ".\n")
    for key, title in (("decode", "Decode, eager (`model.generate`, as the engine's `generate`)"),
                       ("graph", "Decode, static KV cache replayed as a CUDA graph")):
        if key in parts and parts[key]["rows"]:
            d = parts[key]
            md.append(f"## {title}: 8B shape, prompt {d['prompt_tokens']} tokens\n")
            graph = key == "graph"
            md.append(markdown_table(["batch", "step ms", "tokens/s"] + (["same step, eager, ms"] if graph else []), [
                [r["batch"], f"{r['step_s'] * 1e3:.2f}", f"{r['tokens_per_s']:.0f}"]
                + ([f"{r['eager_static_step_s'] * 1e3:.1f}"] if graph else []) for r in d["rows"]]))
            if d.get("fit"):
                md.append(f"\nLeast squares: step = {d['fit']['step_fixed_s'] * 1e3:.2f} ms + "
                          f"{d['fit']['step_per_seq_s'] * 1e6:.1f} us x batch.\n")
    constants = refit(data)
    if constants:
        md.append("## Refitted simulated-engine constants\n")
        md.append("```json\n" + json.dumps(constants, indent=2) + "\n```\n")
        cpath = res / f"{name}-constants.json"
        cpath.write_text(json.dumps({k: v for k, v in constants.items() if not k.startswith("_")}, indent=2) + "\n")
        md.append(f"Written (without the `_` notes) to `{cpath.relative_to(ROOT)}` for "
                  f"`benchmarks/latency.py --constants`.\n")
    if data.get("errors"):
        md.append("## Parts that failed or were skipped\n")
        md.append("\n".join(f"- {k}: `{v.strip().splitlines()[-1]}`" for k, v in data["errors"].items()) + "\n")
    (res / f"{name}.json").write_text(json.dumps({**data, "refit": constants}, indent=2) + "\n")
    (res / f"{name}.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu_proof"), help="folder for gpu_proof.json")
    p.add_argument("--tiny", action="store_true", help="tiny shapes and sizes (what a CPU run does anyway)")
    p.add_argument("--budget-s", type=float, default=280.0, help="stop starting parts after this many seconds")
    p.add_argument("--shapes", default=None, help="comma-separated (default 1b,3b,8b; tiny: tiny,tiny2)")
    p.add_argument("--sizes", default=None, help="floor copy sizes in GiB (default 1,4,16)")
    p.add_argument("--parts", default="floor,switch,alternate,decode,graph,variants",
                   help="parts after env (default floor,switch,alternate,decode,graph,variants)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--cycles", type=int, default=5)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--report", default=None, help="a gpu_proof.json to write up under benchmarks/results")
    p.add_argument("--name", default="gpu-proof-h200")
    args = p.parse_args(argv)
    return report(args) if args.report else run(args)


if __name__ == "__main__":
    sys.exit(main())
