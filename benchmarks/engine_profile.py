"""Where the paged engine's time goes on the engine benchmark's works.

Runs work A (8 prompts x 16 samples x 64 tokens: decode at batch 128) and
work B (one ~1,000-token prompt x 16 x 64: prefill of the shared prompt, then
decode at batch 16 over a 1k context) on a fresh engine each, under
cProfile, and sorts the time into the calls the forward pass makes: matrix
products (oneDNN), decode attention, prefill attention, the element-wise
kernels (RMSNorm, RoPE + KV store, SiLU-mul), sampling, and the rest (Python:
scheduling, batch tensors, bookkeeping). Also prints what the matrix
products alone of one decode step take, timed bare at the work's batch.

    python -P benchmarks/engine_profile.py [--threads N]

Run it under `flock /tmp/ttsc-heavy.lock` where others share the machine;
the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import json
import os
import pstats
import sys
import time

import torch

CATEGORIES = {  # a substring of the profiled function's name -> its category
    "_linear_pointwise": "matmul", "linear": "matmul",
    "decode_attention": "decode attention", "prefill_attention": "prefill attention",
    "rms_norm": "element-wise", "silu_mul": "element-wise", "rope_store": "element-wise",
    "sample": "sampling",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bench = _engine_benchmark()
    from ttsc.runtime.engines.base import Prompt
    from ttsc.runtime.engines.paged.engine import PagedEngine

    loaded = bench.load_model(bench.SMOLLM2)
    probe = PagedEngine(loaded, kv_memory_bytes=64 << 20)
    works = {"work_a": [Prompt.user(q) for q in bench.QUESTIONS],
             "work_b": [bench.few_shot_prompt(probe, target_tokens=1000)]}
    layers = bench.linear_layers(probe)
    result: dict = {"threads": torch.get_num_threads(), "load_average_start": os.getloadavg()[0]}
    for name, prompts in works.items():
        engine = bench.served_engine(loaded, probe.dtype, prompts, bench.NEW_TOKENS)
        profile = cProfile.Profile()
        t0 = time.perf_counter()
        profile.enable()
        figures = bench.run_engine(engine, prompts, bench.NEW_TOKENS)
        profile.disable()
        wall = time.perf_counter() - t0
        engine.close()
        split = breakdown(profile, wall)
        batch = len(prompts) * bench.SAMPLES
        bare = bench.gemm_seconds(layers, batch, probe.dtype, packed=True)
        decode_steps = bench.NEW_TOKENS - 1  # the first token comes with the prefill
        result[name] = {"wall_s": wall, "tok_s": figures["engine_tok_s"], "seconds": split,
                        "decode_batch": batch, "bare_matmul_step_ms": bare * 1e3,
                        "bare_matmul_decode_s": bare * decode_steps,
                        "load_average": os.getloadavg()[0]}
        print(f"{name}: {wall:.2f}s, {figures['engine_tok_s']:.0f} tok/s, load {os.getloadavg()[0]:.2f}; "
              + ", ".join(f"{k} {v:.2f}s ({v / wall:.0%})" for k, v in split.items())
              + f"; bare matmuls of one decode step at batch {batch}: {bare * 1e3:.1f} ms "
              f"(x {decode_steps} decode steps = {bare * decode_steps:.2f}s)", flush=True)
    print(json.dumps(result))


def breakdown(profile: cProfile.Profile, wall: float) -> dict[str, float]:
    """Seconds spent inside each category's calls (their own time), and the rest."""
    seconds = {category: 0.0 for category in dict.fromkeys(CATEGORIES.values())}
    for (_, _, function), row in pstats.Stats(profile).stats.items():
        own = row[2]  # tottime: time inside the function itself
        for needle, category in CATEGORIES.items():
            if needle in function and function.startswith(("<built-in", "<method")):
                seconds[category] += own
                break
    seconds["other (Python, tensors)"] = wall - sum(seconds.values())
    return seconds


def _engine_benchmark():
    """benchmarks/engine.py, loaded by path (the folder is not a package)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "engine.py")
    spec = importlib.util.spec_from_file_location("ttsc_bench_engine", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    from ttsc.runtime import torch_thread

    # On the torch thread, where the engine steps inline and cProfile sees the
    # steps (it profiles one thread): one OpenMP pool, as in `ttsc run`.
    torch_thread.call(main)
