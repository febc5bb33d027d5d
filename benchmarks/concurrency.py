"""Two callers on one paged engine at once vs the same requests one after the other.

Each caller has 32 sample requests (its own questions, fixed seeds), sent in
one of two ways:

- one call: the caller's 32 requests in a single `sample` call;
- a call per request: the caller sends its requests one call at a time, each
  after the previous returned, as a per-input executor thread does.

One after the other: caller A's calls, then caller B's, on one engine. At once:
both callers on two threads of a fresh engine, whose steps then decode both
callers' sequences together. Engines are warmed up first (a short call).
The ratio is the sequential wall time over the concurrent one, taken from the
medians of `repeats` interleaved runs; the tokens must be the same either way
(the engine is batch-invariant on its CPU kernels path).

What bounds the ratio is how a decode step's cost grows with its rows: on a
2-core CPU a smollm2-135m step costs about the same for 1 to 8 rows (reading
the weights), but 32 rows are already compute-bound (a 64-row step costs about
1.6x a 32-row step), so two one-call callers gain little there while callers
with few rows each gain close to 2x.

    python -P benchmarks/concurrency.py [--requests 32] [--max-tokens 32] [--repeats 3]

`measure_concurrency()` is what benchmarks/runtime.py calls; run as a script it
prints its figures and, last, one JSON object. CPU timings need a quiet
machine: run as a script while other processes keep a quarter of a core
busy and OMP_WAIT_POLICY is unset, it restarts itself with
OMP_WAIT_POLICY=PASSIVE (benchmarks/engine.py's `sleep_threads_if_busy`), so
that spinning OpenMP threads do not stall.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import threading
import time
from typing import Callable

from ttsc.runtime.engines.base import Prompt, SampleOutput, SampleRequest, SamplingParams
from ttsc.runtime.engines.paged.engine import PagedEngine

MODES = ("one_call", "call_per_request")


def caller_requests(caller: int, count: int, max_tokens: int) -> list[SampleRequest]:
    return [SampleRequest(Prompt.user(f"What is {caller * 100 + i} + {3 * i + 7}? Think step by step."),
                          SamplingParams(temperature=0.8, max_tokens=max_tokens, seed=10_000 * caller + i))
            for i in range(count)]


def _serve(engine: PagedEngine, requests: list[SampleRequest], mode: str) -> list[SampleOutput]:
    if mode == "one_call":
        return engine.sample(requests)
    return [out for r in requests for out in engine.sample([r])]


def _tokens(outs: list[SampleOutput]) -> list[list[list[int]]]:
    return [[c.token_ids for c in o.completions] for o in outs]


def measure_concurrency(spec: str = "smollm2-135m", requests_per_caller: int = 32, max_tokens: int = 32,
                        repeats: int = 3, modes: tuple[str, ...] = MODES,
                        log: Callable[[str], None] = print) -> dict:
    """Wall times of two callers' requests run one after the other and at once, per mode."""
    callers = [caller_requests(c, requests_per_caller, max_tokens) for c in (1, 2)]

    def fresh() -> PagedEngine:
        engine = PagedEngine.from_spec(spec)
        engine.sample([SampleRequest(Prompt.user("Hello"), SamplingParams(n=2, max_tokens=4, seed=0))])
        return engine

    figures: dict = {"spec": spec, "requests_per_caller": requests_per_caller, "max_tokens": max_tokens,
                     "repeats": repeats, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
                     "load_average_before": os.getloadavg()[0]}
    for mode in modes:
        sequential, concurrent, matched, steps = [], [], True, {}
        for _ in range(repeats):
            engine = fresh()
            before = engine.stats()["steps"]
            t0 = time.perf_counter()
            alone = [_serve(engine, reqs, mode) for reqs in callers]
            sequential.append(time.perf_counter() - t0)
            steps["sequential"] = engine.stats()["steps"] - before

            engine = fresh()
            before = engine.stats()["steps"]
            results: list[list[SampleOutput]] = [[], []]
            start = threading.Barrier(2)

            def call(i: int) -> None:
                start.wait()
                results[i] = _serve(engine, callers[i], mode)

            threads = [threading.Thread(target=call, args=(i,)) for i in (0, 1)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            concurrent.append(time.perf_counter() - t0)
            stats = engine.stats()
            steps["concurrent"] = stats["steps"] - before
            steps["concurrent_peak_decode_rows"] = stats["peak_decode_rows"]
            matched = matched and all(_tokens(r) == _tokens(a) for r, a in zip(results, alone))
        seq_s, conc_s = statistics.median(sequential), statistics.median(concurrent)
        generated = sum(o.usage.generated_tokens for outs in alone for o in outs)
        figures[mode] = {"sequential_s": round(seq_s, 3), "concurrent_s": round(conc_s, 3),
                         "ratio": round(seq_s / conc_s, 3), "tokens_matched": matched,
                         "generated_tokens": generated, "dtype": stats["dtype"],
                         "sequential_runs_s": [round(x, 3) for x in sequential],
                         "concurrent_runs_s": [round(x, 3) for x in concurrent], **steps}
        log(f"{mode}: two callers x {requests_per_caller} requests ({generated} tokens): one after the "
            f"other {seq_s:.2f}s in {steps['sequential']} steps, at once {conc_s:.2f}s in "
            f"{steps['concurrent']} steps (up to {steps['concurrent_peak_decode_rows']} rows a step): "
            f"{seq_s / conc_s:.2f}x; same tokens: {matched}")
    figures["load_average_after"] = os.getloadavg()[0]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="smollm2-135m")
    parser.add_argument("--requests", type=int, default=32, help="sample requests per caller")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mode", choices=MODES, action="append", help="default: both")
    args = parser.parse_args()
    _engine_benchmark().sleep_threads_if_busy(__file__)
    figures = measure_concurrency(args.spec, args.requests, args.max_tokens, args.repeats,
                                  tuple(args.mode or MODES))
    print(json.dumps(figures))


def _engine_benchmark():
    """benchmarks/engine.py, loaded by path (the folder is not a package)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "engine.py")
    spec = importlib.util.spec_from_file_location("ttsc_bench_engine", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    main()
