"""Benchmarks of the compiler's optimizations, ours against the baseline in one run.

    python -P benchmarks/passes.py            # both parts, the embedded model on CPU
    python -P benchmarks/passes.py --part prefix
    python -P benchmarks/passes.py --part allocation

1. Prefix sharing. A best-of-16 strategy whose generator and verifier prompts
   share a ~1,000-token few-shot system prompt, the verifier prompt written
   candidate-first. Baseline: the plan compiled without the prefix-sharing
   pass, run on the HF engine (no prefix cache: every sample row and every
   verifier call prefills its whole prompt). Ours: the full pipeline (the
   verifier prompt laid out question-first) on the paged engine with its radix
   prefix cache, same model and dtype. Prefill tokens predicted by the pass and
   computed by the engines (usage counters), wall times, ratios. The paged
   engine running the baseline layout shows what the layout adds.
2. Allocation. Self-consistency on a held-out set mixing easy and hard items
   (examples/data/mixed.jsonl). Every item gets a pool of 32 samples once; all
   arms draw from the same pools, with the same token accounting (each item's
   prompt once, plus the generated tokens of every sample used). Uniform: n
   samples for every item. Allocated (CP-SAT across the items, by the vote-
   accuracy curves of the utility model fitted on a dev set of 120 other
   items): "oracle" knows each item's difficulty label (Snell et al.'s oracle
   difficulty bins); "pilot" predicts it from the agreement of 4 pilot samples
   (paid for). "ceiling" allocates by the held-out pools' own per-class curves:
   a bound on any allocation by difficulty class, not a method. For each: the
   accuracy at uniform n's tokens, and the tokens needed to match uniform n=16.

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
from typing import Any

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

    from ttsc.compiler import cost
    from ttsc.compiler.passes.prefix_sharing import analyze
    from ttsc.runtime.engines.base import Prompt, SampleRequest, SamplingParams
    from ttsc.runtime.engines.hf import HFEngine
    from ttsc.runtime.engines.paged.engine import PagedEngine
    from ttsc.runtime.models import load_model

    loaded = load_model(MODEL)
    cost.cache_model_facts(MODEL, loaded)  # token-exact compile-time analysis
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

    hf = HFEngine(loaded)
    hf.sample(warm)
    log("baseline: HF engine (no prefix cache), plan without the pass ...")
    hf_s, hf_u = timed_run(without_pass, hf, question)
    log(f"  {hf_s:.1f} s, prefill computed {hf_u.prompt_tokens_computed}")

    def paged() -> PagedEngine:
        e = PagedEngine(loaded, dtype=torch.float32)  # the HF engine's dtype: same arithmetic
        e.sample(warm)
        return e

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
        "prefix_prefill_computed_baseline": hf_u.prompt_tokens_computed,
        "prefix_prefill_computed_cache_only": plain_u.prompt_tokens_computed,
        "prefix_prefill_computed_ours": ours_u.prompt_tokens_computed,
        "prefix_prefill_ratio": round(hf_u.prompt_tokens_computed / max(ours_u.prompt_tokens_computed, 1), 2),
        "prefix_wall_baseline_s": round(hf_s, 2),
        "prefix_wall_cache_only_s": round(plain_s, 2),
        "prefix_wall_ours_s": round(ours_s, 2),
        "prefix_wall_ratio": round(hf_s / ours_s, 2),
    }


# ------------------------------------------------------------------ allocation

POOL = 32  # samples per held-out item, drawn once; every arm subsamples it
DEV_POOL = 16  # samples per dev item (120 items), for calibration
PILOT = 4
TOTALS = (4, 8, 16, 32)  # samples an item may get in all (pilot included)
DRAWS = 100  # random subsets averaged per accuracy figure
SOLVE = {"user": "{question}\nAnswer with the number only.\n", "system": None, "raw": False}
MAX_TOKENS = 16
TEMPERATURE = 0.8


def vote_right(answers: list, right: list[bool]) -> bool:
    from ttsc.runtime.ops import vote

    winner = vote(answers)
    return any(r for a, r in zip(answers, right) if a == winner and a is not None)


def subset_accuracy(answers: list, right: list[bool], n: int, rng: random.Random,
                    keep: int = 0) -> float:
    """Mean vote accuracy over random n-sample subsets; the first `keep` samples
    (the pilot) are always in."""
    if n >= len(answers) and keep == 0:
        return float(vote_right(answers, right))
    hits = 0
    rest = list(range(keep, len(answers)))
    for _ in range(DRAWS):
        pick = list(range(keep)) + rng.sample(rest, n - keep)
        rng.shuffle(pick)  # ties go to the first seen: order is random
        hits += vote_right([answers[i] for i in pick], [right[i] for i in pick])
    return hits / DRAWS


def load_pools(path: str) -> dict[str, Any]:
    from ttsc.runtime.calibrate import PilotSamples

    return {k: PilotSamples(**v) for k, v in json.loads(Path(path).read_text()).items()}


def bench_allocation(pools_file: str | None = None) -> dict[str, Any]:
    from ttsc.runtime.calibrate import draw_samples, fit_model
    from ttsc.runtime.data import load_jsonl
    from ttsc.runtime.engines.paged.engine import PagedEngine
    from ttsc.runtime.models import load_model
    from ttsc.runtime.scorers import score_number

    # The dev set's difficulty is known from where its items come from.
    dev = ([dict(r, difficulty="easy") for r in load_jsonl(DATA / "addition_dev.jsonl")]
           + [dict(r, difficulty="easy") for r in load_jsonl(DATA / "addition.jsonl")]
           + [dict(r, difficulty="hard") for r in load_jsonl(DATA / "two_digit.jsonl")])
    held = list(load_jsonl(DATA / "mixed.jsonl"))
    gold = lambda r: r["answer"]  # noqa: E731
    pools = load_pools(pools_file) if pools_file and Path(pools_file).is_file() else {}
    if not pools:
        engine = PagedEngine(load_model(MODEL))
        for name, rows in (("dev", dev), ("held-out", held)):
            start = time.perf_counter()
            size = DEV_POOL if name == "dev" else POOL
            pools[name] = draw_samples(engine, SOLVE, rows, ["question"], samples=size,
                                       max_tokens=MAX_TOKENS, temperature=TEMPERATURE,
                                       how={"how": "number"}, gold=gold, is_right=score_number,
                                       seed=11 if name == "dev" else 23, model="policy", spec=MODEL)
            log(f"{name}: {len(rows)} items x {size} samples in {time.perf_counter() - start:.0f} s")
        engine.close()
        if pools_file:
            Path(pools_file).write_text(json.dumps({k: asdict(v) for k, v in pools.items()}))
    else:
        log(f"pools read from {pools_file}")
    calib = fit_model(pools["dev"], dev, gold, score_number, "difficulty", PILOT)
    groups = ", ".join(f"{g} Beta({v['a']:.2f}, {v['b']:.2f})" for g, v in calib.groups.items())
    bins = ", ".join(f"[{b['lo']:.2f},{b['hi']:.2f}] mean {b['a'] / (b['a'] + b['b']):.2f}"
                     for b in calib.agreement_bins)
    log(f"dev fit: Beta({calib.a:.2f}, {calib.b:.2f}), wrong answers agree {calib.wrong_concentration:.2f}; "
        f"{groups}; pilot-agreement bins {bins}")
    bench = _AllocationBench(pools["held-out"], held)
    for n, u in bench.uniform.items():
        log(f"uniform n={n:<2}: accuracy {u['accuracy']:.3f} at {u['tokens']} tokens")
    figures: dict[str, Any] = {"alloc_items": len(held), "alloc_pool": POOL,
                               "alloc_uniform": {str(n): u for n, u in bench.uniform.items()}}
    # Oracle difficulty (the data set's label), as in Snell et al.'s oracle bins:
    # no pilot; costs estimated from the dev set's completion lengths.
    dev_gen = {g: _mean_generated(pools["dev"], [i for i, r in enumerate(dev) if r["difficulty"] == g])
               for g in calib.groups}
    sizes = (1, 2, 4, 8, 16, 32)
    oracle = [[calib.model(r["difficulty"]).vote_accuracy(t) for t in sizes] for r in held]
    figures.update(bench.arm("oracle", oracle, [dev_gen[r["difficulty"]] for r in held], sizes,
                             keep=0))
    # The ceiling of any allocation by difficulty class: the held-out pools' own
    # per-class accuracy curves (known only after the fact; a bound, not a method).
    classes = sorted({r["difficulty"] for r in held})
    members = {g: [i for i, r in enumerate(held) if r["difficulty"] == g] for g in classes}
    curves = {g: [bench.accuracy_of(members[g], t) for t in sizes] for g in classes}
    real_gen = {g: _mean_generated(pools["held-out"], members[g]) for g in classes}
    figures.update(bench.arm("ceiling", [curves[r["difficulty"]] for r in held],
                             [real_gen[r["difficulty"]] for r in held], sizes, keep=0))
    # Predicted difficulty: the agreement of PILOT samples, paid for in tokens.
    from ttsc.runtime.calibrate import agreement

    pool = pools["held-out"]
    bin_of = [calib.agreement_bins.index(next(b for b in calib.agreement_bins
                                              if b["lo"] <= agreement(ans[:PILOT]) <= b["hi"]))
              for ans in pool.answers]
    predicted = [[calib.agreement_model(agreement(ans[:PILOT])).vote_accuracy(t) for t in TOTALS]
                 for ans in pool.answers]
    # Tokens per further sample: the mean pilot length of the item's bin (known
    # at test time; one figure per bin keeps the items of a bin interchangeable).
    bin_gen = {b: sum(sum(pool.lengths[i][:PILOT]) for i in range(len(held)) if bin_of[i] == b)
               / (PILOT * bin_of.count(b)) for b in set(bin_of)}
    figures.update(bench.arm("pilot", predicted, [bin_gen[b] for b in bin_of], TOTALS, keep=PILOT))
    return figures


def _mean_generated(pool: Any, items: list[int]) -> float:
    lengths = [n for i in items for n in pool.lengths[i]]
    return sum(lengths) / len(lengths)


class _AllocationBench:
    """Uniform n against CP-SAT allocations, all drawn from one pool per item."""

    def __init__(self, pool: Any, rows: list[dict[str, Any]]):
        self.pool = pool
        self.m = len(rows)
        self.gen = [sum(ls) / len(ls) for ls in pool.lengths]  # realized tokens per sample
        self.uniform = {n: {"tokens": self.tokens([n] * self.m),
                            "accuracy": round(self.accuracy([n] * self.m, 0), 4)}
                        for n in (1, 2, 4, 8, 16, 32)}

    def tokens(self, ns: list[int]) -> int:
        """Each item's prompt once (samples share it) plus its samples' tokens."""
        return round(sum(self.pool.prompt_tokens[i] + ns[i] * self.gen[i] for i in range(self.m)))

    def accuracy(self, ns: list[int], keep: int) -> float:
        rng = random.Random(5)
        return sum(subset_accuracy(self.pool.answers[i], self.pool.correct[i], ns[i], rng, keep)
                   for i in range(self.m)) / self.m

    def accuracy_of(self, items: list[int], n: int) -> float:
        rng = random.Random(6)
        return sum(subset_accuracy(self.pool.answers[i], self.pool.correct[i], n, rng)
                   for i in items) / len(items)

    def arm(self, name: str, utilities: list[list[float]], est_gen: list[float],
            totals: tuple[int, ...], keep: int) -> dict[str, Any]:
        """CP-SAT allocation by `utilities` (per item, per option in `totals`)."""
        from ttsc.compiler.allocator import Infeasible, allocate_across_inputs

        # Estimated costs per class (prompt lengths differ by a token or two):
        # items of one class stay interchangeable for the solver.
        prompt = round(sum(self.pool.prompt_tokens) / self.m)
        costs = [[round(prompt + t * est_gen[i]) for t in totals] for i in range(self.m)]

        def run(budget: int) -> tuple[float, int] | None:
            try:
                picks = allocate_across_inputs(utilities, costs, budget)
            except Infeasible:
                return None
            ns = [totals[j] for j in picks]
            return self.accuracy(ns, keep), self.tokens(ns)

        out: dict[str, Any] = {}
        for n in (4, 8, 16):
            got = run(self.uniform[n]["tokens"])
            if got is None:
                continue
            out[str(n)] = {"uniform_accuracy": self.uniform[n]["accuracy"],
                           "allocated_accuracy": round(got[0], 4), "allocated_tokens": got[1],
                           "budget_tokens": self.uniform[n]["tokens"]}
            log(f"{name}: at uniform n={n}'s tokens ({self.uniform[n]['tokens']}): accuracy "
                f"{got[0]:.3f} vs {self.uniform[n]['accuracy']:.3f} (used {got[1]})")
        target, reference = self.uniform[16]["accuracy"], self.uniform[16]["tokens"]
        lo = sum(c[0] for c in costs)
        hi = self.uniform[32]["tokens"]
        needed = None
        for budget in range(lo, hi + 1, max(1, (hi - lo) // 100)):
            got = run(budget)
            if got is not None and got[0] >= target:
                needed = got[1]
                break
        ratio = round(reference / needed, 2) if needed else None
        log(f"{name}: reaches uniform n=16's accuracy ({target:.3f}) with {needed} tokens vs "
            f"{reference}: {ratio}x fewer")
        return {f"alloc_{name}_at_equal_tokens": out, f"alloc_{name}_tokens_to_match_uniform16": needed,
                f"alloc_{name}_token_ratio": ratio}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["prefix", "allocation", "all"], default="all")
    parser.add_argument("--pools", metavar="FILE.json",
                        help="allocation: read the sample pools from FILE if it exists, else "
                             "draw them and write FILE (reruns skip the sampling)")
    args = parser.parse_args()
    figures: dict[str, Any] = {"model": MODEL}
    start = time.perf_counter()
    if args.part in ("prefix", "all"):
        figures.update(bench_prefix())
    if args.part in ("allocation", "all"):
        figures.update(bench_allocation(args.pools))
    figures["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
