"""Compile time of every example, after import (target: under 200 ms each).

    python -P benchmarks/compile.py [--repeat 20]

Prints a table (median and max over repeats, per example) and, last, one JSON
object with the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from ttsc.compiler.pipeline import compile_source

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    figures = {}
    for path in sorted((ROOT / "examples").glob("*.tts")):
        source = path.read_text()
        compile_source(source, str(path))  # warm: caches (tokenizers, kernels) filled once
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            compile_source(source, str(path))
            times.append((time.perf_counter() - t0) * 1000)
        figures[path.name] = {"median_ms": round(statistics.median(times), 2),
                              "max_ms": round(max(times), 2)}
        print(f"{path.name:<28} median {figures[path.name]['median_ms']:8.2f} ms   "
              f"max {figures[path.name]['max_ms']:8.2f} ms")
    worst = max(f["median_ms"] for f in figures.values())
    print(f"slowest median: {worst:.2f} ms (target < 200 ms)")
    print(json.dumps({"examples": figures, "slowest_median_ms": worst, "target_ms": 200}))


if __name__ == "__main__":
    main()
