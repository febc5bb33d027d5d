"""Two callers on one paged engine at once vs the same requests one after the other.

Each caller sends 32 sample requests (its own questions, fixed seeds) in one
`sample` call. One after the other: caller A's call, then caller B's, on one
engine. Concurrently: both calls at once from two threads on a fresh engine,
whose steps then decode both callers' sequences together. Both engines are
warmed up first (a short call) so that neither pays first-call costs. The
ratio is the sequential wall time over the concurrent one; the tokens must be
the same (the engine is batch-invariant on its CPU kernels path).

    python -P benchmarks/concurrency.py [--requests 32] [--max-tokens 64]

`measure_concurrency()` is what benchmarks/runtime.py calls; run as a script it
prints its figures and, last, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from typing import Callable

from ttsc.runtime.engines.base import Prompt, SampleOutput, SampleRequest, SamplingParams
from ttsc.runtime.engines.paged.engine import PagedEngine


def caller_requests(caller: int, count: int, max_tokens: int) -> list[SampleRequest]:
    return [SampleRequest(Prompt.user(f"What is {caller * 100 + i} + {3 * i + 7}? Think step by step."),
                          SamplingParams(temperature=0.8, max_tokens=max_tokens, seed=10_000 * caller + i))
            for i in range(count)]


def measure_concurrency(spec: str = "smollm2-135m", requests_per_caller: int = 32, max_tokens: int = 64,
                        log: Callable[[str], None] = print) -> dict:
    """Wall times of two callers' requests run one after the other and at once."""
    a, b = caller_requests(1, requests_per_caller, max_tokens), caller_requests(2, requests_per_caller, max_tokens)

    def fresh() -> PagedEngine:
        engine = PagedEngine.from_spec(spec)
        engine.sample([SampleRequest(Prompt.user("Hello"), SamplingParams(n=2, max_tokens=4, seed=0))])
        return engine

    engine = fresh()
    t0 = time.perf_counter()
    seq_a, seq_b = engine.sample(a), engine.sample(b)
    sequential_s = time.perf_counter() - t0
    seq_steps = engine.stats()["steps"]

    engine = fresh()
    results: dict[str, list[SampleOutput]] = {}
    start = threading.Barrier(2)

    def call(name: str, requests: list[SampleRequest]) -> None:
        start.wait()
        results[name] = engine.sample(requests)

    threads = [threading.Thread(target=call, args=("a", a)), threading.Thread(target=call, args=("b", b))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    concurrent_s = time.perf_counter() - t0
    stats = engine.stats()

    def tokens(outs: list[SampleOutput]) -> list[list[list[int]]]:
        return [[c.token_ids for c in o.completions] for o in outs]

    matched = tokens(results["a"]) == tokens(seq_a) and tokens(results["b"]) == tokens(seq_b)
    generated = sum(o.usage.generated_tokens for o in seq_a + seq_b)
    figures = {
        "spec": spec, "dtype": stats["dtype"], "requests_per_caller": requests_per_caller,
        "max_tokens": max_tokens, "generated_tokens": generated,
        "sequential_s": round(sequential_s, 3), "concurrent_s": round(concurrent_s, 3),
        "ratio": round(sequential_s / concurrent_s, 3), "tokens_matched": matched,
        "sequential_steps": seq_steps - 1, "concurrent_steps": stats["steps"] - 1,  # less the warm-up's
        "concurrent_peak_decode_rows": stats["peak_decode_rows"], "load_average": os.getloadavg()[0],
    }
    log(f"two callers x {requests_per_caller} requests ({generated} tokens): one after the other "
        f"{sequential_s:.2f}s in {figures['sequential_steps']} steps, at once {concurrent_s:.2f}s in "
        f"{figures['concurrent_steps']} steps (up to {stats['peak_decode_rows']} rows a step): "
        f"{figures['ratio']:.2f}x; same tokens: {matched}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="smollm2-135m")
    parser.add_argument("--requests", type=int, default=32, help="sample requests per caller")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    figures = measure_concurrency(args.spec, args.requests, args.max_tokens)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
