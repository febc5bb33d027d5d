"""Runtime benchmark: the per-input runtime against what it replaced, side by side.

    python -P benchmarks/runtime.py [--part lockstep|adaptive|concurrency|startup|all]

- lockstep: a data set where some inputs stop their `repeat` after one round
  and others run all five (adaptive consistency on easy and hard questions of
  examples/data/tiers.jsonl), run (a) per input, every input at its own pace
  with B in flight, and (b) in lock step, as the executor ran before: a batch
  of B inputs starts together and the next batch starts only when its slowest
  input is done. Same engine, same seeds: wall time and whether the answers
  agree.
- adaptive: `ttsc eval` of `n=auto` under a total token budget
  (examples/adaptive_budget.tts, calibrated on tiers_dev.jsonl) against the
  same generate at uniform n=16 and at greedy (n=1, temperature 0), all on
  examples/data/tiers.jsonl, each run by `ttsc eval` itself (a subprocess,
  `--json`), on ten draws (`--seed 0` to `9`; `--seeds`): the least share of
  uniform's tokens (bisection) at which adaptive's mean accuracy over the
  draws reaches uniform's mean, and the ratio of tokens computed.
- concurrency: two callers of one paged engine at once vs one after the other
  (benchmarks/concurrency.py).
- startup: `ttsc run` on one question, cold and warm (benchmarks/startup.py).

Progress goes to stderr; the last line is one JSON object of figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "data"
MODEL = "smollm2-135m"
IN_FLIGHT = 8  # inputs in flight (per input) = batch size (lock step)
LOCKSTEP_ITEMS = 16  # per tier: easy (most stop after one round) and hard (most run five)
BISECT = 4  # halvings of the budget range when finding the least budget reaching uniform n=16
# Draws each arm runs on; the criterion is their mean. On 90 items one item is
# 1.1 points and the accuracy-against-budget curve is flat within a point,
# so three draws left the crossing to one item; ten pin the means to about
# a third of a point.
ADAPTIVE_SEEDS = tuple(range(10))

ADAPTIVE_CONSISTENCY = '''model policy = "smollm2-135m"
prompt solve = """
{question}
Answer with the number only.
"""
strategy adaptive(question) {
    samples = generate(policy, solve, n=4, temperature=0.8, max_tokens=16)
    repeat 5 until agreement(extract(samples, number)) >= 0.75 {
        samples = samples + generate(policy, solve, n=4, temperature=0.8, max_tokens=16)
    }
    return vote(extract(samples, number))
}
'''


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ lock step


def bench_lockstep() -> dict[str, Any]:
    from ttsc.compiler.pipeline import compile_source
    from ttsc.runtime.data import load_jsonl
    from ttsc.runtime.engines.setup import make_engines
    from ttsc.runtime.executor import Executor

    rows = list(load_jsonl(DATA / "tiers.jsonl"))
    picked = ([r for r in rows if r["difficulty"] == "easy"][:LOCKSTEP_ITEMS]
              + [r for r in rows if r["difficulty"] == "hard"][:LOCKSTEP_ITEMS])
    # Interleaved, so that every lock-step batch holds both kinds.
    order = [picked[i // 2 + (len(picked) // 2) * (i % 2)] for i in range(len(picked))]
    inputs = [{"question": r["question"]} for r in order]
    plan = compile_source(ADAPTIVE_CONSISTENCY, "adaptive.tts").plan
    engines = make_engines(plan)
    executor = Executor(plan, engines, seed=0)
    executor.run(inputs[:2], concurrency=2)  # warm-up: kernels, allocations

    start = time.perf_counter()
    lock_results = []
    for b in range(0, len(inputs), IN_FLIGHT):
        lock_results += executor.run(inputs[b:b + IN_FLIGHT], concurrency=IN_FLIGHT).results
    lock_s = time.perf_counter() - start

    start = time.perf_counter()
    own = executor.run(inputs, concurrency=IN_FLIGHT).results
    own_s = time.perf_counter() - start

    rounds = [1 + max((t.round or 0) for t in r.trace if t.kind == "llm") if any(
        t.round is not None for t in r.trace if t.kind == "llm") else 1 for r in own]
    agree = sum(a.output == b.output for a, b in zip(own, lock_results))
    log(f"lockstep: {len(inputs)} inputs ({LOCKSTEP_ITEMS} easy, {LOCKSTEP_ITEMS} hard), rounds "
        f"per input {sorted(rounds)}; lock step {lock_s:.1f} s, per input {own_s:.1f} s: "
        f"{lock_s / own_s:.2f}x; same answers {agree}/{len(inputs)}")
    return {"lockstep_inputs": len(inputs), "lockstep_in_flight": IN_FLIGHT,
            "lockstep_rounds": {str(k): rounds.count(k) for k in sorted(set(rounds))},
            "lockstep_s": round(lock_s, 2), "per_input_s": round(own_s, 2),
            "per_input_speedup": round(lock_s / own_s, 2), "same_answers": agree}


# ------------------------------------------------------------------ adaptive


def ttsc_eval(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """One `ttsc eval ... --json` run; its summary."""
    out = subprocess.run([sys.executable, "-P", "-m", "ttsc.cli", "eval", *args, "--json", "--quiet"],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"ttsc eval {' '.join(args)} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_adaptive(work: Path, seeds: tuple[int, ...] = ADAPTIVE_SEEDS) -> dict[str, Any]:
    """Uniform n=16 and the allocation in rounds on the same draws: one `ttsc
    eval --seed S` per arm and seed. On 90 items one item is 1.1 points, so a
    single draw decides "reaches uniform's accuracy" by the luck of an item or
    two; the criterion is the mean over the seeds, and every seed is reported."""
    env = {**os.environ, "TTSC_CALL_CACHE": str(work / "calls.db")}
    source = (ROOT / "examples" / "adaptive_budget.tts").read_text()
    uniform = work / "uniform16.tts"
    uniform.write_text(source.replace("n=auto", "n=16").split("budget {")[0])
    greedy = work / "greedy.tts"
    greedy.write_text(source.replace("n=auto", "n=1").replace("temperature=0.5", "temperature=0")
                      .split("budget {")[0])
    adaptive = work / "adaptive.tts"
    adaptive.write_text(source)  # its own budget line; --budget-tokens sets each run's
    start = time.perf_counter()
    cal = work / "calibration.json"
    subprocess.run([sys.executable, "-P", "-m", "ttsc.cli", "calibrate", str(adaptive), "--data",
                    str(DATA / "tiers_dev.jsonl"), "--samples", "32", "--out", str(cal)],
                   check=True, env=env, cwd=ROOT, capture_output=True)
    log(f"adaptive: calibrated on tiers_dev.jsonl in {time.perf_counter() - start:.0f} s")
    data = ["--data", str(DATA / "tiers.jsonl")]
    g = ttsc_eval([str(greedy), *data], env)
    log(f"greedy: accuracy {g['accuracy']:.3f}, {g['tokens']} tokens computed")
    u = {s: ttsc_eval([str(uniform), *data, "--seed", str(s)], env) for s in seeds}
    for s, got in u.items():
        log(f"uniform n=16, seed {s}: accuracy {got['accuracy']:.3f}, {got['tokens']} tokens computed")
    u_acc = sum(x["accuracy"] for x in u.values()) / len(seeds)
    u_tokens = sum(x["tokens"] for x in u.values()) / len(seeds)

    def run(share: float) -> dict[int, dict[str, Any]]:
        """Adaptive at `share` of uniform's tokens, seed by seed."""
        out = {}
        for s in seeds:
            budget = round(share * u[s]["tokens"])
            out[s] = ttsc_eval([str(adaptive), *data, "--budget-tokens", str(budget), "--seed", str(s),
                                "--calibration", str(cal)], env)
            log(f"adaptive, seed {s}, budget {budget:,} ({share:.2f} of uniform's): accuracy "
                f"{out[s]['accuracy']:.3f}, {out[s]['tokens']} tokens computed")
        return out

    def mean(runs: dict[int, dict[str, Any]], key: str) -> float:
        return sum(r[key] for r in runs.values()) / len(runs)

    lo, hi = g["tokens"] * 1.05 / u_tokens, 1.0
    best = run(hi)
    if mean(best, "accuracy") < u_acc:
        log("adaptive: at uniform's own tokens the allocation does not reach its mean accuracy")
        best = None
    else:
        for _ in range(BISECT):
            mid = (lo + hi) / 2
            got = run(mid)
            if mean(got, "accuracy") >= u_acc:
                hi, best = mid, got
            else:
                lo = mid
    figures: dict[str, Any] = {
        "adaptive_data": "tiers.jsonl", "adaptive_calibrated_on": "tiers_dev.jsonl",
        "adaptive_seeds": list(seeds),
        "greedy_accuracy": g["accuracy"], "greedy_tokens": g["tokens"],
        "uniform16_accuracy": round(u_acc, 4), "uniform16_tokens": round(u_tokens),
        "uniform16_by_seed": {s: [x["accuracy"], x["tokens"]] for s, x in u.items()},
        "adaptive_accuracy": round(mean(best, "accuracy"), 4) if best else None,
        "adaptive_tokens": round(mean(best, "tokens")) if best else None,
        "adaptive_share_of_uniform_budget": round(hi, 3) if best else None,
        "adaptive_by_seed": {s: [x["accuracy"], x["tokens"]] for s, x in best.items()} if best else None,
        "adaptive_token_ratio": round(u_tokens / mean(best, "tokens"), 2) if best else None,
    }
    log(f"adaptive reaches uniform n=16's mean accuracy ({u_acc:.3f}) with "
        f"{figures['adaptive_tokens']} tokens vs {u_tokens:,.0f}: {figures['adaptive_token_ratio']}x fewer")
    return figures


# ------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", default="all",
                        choices=["lockstep", "adaptive", "concurrency", "startup", "all"])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(ADAPTIVE_SEEDS),
                        help="draws (ttsc eval --seed) the adaptive part runs each arm on")
    args = parser.parse_args()
    figures: dict[str, Any] = {"model": MODEL, "load_average": round(os.getloadavg()[0], 2)}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ttsc-runtime-bench-") as tmp:
        if args.part in ("concurrency", "all"):
            sys.path.insert(0, str(Path(__file__).parent))
            from concurrency import measure_concurrency  # noqa: E402 - a sibling benchmark

            figures.update(measure_concurrency())
        if args.part in ("lockstep", "all"):
            figures.update(bench_lockstep())
        if args.part in ("adaptive", "all"):
            figures.update(bench_adaptive(Path(tmp), tuple(args.seeds)))
        if args.part in ("startup", "all"):
            sys.path.insert(0, str(Path(__file__).parent))
            from startup import measure_startup  # noqa: E402 - a sibling benchmark

            figures.update(measure_startup())
    figures["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
