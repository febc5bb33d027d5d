"""CPU decode attention at the engine benchmark's shapes: the C++ kernel's cost per layer.

One decode step's attention for one layer of SmolLM2-135M (9 query heads,
3 KV heads, head dim 64, blocks of 16) over a paged pool whose blocks lie in
random order, at the two works of benchmarks/engine.py:

- work A: 128 rows in 8 groups of 16 sharing a 32-token prefix, 3-70 own tokens;
- work B: 16 rows in one group sharing a 976-token prefix, 13-77 own tokens.

Times `decode_attention` in bf16 (AVX512-BF16 dot products where the CPU has
them) and fp32 (the fp32 path), with 1 and 2 threads: the median and the
minimum of --repeats calls, after one warm-up call. Also prints the largest
difference from the fp32 torch reference (`decode_attention_reference`).

    python -P benchmarks/cpu_attention.py [--repeats 50]

Run it under `flock /tmp/ttsc-heavy.lock` where others share the machine;
the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from ttsc.kernels import cpu_ops

WORKS = {  # rows, groups, shared prefix tokens, own tokens (min, max)
    "work_a": (128, 8, 32, (3, 70)),
    "work_b": (16, 1, 976, (13, 77)),
}
HEADS, KV_HEADS, HEAD_DIM, BLOCK = 9, 3, 64, 16


def case(rows: int, groups: int, prefix: int, own: tuple[int, int], dtype: torch.dtype, seed: int = 0):
    """decode_attention's arguments for one layer: q, pool, own tables/lens, groups."""
    g = torch.Generator().manual_seed(seed)
    own_lens = torch.randint(own[0], own[1] + 1, (rows,), generator=g)
    per_row = -(-own[1] // BLOCK)
    per_group = prefix // BLOCK
    num_blocks = groups * per_group + rows * per_row
    pool = torch.randn(num_blocks, BLOCK, 2, KV_HEADS, HEAD_DIM, generator=g).to(dtype)
    order = torch.randperm(num_blocks, generator=g)  # blocks anywhere in the pool
    group_tables = order[:groups * per_group].view(groups, per_group)
    own_tables = order[groups * per_group:].view(rows, per_row)
    q = torch.randn(rows, HEADS, HEAD_DIM, generator=g).to(dtype)
    members = torch.arange(rows).view(groups, rows // groups)
    return (q, pool, own_tables, own_lens, members, group_tables, torch.full((groups,), prefix),
            HEAD_DIM ** -0.5)


def timed(fn, args, repeats: int) -> dict[str, float]:
    fn(*args)
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        seconds.append(time.perf_counter() - t0)
    return {"median_ms": statistics.median(seconds) * 1e3, "min_ms": min(seconds) * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    ops = cpu_ops.load()
    if ops is None:
        print(json.dumps({"cpu_kernels": None, "reason": "the C++ CPU kernels could not be built"}))
        return
    result: dict = {"load_average_start": os.getloadavg()[0],
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default")}
    for name, shape in WORKS.items():
        for dtype in (torch.bfloat16, torch.float32):
            args_ = case(*shape, dtype)
            error = (ops.decode_attention(*args_).float()
                     - cpu_ops.decode_attention_reference(*args_).float()).abs().max().item()
            for threads in (1, 2):
                torch.set_num_threads(threads)
                got = timed(ops.decode_attention, args_, args.repeats)
                key = f"{name} {str(dtype).replace('torch.', '')} {threads} thread{'s' * (threads > 1)}"
                result[key] = {**got, "max_abs_error": error}
                print(f"{key}: median {got['median_ms']:.3f} ms, min {got['min_ms']:.3f} ms per layer "
                      f"(max |error| vs fp32 reference {error:.1e})", flush=True)
    result["load_average_end"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
