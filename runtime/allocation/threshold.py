"""Choosing the rounds allocation's confidence threshold on the dev set alone.

The vote-state table can count how many of the top answer's samples the model
was confident in (mean token log-probability at least a threshold). Which
threshold, if any, helps depends on the model and the task, so it is chosen
by cross-validation: fit the table on half the dev set, run the allocation on
the other half's own samples, and measure the tokens it needs to match the
accuracy of uniform n=16 (then n=8); the threshold with the best mean token
ratio over several stratified splits wins. Only dev data is read.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Sequence

from ttsc.runtime.allocation.rounds import Sample, fit_vote_values, simulate_on_pools
from ttsc.runtime.allocation.votes import conditional_vote_accuracy

SPLITS = 3  # stratified halves, each fitted on one half and tried on the other
ORDERS = 6  # random sample orders each simulated allocation is averaged over
BISECT = 8  # halvings of the budget range when finding the least budget that matches uniform
COMPARE = (8, 16)  # uniform n's the token ratio is measured against; 16 decides first
QUANTILES = (1, 2, 3, 4)  # candidate thresholds: quintile boundaries of the dev samples' logprobs


def choose_confidence(samples: Sequence[Sequence[Sample]], correct: Sequence[Sequence[bool]],
                      prompt_tokens: Sequence[float], groups: Sequence[str] | None = None,
                      seed: int = 0, log: Callable[[str], None] | None = None
                      ) -> tuple[float | None, list[dict[str, Any]]]:
    """(the chosen threshold or None, one row of figures per candidate)."""
    width = min(len(s) for s in samples)
    compare = [n for n in COMPARE if n < width] or [width]
    logprobs = sorted(s.mean_logprob for ss in samples for s in ss)
    candidates: list[float | None] = [None] + sorted(
        {round(logprobs[len(logprobs) * q // 5], 3) for q in QUANTILES})
    splits = _splits(len(samples), groups, seed)
    halves = {tuple(b): _Uniform([samples[i] for i in b], [correct[i] for i in b],
                                 [prompt_tokens[i] for i in b], compare + [width], seed)
              for _, b in splits}
    table = []
    for confident in candidates:
        ratios: dict[int, list[float]] = {n: [] for n in compare}
        for a, b in splits:
            values = fit_vote_values([samples[i] for i in a], [correct[i] for i in a], confident,
                                     checkpoints=[c for c in _checkpoints(width)], orders=ORDERS)
            half = halves[tuple(b)]

            def run(budget: float) -> tuple[float, float, float]:
                return simulate_on_pools(values, half.samples, half.correct, half.prompt_tokens,
                                         budget, ORDERS)

            for n in compare:
                got = least_tokens(run, half.accuracy[n], sum(half.prompt_tokens),
                                   half.tokens[width], BISECT)
                ratios[n].append(half.tokens[n] / got[1] if got else 0.0)  # never reached: 0
        row = {"confident_logprob": confident,
               **{f"ratio_vs_uniform{n}": round(sum(r) / len(r), 3) for n, r in ratios.items()}}
        if log:
            log("threshold " + str(confident) + ": mean token ratio " + ", ".join(
                f"{row[f'ratio_vs_uniform{n}']:.2f} vs uniform n={n}" for n in compare))
        table.append(row)
    key = [f"ratio_vs_uniform{n}" for n in reversed(compare)]
    best = max(table, key=lambda r: tuple(r[k] for k in key))
    return best["confident_logprob"], table


def least_tokens(run: Callable[[float], tuple[float, float, float]], target: float,
                 lo: float, hi: float, steps: int) -> tuple[float, float, float] | None:
    """run(budget) at the least budget in [lo, hi] (to within (hi-lo)/2^steps)
    whose accuracy reaches `target`, by bisection: accuracy grows with the
    budget, the sample orders being the same at every budget."""
    best = None
    for _ in range(steps):
        mid = (lo + hi) / 2
        got = run(mid)
        if got[0] >= target:
            hi, best = mid, got
        else:
            lo = mid
    return best


def _checkpoints(width: int) -> list[int]:
    from ttsc.runtime.allocation.rounds import CHECKPOINTS

    return [c for c in CHECKPOINTS if c <= width]


def _splits(m: int, groups: Sequence[str] | None, seed: int) -> list[tuple[list[int], list[int]]]:
    """SPLITS x 2 (fit half, try half) pairs, stratified by group when given."""
    rng = random.Random(7 + seed)
    labels = list(groups) if groups is not None else [""] * m
    out = []
    for _ in range(SPLITS):
        a: list[int] = []
        b: list[int] = []
        for label in sorted(set(labels)):
            idx = [i for i in range(m) if labels[i] == label]
            rng.shuffle(idx)
            a += idx[:len(idx) // 2]
            b += idx[len(idx) // 2:]
        out += [(a, b), (b, a)]
    return out


class _Uniform:
    """Uniform n on one half: each item's vote over random n-subsets of its own
    samples, and the tokens (its prompt once, n samples at its mean length)."""

    def __init__(self, samples: list[Sequence[Sample]], correct: list[Sequence[bool]],
                 prompt_tokens: list[float], ns: Sequence[int], seed: int):
        self.samples, self.correct, self.prompt_tokens = samples, correct, prompt_tokens
        rng = random.Random(5 + seed)
        gen = [sum(s.tokens for s in ss) / len(ss) for ss in samples]
        self.accuracy = {n: sum(conditional_vote_accuracy([s.answer for s in ss], c, 0, n, rng)
                                for ss, c in zip(samples, correct)) / len(samples) for n in ns}
        self.tokens = {n: sum(p + n * g for p, g in zip(prompt_tokens, gen)) for n in ns}
