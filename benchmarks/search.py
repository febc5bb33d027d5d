"""Search benchmark: the optimizer against random search, and the call cache.

    python -P benchmarks/search.py [--space examples/search/sampling.tts]
        [--data examples/data/tiers_dev.jsonl] [--limit 60] [--test examples/data/tiers.jsonl]
        [--trials 20] [--seeds 5] [--ks 5,10,20] [--out DIR]

On the embedded model, with a fresh call cache (DIR/calls.db):

1. cache: `ttsc search` (TPE, seed 0, --trials N, --test) from a cold cache,
   then the same search again into another folder and study: its wall time
   and the model calls each computed.
2. reference: every configuration of the (discrete) space evaluated once on
   the data, through the cache: the space's best accuracy and its 95%
   bootstrap interval.
3. optimizer against random search: for several seeds, a TPE search and a
   random search of N trials each, same space, data and cache. Per search:
   the best reference accuracy found after k trials, and the trials it took
   to reach the best configuration (its accuracy exactly, and within its
   interval). A search that never reaches it counts N + 1.
4. held-out: from step 1, the winner and greedy decoding on --test.

Progress goes to stderr; the last line is one JSON object of figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_search(args: argparse.Namespace, out: Path, sampler: str, seed: int, cache: Path,
               test: bool) -> tuple[dict[str, Any], float]:
    from ttsc.runtime.search import SearchOptions, search

    if out.exists():
        shutil.rmtree(out)
    options = SearchOptions(space=args.space, data=args.data, limit=args.limit, trials=args.trials,
                            out=str(out), seed=0, sampler=sampler, sampler_seed=seed, cache=str(cache),
                            test=args.test if test else None)
    start = time.perf_counter()
    summary = search(options)
    return summary, time.perf_counter() - start


def trial_configs(out: Path) -> list[dict[str, str]]:
    """Each finished trial's knobs as written, in trial order."""
    records = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    return [r["knobs"] for r in sorted(records, key=lambda r: r["trial"])
            if r["state"] in ("complete", "over budget")]


def reference(args: argparse.Namespace, cache: Path, out: Path) -> dict[str, Any]:
    """Every configuration of the space on the data: accuracy and interval."""
    from ttsc.runtime.engines.setup import open_cache
    from ttsc.runtime.eval import load_dataset
    from ttsc.runtime.search.engines import EnginePool
    from ttsc.runtime.search.space import load_space
    from ttsc.runtime.search.trial import Evaluator

    space = load_space(args.space)
    rows = load_dataset(args.data, space.params, limit=args.limit)
    pool = EnginePool(open_cache(str(cache)))
    evaluator = Evaluator(space, pool)
    grid = list(space.grid())
    # The most samples first: the same call with fewer samples is then a cache hit.
    grid.sort(key=lambda a: -sum(v for k, v in a.items() if isinstance(v, int) and k.endswith(".n")))
    table: dict[str, dict[str, Any]] = {}
    computed = 0
    try:
        for i, assignment in enumerate(grid):
            plan = evaluator.compile(assignment)
            scores = evaluator.evaluate(plan, rows, out / f"{i:03d}.jsonl")
            computed += scores.cache_misses
            labels = {d.id: d.label(assignment[d.id]) for d in space.dimensions}
            table[_key(labels)] = {"knobs": space.describe(assignment), "accuracy": scores.accuracy,
                                   "ci": list(scores.accuracy_ci),
                                   "tokens_per_input": scores.tokens_per_input}
            log(f"  reference {i + 1}/{len(grid)}: {space.describe(assignment)}: "
                f"{scores.accuracy:.1%} ({scores.cache_misses} computed)")
    finally:
        pool.close()
    return {"table": table, "computed": computed, "size": len(grid)}


def _key(knobs: dict[str, str]) -> str:
    return json.dumps(knobs, sort_keys=True)


def curve(configs: list[dict[str, str]], table: dict[str, dict[str, Any]]) -> list[float]:
    """Best reference accuracy found after each trial."""
    best, out = 0.0, []
    for knobs in configs:
        best = max(best, table[_key(knobs)]["accuracy"])
        out.append(best)
    return out


def trials_to(configs: list[dict[str, str]], table: dict[str, dict[str, Any]], level: float,
              n: int) -> int:
    for i, knobs in enumerate(configs, start=1):
        if table[_key(knobs)]["accuracy"] >= level - 1e-12:
            return i
    return n + 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default=str(ROOT / "examples/search/sampling.tts"))
    p.add_argument("--data", default=str(ROOT / "examples/data/tiers_dev.jsonl"))
    p.add_argument("--limit", type=int, default=60)
    p.add_argument("--test", default=str(ROOT / "examples/data/tiers.jsonl"))
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--ks", default="5,10,20")
    p.add_argument("--out", help="where the searches write (default: a temporary folder)")
    args = p.parse_args()
    ks = [int(k) for k in args.ks.split(",") if int(k) <= args.trials]
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="ttsc-search-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "calls.db"
    for stale in out.glob("calls.db*"):
        stale.unlink()  # a cold cache: the first search pays for its calls
    log(f"writing under {out}")

    log("1. cache: a search from a cold cache, then the same search again")
    first, first_s = run_search(args, out / "first", "tpe", 0, cache, test=True)
    second, second_s = run_search(args, out / "second", "tpe", 0, cache, test=False)
    log(f"  first {first_s:.1f} s ({first['calls']['computed']} calls computed), "
        f"second {second_s:.1f} s ({second['calls']['computed']} computed)")

    log("2. reference: the whole space, once")
    ref_start = time.perf_counter()
    ref = reference(args, cache, out / "reference")
    table = ref["table"]
    best_acc = max(v["accuracy"] for v in table.values())
    best = [v for v in table.values() if v["accuracy"] == best_acc]
    within = min(b["ci"][0] for b in best)  # the lower end of the best's interval
    log(f"  best {best_acc:.1%} ({', '.join(b['knobs'] for b in best)}), 95% CI from {within:.1%}; "
        f"{sum(v['accuracy'] >= within for v in table.values())} of {ref['size']} configurations "
        f"within it ({time.perf_counter() - ref_start:.0f} s)")

    log("3. TPE against random search")
    runs: dict[str, list[dict[str, Any]]] = {"tpe": [], "random": []}
    for seed in range(args.seeds):
        for sampler in ("tpe", "random"):
            summary, _ = run_search(args, out / f"{sampler}-{seed}", sampler, seed, cache, test=False)
            configs = trial_configs(out / f"{sampler}-{seed}")
            c = curve(configs, table)
            runs[sampler].append({
                "seed": seed, "best_after": {k: c[k - 1] for k in ks},
                "to_best": trials_to(configs, table, best_acc, args.trials),
                "to_ci": trials_to(configs, table, within, args.trials),
                "distinct": len({_key(k) for k in configs}),
                "computed": summary["calls"]["computed"]})
            log(f"  {sampler} seed {seed}: best after {ks}: "
                f"{[f'{c[k - 1]:.1%}' for k in ks]}, best reached at trial {runs[sampler][-1]['to_best']}, "
                f"within its interval at {runs[sampler][-1]['to_ci']}")

    figures: dict[str, Any] = {
        "space": Path(args.space).name, "data": Path(args.data).name, "items": args.limit,
        "trials": args.trials, "seeds": args.seeds, "space_size": ref["size"],
        "space_best_accuracy": best_acc, "space_best": [b["knobs"] for b in best],
        "space_best_ci_low": within,
        "greedy_accuracy": first["greedy"]["accuracy"],
    }
    for sampler, rs in runs.items():
        figures[sampler] = {
            "mean_best_after": {str(k): mean(r["best_after"][k] for r in rs) for k in ks},
            "mean_trials_to_best": mean(r["to_best"] for r in rs),
            "reached_best": sum(r["to_best"] <= args.trials for r in rs),
            "mean_trials_to_best_ci": mean(r["to_ci"] for r in rs),
            "mean_distinct_configurations": mean(r["distinct"] for r in rs),
            "runs": rs}
    figures["cache"] = {"first_s": round(first_s, 2), "second_s": round(second_s, 2),
                        "speedup": round(first_s / second_s, 2) if second_s else None,
                        "first_computed": first["calls"]["computed"],
                        "second_computed": second["calls"]["computed"],
                        "reference_computed": ref["computed"]}
    test = first.get("test") or {}
    if test:
        figures["held_out"] = {"items": test["greedy"]["items"],
                               "greedy": test["greedy"]["accuracy"],
                               "greedy_ci": test["greedy"]["accuracy_ci"],
                               "best": test["best"]["accuracy"], "best_ci": test["best"]["accuracy_ci"],
                               "best_knobs": first["best"]["knobs"],
                               "best_beats_greedy": test["best_beats_greedy"]}

    log("")
    log(f"space {figures['space']}: {ref['size']} configurations; best {best_acc:.1%}, greedy "
        f"{figures['greedy_accuracy']:.1%} on {args.limit} items of {figures['data']}")
    log(f"{'':8} " + " ".join(f"best@{k:<4}" for k in ks) + "  trials to best  (within CI)  reached")
    for sampler in ("tpe", "random"):
        f = figures[sampler]
        log(f"{sampler:8} " + " ".join(f"{f['mean_best_after'][str(k)]:8.1%}" for k in ks)
            + f"  {f['mean_trials_to_best']:14.1f}  ({f['mean_trials_to_best_ci']:9.1f})  "
              f"{f['reached_best']}/{args.seeds}")
    cf = figures["cache"]
    log(f"cache: first search {cf['first_s']} s ({cf['first_computed']} calls computed), "
        f"identical second {cf['second_s']} s ({cf['second_computed']} computed): {cf['speedup']}x")
    if test:
        h = figures["held_out"]
        log(f"held-out ({h['items']} items): best {h['best']:.1%} vs greedy {h['greedy']:.1%}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
