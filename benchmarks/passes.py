"""Benchmarks of the compiler's optimizations, ours against the baseline in one run.

    python -P benchmarks/passes.py            # both parts, the embedded model on CPU
    python -P benchmarks/passes.py --part prefix
    python -P benchmarks/passes.py --part allocation

1. Prefix sharing. A best-of-16 strategy whose generator and verifier prompts
   share a ~1,000-token few-shot system prompt, the verifier prompt written
   candidate-first. Baseline: the plan compiled without the prefix-sharing
   pass, run on the paged engine with its prefix cache off (every sample row
   and every verifier call prefills its whole prompt). Ours: the full pipeline
   (the verifier prompt laid out question-first) on the same engine with its
   radix prefix cache on. Same model, fp32 both. Prefill tokens predicted by
   the pass and computed by the engine (usage counters), wall times, ratios.
   The cached engine running the baseline layout shows what the layout adds.
2. Allocation. Self-consistency (temperature 0.5) on a held-out set of three
   difficulty tiers (examples/data/tiers.jsonl: 30 easy items that copy a
   number, 30 single-digit additions, 30 two-digit additions and
   subtractions). Every item gets a pool of 32 samples once; all arms draw
   from the same pools, with the same token accounting (each item's prompt
   once, plus its mean completion length per sample used). Uniform: n
   samples for every item. Two methods, both fitted on a disjoint dev set
   (tiers_dev.jsonl) alone, with their settings chosen by cross-validation
   on the dev set (fit on one half, try on the other):
   - "rounds" (the headline; runtime/allocation/rounds.py): every item
     starts with one sample; each round CP-SAT plans every open item's final
     total from a dev-fitted table of P(vote right at t' | vote state at t),
     the state being the sample count, the top two answers' counts and how
     many of the top answer's samples were confident (mean token logprob at
     least a threshold: none or a dev quintile, chosen on dev); items planned
     past their count draw up to the next checkpoint, and it plans again.
   - "pilot" (one shot): each item's first 1 or 2 samples are a pilot (kept
     as votes, tokens charged) whose score is looked up in dev-fitted bins;
     CP-SAT (compiler/allocator.py) picks each item's total once.
   Bounds, not methods (they read what no method knows at test time):
   "oracle" knows each held-out item's tier (Snell et al.'s oracle bins,
   curves from the dev set); "ceiling" uses each tier's curve measured on the
   held-out items; "item_oracle" each item's own curve. For each: accuracy at
   uniform n's tokens (n = 4, 8, 16), and the tokens (and samples) needed to
   match uniform n=8 and n=16 (the headline: 16, the n of the bundled
   self-consistency strategy). --draw K draws independent pools.

The last line is one JSON object of figures.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "data"
MODEL = "smollm2-135m"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ prefix sharing

FEWSHOT_TARGET_TOKENS = 1000


def fewshot(tokenizer: Any, target: int = FEWSHOT_TARGET_TOKENS) -> str:
    """Worked examples until the text is `target` tokens long."""
    rng = random.Random(1)
    lines = ["You solve arithmetic problems. Here are solved examples.", ""]
    while True:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        lines += [f"Problem: What is {a} + {b}?",
                  f"Solution: {a} + {b} = {a + b}. The tens give {a // 10 * 10 + b // 10 * 10}, "
                  f"the ones give {a % 10 + b % 10}. Answer: {a + b}", ""]
        text = "\n".join(lines)
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) >= target:
            return text


def prefix_source(shots: str) -> str:
    return f'''model policy = "{MODEL}"

prompt solve = system """
{shots}
""" user """
Problem: {{question}}
Solve it, then finish with "Answer: <number>".
"""

prompt check = system """
{shots}
""" user """
Proposed solution: {{candidate}}
Problem: {{question}}
Is the proposed solution correct? Answer Yes or No.
"""

strategy best_of_16(question) {{
    cands = generate(policy, solve, n=16, temperature=0.8, max_tokens=32)
    return best(cands, by=verify(policy, cands, check))
}}
'''


def compile_plans(source: str):
    """(plan with every pass, plan without prefix sharing, and their programs)."""
    from ttsc.compiler import pipeline
    from ttsc.compiler.build import build
    from ttsc.compiler.lower import lower
    from ttsc.compiler.passes.manager import run_passes, summarize
    from ttsc.compiler.passes.prefix_sharing import prefix_sharing
    from ttsc.dsl.parser import parse

    full = pipeline.compile_source(source, "bench.tts")
    built = build(parse(source, "bench.tts"))
    program = pipeline.program_for(built, pipeline.pick_strategy(built, None))
    report = run_passes(program, pipeline.PASSES) + run_passes(program, pipeline.DECIDE)
    report += run_passes(program, [p for p in pipeline.CLEANUP if p is not prefix_sharing],
                         fixpoint=True)
    plain = lower(program, [r.as_dict() for r in summarize(report)])
    return full.plan, plain, full.program, program


def timed_run(plan, engine, question: str, seed: int = 0) -> tuple[float, Any]:
    from ttsc.runtime.executor import Executor

    start = time.perf_counter()
    result = Executor(plan, {"policy": engine}, seed=seed).run([{"question": question}])
    return time.perf_counter() - start, result.total_usage


def bench_prefix() -> dict[str, Any]:
    import torch

    from ttsc.compiler import model_facts
    from ttsc.compiler.prefix.predict import analyze
    from ttsc.runtime.engines.base import Prompt, SampleRequest, SamplingParams
    from ttsc.runtime.engines.paged.engine import PagedEngine
    from ttsc.runtime.models import load_model

    loaded = load_model(MODEL)
    model_facts.cache_model_facts(MODEL, loaded)  # token-exact compile-time analysis
    shots = fewshot(loaded.tokenizer)
    source = prefix_source(shots)
    with_pass, without_pass, prog_with, prog_without = compile_plans(source)
    predicted = with_pass.facts["prefill_tokens_per_input"]
    layout_only = analyze(prog_without).totals()["with"]  # baseline layout, with a prefix cache
    log(f"few-shot prompt: {len(loaded.tokenizer(shots, add_special_tokens=False)['input_ids'])} tokens; "
        f"predicted prefill/input: {predicted['without_sharing']} without sharing, "
        f"{layout_only} with a cache but the original layout, {predicted['with_sharing']} with the pass")
    question = "What is 47 + 38?"
    warm = [SampleRequest(Prompt.user("Hi"), SamplingParams(max_tokens=2))]

    def paged(prefix_cache: bool = True) -> PagedEngine:
        e = PagedEngine(loaded, dtype=torch.float32, prefix_cache=prefix_cache)
        e.sample(warm)
        return e

    log("baseline: paged engine with its prefix cache off, plan without the pass ...")
    e = paged(prefix_cache=False)
    base_s, base_u = timed_run(without_pass, e, question)
    e.close()
    log(f"  {base_s:.1f} s, prefill computed {base_u.prompt_tokens_computed}")
    log("paged engine (radix cache), plan without the pass ...")
    e = paged()
    plain_s, plain_u = timed_run(without_pass, e, question)
    e.close()
    log(f"  {plain_s:.1f} s, prefill computed {plain_u.prompt_tokens_computed}")
    log("ours: paged engine (radix cache), plan with the pass ...")
    e = paged()
    ours_s, ours_u = timed_run(with_pass, e, question)
    e.close()
    log(f"  {ours_s:.1f} s, prefill computed {ours_u.prompt_tokens_computed}")
    return {
        "prefix_fewshot_tokens": len(loaded.tokenizer(shots, add_special_tokens=False)["input_ids"]),
        "prefix_prefill_predicted_without": predicted["without_sharing"],
        "prefix_prefill_predicted_with": predicted["with_sharing"],
        "prefix_prefill_predicted_cache_only": layout_only,
        "prefix_prefill_computed_baseline": base_u.prompt_tokens_computed,
        "prefix_prefill_computed_cache_only": plain_u.prompt_tokens_computed,
        "prefix_prefill_computed_ours": ours_u.prompt_tokens_computed,
        "prefix_prefill_ratio": round(base_u.prompt_tokens_computed / max(ours_u.prompt_tokens_computed, 1), 2),
        "prefix_wall_baseline_s": round(base_s, 2),
        "prefix_wall_cache_only_s": round(plain_s, 2),
        "prefix_wall_ours_s": round(ours_s, 2),
        "prefix_wall_ratio": round(base_s / ours_s, 2),
    }


# ------------------------------------------------------------------ allocation

POOL = 32  # samples per item (held-out and dev), drawn once; every arm subsamples them
PILOTS = (1, 2)  # pilot sizes tried (samples per item, kept as votes, tokens charged)
ROUND_ORDERS = 12  # sample orders per item the rounds arm is averaged over
BISECT = 10  # halvings of the budget range when finding the least budget that matches uniform
SPLITS = 3  # dev-set cross-validation: stratified halves, each fitted on one, tried on the other
UNIFORM = (1, 2, 4, 8, 16, 32)
COMPARE = (8, 16)  # uniform n's the token ratio is reported against; 16 is the headline
HELD, DEV = "tiers.jsonl", "tiers_dev.jsonl"
# The strategy whose samples every arm shares (examples/adaptive_budget.tts's generate).
STRATEGY = '''model policy = "smollm2-135m"
prompt solve = """
{question}
Answer with the number only.
"""
strategy pool(question) {
    return vote(extract(generate(policy, solve, n=32, temperature=0.5, max_tokens=16), number))
}
'''


def load_pools(path: str) -> dict[str, Any]:
    from ttsc.runtime.calibrate.pool import PilotSamples

    return {k: PilotSamples(**v) for k, v in json.loads(Path(path).read_text()).items()}


def draw_pools(dev: list[dict], held: list[dict], pools_file: str | None,
               draw: int = 0) -> dict[str, Any]:
    """POOL samples of every dev and held-out item (read from `pools_file` when
    it holds pools of these sets, else drawn and written there), through the
    executor as `ttsc calibrate` draws them; `draw` shifts the run seed, for a
    second independent draw."""
    from ttsc.compiler.pipeline import compile_source
    from ttsc.runtime.calibrate import calibration_target
    from ttsc.runtime.calibrate.pool import draw_pool
    from ttsc.runtime.engines.paged.engine import PagedEngine
    from ttsc.runtime.models import load_model
    from ttsc.runtime.scorers import score_number

    if pools_file and Path(pools_file).is_file():
        pools = load_pools(pools_file)
        sizes = {k: len(p.answers) for k, p in pools.items() if p.mean_logprobs}
        if sizes == {"dev": len(dev), "held-out": len(held)}:
            log(f"pools read from {pools_file}")
            return pools
        log(f"{pools_file} holds pools of other data: drawing new ones")
    plan = compile_source(STRATEGY, "allocation.tts").plan
    gen, how, _ = calibration_target(plan)
    pools = {}
    engine = PagedEngine(load_model(MODEL))
    for name, rows, seed in (("dev", dev, 11), ("held-out", held, 23)):
        start = time.perf_counter()
        pools[name] = draw_pool(plan, {"policy": engine}, rows, gen, samples=POOL, how=how,
                                gold=lambda r: r["answer"], is_right=score_number,
                                seed=seed + 1000 * draw, concurrency=16)
        log(f"{name}: {len(rows)} items x {POOL} samples in {time.perf_counter() - start:.0f} s")
    engine.close()
    if pools_file:
        Path(pools_file).write_text(json.dumps({k: asdict(v) for k, v in pools.items()}))
    return pools


def _subpool(pool: Any, idx: list[int]) -> Any:
    from ttsc.runtime.calibrate.pool import PilotSamples

    pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
    return PilotSamples(pool.model, pool.spec, pick(pool.answers), pick(pool.correct),
                        pick(pool.lengths), pick(pool.finished), pick(pool.texts),
                        pick(pool.prompt_tokens), 0.0, pick(pool.mean_logprobs))


def _fit(pool: Any, rows: list[dict], pilot: int, feature: str) -> Any:
    from ttsc.runtime.calibrate.fit import fit_model
    from ttsc.runtime.scorers import score_number

    return fit_model(pool, rows, lambda r: r["answer"], score_number, "difficulty", pilot,
                     predictor_samples=pilot, feature=feature)


def _pilot_arm(bench: "_AllocationBench", calib: Any, pool: Any, name: str,
               quiet: bool = False) -> dict[str, Any]:
    """The method: the first `pilot_samples` of each item's pool are its pilot;
    the library's pilot_allocation gives each item's options (CP-SAT picks)."""
    from ttsc.runtime.allocation.pilot import pilot_allocation

    k = calib.pilot_samples
    prompt = sum(pool.prompt_tokens) / len(pool.prompt_tokens)  # one figure: items of a bin stay alike
    totals, utilities, costs = pilot_allocation(
        calib, [a[:k] for a in pool.answers], [lp[:k] for lp in pool.mean_logprobs],
        [prompt] * len(pool.answers))
    return bench.arm(name, utilities, costs, tuple(totals), keep=k, quiet=quiet)


def _samples(pool: Any) -> list[list[Any]]:
    """The pool as Sample records, each costing its item's mean completion
    length (the accounting every arm shares)."""
    from ttsc.runtime.calibrate.fit import pool_samples

    return pool_samples(pool)


def _rounds_arm(bench: "_AllocationBench", values: Any) -> dict[str, Any]:
    """The method in rounds (runtime/allocation/rounds.py): every item starts
    with one sample; each round CP-SAT plans every open item's final total
    from its vote so far, and the items planned past their count draw up to
    their next checkpoint. Samples come from the item's pool in random
    orders; figures are means over ROUND_ORDERS orders."""
    from ttsc.runtime.allocation.rounds import simulate_on_pools

    samples = _samples(bench.pool)

    def run(budget: float) -> tuple[float, float, float]:
        return simulate_on_pools(values, samples, bench.pool.correct, bench.pool.prompt_tokens,
                                 budget, ROUND_ORDERS)

    out: dict[str, Any] = {"confident_logprob": values.confident, "at_equal_tokens": {}}
    for n in (4, 8, 16):
        acc, used, per = run(bench.uniform[n]["tokens"])
        out["at_equal_tokens"][str(n)] = {
            "uniform_accuracy": bench.uniform[n]["accuracy"], "allocated_accuracy": round(acc, 4),
            "allocated_tokens": round(used), "budget_tokens": bench.uniform[n]["tokens"],
            "samples_per_item": round(per, 2)}
        log(f"rounds: at uniform n={n}'s tokens ({bench.uniform[n]['tokens']}): accuracy "
            f"{acc:.3f} vs {bench.uniform[n]['accuracy']:.3f} (used {used:.0f}, {per:.1f} samples "
            f"per item)")
    for n in COMPARE:
        target, reference = bench.uniform[n]["accuracy"], bench.uniform[n]["tokens"]
        best = _least_tokens(run, target, sum(bench.pool.prompt_tokens),
                             bench.uniform[POOL]["tokens"], BISECT)
        ratio = round(reference / best[1], 2) if best else None
        fewer = round(n / best[2], 2) if best else None
        log(f"rounds: reaches uniform n={n}'s accuracy ({target:.3f}) with "
            f"{round(best[1]) if best else None} tokens vs {reference}: {ratio}x fewer tokens, "
            f"{fewer}x fewer samples ({best[2] if best else 0:.1f} per item)")
        out[f"tokens_to_match_uniform{n}"] = round(best[1]) if best else None
        out[f"token_ratio_vs_uniform{n}"] = ratio
        out[f"sample_ratio_vs_uniform{n}"] = fewer
    return {"alloc_rounds": out}


def _least_tokens(run: Callable[[float], tuple[float, float, float]], target: float,
                  lo: float, hi: float, steps: int) -> tuple[float, float, float] | None:
    from ttsc.runtime.allocation.threshold import least_tokens

    return least_tokens(run, target, lo, hi, steps)


def _dev_splits(dev: list[dict]) -> list[tuple[list[int], list[int]]]:
    """SPLITS x 2 (fit half, try half) pairs of the dev set, stratified by tier."""
    rng = random.Random(7)
    splits = []
    for _ in range(SPLITS):
        a, b = [], []
        for tier in sorted({r["difficulty"] for r in dev}):
            idx = [i for i, r in enumerate(dev) if r["difficulty"] == tier]
            rng.shuffle(idx)
            a += idx[:len(idx) // 2]
            b += idx[len(idx) // 2:]
        splits += [(a, b), (b, a)]
    return splits


def select_confidence(pool: Any, dev: list[dict]) -> tuple[float | None, list[dict[str, Any]]]:
    """The rounds method's confidence threshold, chosen on the dev set alone by
    the product's own cross-validation (runtime/allocation/threshold.py, what
    `ttsc calibrate` runs), halves stratified by tier."""
    from ttsc.runtime.allocation.threshold import choose_confidence

    return choose_confidence(_samples(pool), pool.correct, pool.prompt_tokens,
                             [r["difficulty"] for r in dev], log=log)


def select_pilot(pool: Any, dev: list[dict]) -> tuple[int, str, list[dict[str, Any]]]:
    """The pilot size and score with the best mean token ratio against uniform
    n=16 (then n=8) over SPLITS x 2 fits on half the dev set, tried on the other
    half (halves stratified by tier). Only dev data is read."""
    from ttsc.runtime.allocation.pilot import PILOT_FEATURES

    splits = _dev_splits(dev)
    benches = {tuple(b): _AllocationBench(_subpool(pool, b), [dev[i] for i in b]) for _, b in splits}
    table = []
    for k in PILOTS:
        for feature in PILOT_FEATURES:
            r8, r16 = [], []
            for a, b in splits:
                calib = _fit(_subpool(pool, a), [dev[i] for i in a], k, feature)
                out = _pilot_arm(benches[tuple(b)], calib, _subpool(pool, b), "cv", quiet=True)["alloc_cv"]
                r8.append(out["token_ratio_vs_uniform8"] or 0.0)  # never reached: 0
                r16.append(out["token_ratio_vs_uniform16"] or 0.0)
            row = {"pilot": k, "feature": feature, "ratio_vs_uniform8": round(sum(r8) / len(r8), 2),
                   "ratio_vs_uniform16": round(sum(r16) / len(r16), 2)}
            log(f"dev cross-validation: pilot {k} {feature:<19} mean token ratio vs uniform n=8 "
                f"{row['ratio_vs_uniform8']:.2f}, n=16 {row['ratio_vs_uniform16']:.2f}")
            table.append(row)
    best = max(table, key=lambda r: (r["ratio_vs_uniform16"], r["ratio_vs_uniform8"]))
    return best["pilot"], best["feature"], table


def bench_allocation(pools_file: str | None = None, draw: int = 0) -> dict[str, Any]:
    from ttsc.runtime.allocation.pilot import PILOT_TOTALS, pool_scores
    from ttsc.runtime.data import load_jsonl
    from ttsc.runtime.allocation.rounds import fit_vote_values

    dev, held = list(load_jsonl(DATA / DEV)), list(load_jsonl(DATA / HELD))
    assert not {r["question"] for r in dev} & {r["question"] for r in held}
    pools = draw_pools(dev, held, pools_file, draw)
    # 1. Choose the pilot (size, score) on the dev set alone; 2. fit its bins
    # on the whole dev set; 3. run it once on the held-out set.
    pilot, feature, cv = select_pilot(pools["dev"], dev)
    calib = _fit(pools["dev"], dev, pilot, feature)
    tiers = sorted({r["difficulty"] for r in held})
    dev_scores = pool_scores(pools["dev"], pilot, feature)
    log(f"chosen on dev: a pilot of {pilot} sample(s) scored by {feature}; its dev bins:")
    for b in calib.pilot_bins:
        inside = [dev[i]["difficulty"] for i, s in enumerate(dev_scores) if calib.pilot_bin(s) is b]
        log(f"  score <= {b['hi']:.3f}: {b['questions']} items ("
            + " ".join(f"{t} {inside.count(t)}" for t in tiers) + "), vote accuracy by total "
            + " ".join(f"{t}:{v:.2f}" for t, v in b["curve"].items()))
    bench = _AllocationBench(pools["held-out"], held)
    for n, u in bench.uniform.items():
        log(f"uniform n={n:<2}: accuracy {u['accuracy']:.3f} at {u['tokens']} tokens")
    figures: dict[str, Any] = {
        "alloc_data": HELD, "alloc_items": len(held),
        "alloc_tiers": {t: sum(r["difficulty"] == t for r in held) for t in tiers},
        "alloc_pool": POOL, "alloc_draw": draw, "alloc_pilot_samples": pilot,
        "alloc_pilot_feature": feature,
        "alloc_pilot_cv": cv, "alloc_uniform": {str(n): u for n, u in bench.uniform.items()}}
    figures.update(_pilot_arm(bench, calib, pools["held-out"], "pilot"))
    confident, rounds_cv = select_confidence(pools["dev"], dev)
    values = fit_vote_values(_samples(pools["dev"]), pools["dev"].correct, confident)
    log(f"rounds: chosen on dev: confident at mean logprob >= {confident}; the vote-state "
        f"table fitted on the whole dev set ({len(values.fine)} states)")
    figures["alloc_rounds_cv"] = rounds_cv
    figures.update(_rounds_arm(bench, values))

    # Bounds, not methods: each reads what a method cannot know at test time.
    prompt = round(sum(pools["held-out"].prompt_tokens) / len(held))

    def costs(gen: list[float]) -> list[list[int]]:
        return [[round(prompt + t * g) for t in PILOT_TOTALS] for g in gen]

    # "oracle": the held-out items' difficulty labels, each tier's curve and
    # tokens per sample measured on the dev set (Snell et al.'s oracle bins).
    dev_idx = {t: [i for i, r in enumerate(dev) if r["difficulty"] == t] for t in tiers}
    dev_bench = _AllocationBench(pools["dev"], dev, uniform=False)
    dev_curve = {t: [dev_bench.mean_accuracy(dev_idx[t], n) for n in PILOT_TOTALS] for t in tiers}
    dev_gen = {t: _mean_generated(pools["dev"], dev_idx[t]) for t in tiers}
    figures.update(bench.arm("oracle", [dev_curve[r["difficulty"]] for r in held],
                             costs([dev_gen[r["difficulty"]] for r in held]), PILOT_TOTALS, keep=0))
    # "ceiling": the labels, and each tier's curve measured on the held-out
    # items themselves: the most any allocation by difficulty class can save.
    idx = {t: [i for i, r in enumerate(held) if r["difficulty"] == t] for t in tiers}
    curve = {t: [bench.mean_accuracy(idx[t], n) for n in PILOT_TOTALS] for t in tiers}
    gen = {t: _mean_generated(pools["held-out"], idx[t]) for t in tiers}
    figures.update(bench.arm("ceiling", [curve[r["difficulty"]] for r in held],
                             costs([gen[r["difficulty"]] for r in held]), PILOT_TOTALS, keep=0))
    # "item_oracle": each held-out item's own curve, from its own pool: about
    # the most any per-input choice of n can save on these items.
    table = bench.table(0)
    figures.update(bench.arm("item_oracle", [[table[n][i] for n in PILOT_TOTALS]
                                             for i in range(len(held))],
                             costs(bench.gen), PILOT_TOTALS, keep=0))
    return figures


def _mean_generated(pool: Any, items: list[int]) -> float:
    lengths = [n for i in items for n in pool.lengths[i]]
    return sum(lengths) / len(lengths)


class _AllocationBench:
    """Uniform n against CP-SAT allocations, all drawn from one pool per item.

    Token accounting, the same for every arm: each item's prompt once (its
    samples share it) plus each sample's generated tokens (the item's mean
    completion length). Accuracy: each item's vote over a random subset of its
    pool (the pilot always in), averaged over draws; one table per pilot size,
    so every arm reads the same figures."""

    def __init__(self, pool: Any, rows: list[dict[str, Any]], uniform: bool = True):
        self.pool = pool
        self.m = len(rows)
        self.gen = [sum(ls) / len(ls) for ls in pool.lengths]
        self._tables: dict[int, dict[int, list[float]]] = {}
        self.uniform = {n: {"tokens": self.tokens([n] * self.m),
                            "accuracy": round(self.accuracy([n] * self.m, 0), 4)}
                        for n in UNIFORM} if uniform else {}

    def tokens(self, ns: list[int]) -> int:
        return round(sum(self.pool.prompt_tokens[i] + ns[i] * self.gen[i] for i in range(self.m)))

    def table(self, keep: int) -> dict[int, list[float]]:
        """Per total n (>= keep): each item's vote accuracy."""
        from ttsc.runtime.allocation.pilot import PILOT_TOTALS
        from ttsc.runtime.allocation.votes import conditional_vote_accuracy

        if keep not in self._tables:
            rng = random.Random(5 + keep)
            self._tables[keep] = {
                n: [conditional_vote_accuracy(self.pool.answers[i], self.pool.correct[i], keep, n,
                                              rng) for i in range(self.m)]
                for n in sorted(set(PILOT_TOTALS) | set(UNIFORM)) if keep <= n <= POOL}
        return self._tables[keep]

    def accuracy(self, ns: list[int], keep: int) -> float:
        t = self.table(keep)
        return sum(t[n][i] for i, n in enumerate(ns)) / self.m

    def mean_accuracy(self, items: list[int], n: int) -> float:
        t = self.table(0)
        return sum(t[n][i] for i in items) / len(items)

    def arm(self, name: str, utilities: list[list[float]], costs: list[list[int]],
            totals: tuple[int, ...], keep: int, quiet: bool = False) -> dict[str, Any]:
        """CP-SAT allocation by `utilities` and estimated `costs` (per item, per
        option in `totals`); accuracy and tokens as realized on the pools."""
        from ttsc.compiler.allocator import Infeasible, allocate_across_inputs

        say = (lambda msg: None) if quiet else log  # noqa: E731

        def run(budget: int) -> tuple[float, int, list[int]] | None:
            try:
                picks = allocate_across_inputs(utilities, costs, budget)
            except Infeasible:
                return None
            ns = [totals[j] for j in picks]
            return self.accuracy(ns, keep), self.tokens(ns), ns

        out: dict[str, Any] = {"at_equal_tokens": {}}
        for n in () if quiet else (4, 8, 16):
            got = run(self.uniform[n]["tokens"])
            if got is None:
                continue
            out["at_equal_tokens"][str(n)] = {
                "uniform_accuracy": self.uniform[n]["accuracy"],
                "allocated_accuracy": round(got[0], 4), "allocated_tokens": got[1],
                "budget_tokens": self.uniform[n]["tokens"]}
            say(f"{name}: at uniform n={n}'s tokens ({self.uniform[n]['tokens']}): accuracy "
                f"{got[0]:.3f} vs {self.uniform[n]['accuracy']:.3f} (used {got[1]})")
        lo = sum(c[0] for c in costs)
        hi = self.uniform[POOL]["tokens"]
        for n in COMPARE:
            target, reference = self.uniform[n]["accuracy"], self.uniform[n]["tokens"]
            needed = self._least_budget(run, target, lo, hi)
            ratio = round(reference / needed[1], 2) if needed else None
            samples = round(n * self.m / sum(needed[2]), 2) if needed else None
            spread = (" ".join(f"{t}:{needed[2].count(t)}" for t in totals if t in needed[2])
                      if needed else "-")
            say(f"{name}: reaches uniform n={n}'s accuracy ({target:.3f}) with "
                f"{needed[1] if needed else None} tokens vs {reference}: {ratio}x fewer tokens, "
                f"{samples}x fewer samples (items per total: {spread})")
            out[f"tokens_to_match_uniform{n}"] = needed[1] if needed else None
            out[f"token_ratio_vs_uniform{n}"] = ratio
            out[f"sample_ratio_vs_uniform{n}"] = samples
        return {f"alloc_{name}": out}

    @staticmethod
    def _least_budget(run, target: float, lo: int, hi: int):
        """The least budget (to within 0.1 % of the range) whose allocation
        reaches `target`: a coarse scan, then a fine one below the first hit."""
        step = max(1, (hi - lo) // 100)
        prev = lo
        for budget in range(lo, hi + 1, step):
            got = run(budget)
            if got is not None and got[0] >= target:
                for fine in range(prev, budget + 1, max(1, step // 10)):
                    g = run(fine)
                    if g is not None and g[0] >= target:
                        return g
                return got
            prev = budget
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["prefix", "allocation", "all"], default="all")
    parser.add_argument("--pools", metavar="FILE.json",
                        help="allocation: read the sample pools from FILE if it exists, else "
                             "draw them and write FILE (reruns skip the sampling)")
    parser.add_argument("--draw", type=int, default=0, metavar="K",
                        help="allocation: shift the sampling seeds by K to draw independent pools "
                             "(pair with a new --pools file); 0 is the recorded draw")
    args = parser.parse_args()
    figures: dict[str, Any] = {"model": MODEL}
    start = time.perf_counter()
    if args.part in ("prefix", "all"):
        figures.update(bench_prefix())
    if args.part in ("allocation", "all"):
        figures.update(bench_allocation(args.pools, args.draw))
    figures["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
