"""Fitting the utility model from a pool of pilot samples: the per-question
accuracy Beta (overall and per group), how wrong answers cluster, completion
lengths, accuracy by pilot agreement, the pilot predictor's bins, the
vote-state table of the rounds allocation, and each verifier's reliability."""

from __future__ import annotations

import random
from typing import Any, Callable, Sequence

from ttsc.compiler.utility import ModelCalibration, fit_beta, wrong_concentration
from ttsc.runtime.allocation.pilot import DEFAULT_PILOT_BINS, DEFAULT_PILOT_FEATURE, pilot_bins
from ttsc.runtime.allocation.rounds import CHECKPOINTS, Sample, fit_vote_values
from ttsc.runtime.allocation.threshold import choose_confidence
from ttsc.runtime.allocation.votes import MIN_BIN_QUESTIONS, agreement, group_sorted
from ttsc.runtime.calibrate.pool import PilotSamples


def agreement_bins(pilot: PilotSamples, first: int) -> list[dict[str, float]]:
    """Beta of the later samples' accuracy, per agreement of the first `first`."""
    if first >= len(pilot.answers[0]):
        return []
    keyed = sorted(((agreement(ans[:first]), sum(c[first:]), len(c) - first)
                    for ans, c in zip(pilot.answers, pilot.correct)), key=lambda t: t[0])
    bins = [[keyed[i] for i in g]
            for g in group_sorted([k[0] for k in keyed], MIN_BIN_QUESTIONS)]
    out = []
    for i, members in enumerate(bins):
        prior = fit_beta([c for _, c, _ in members], [n for _, _, n in members])
        lo = 0.0 if i == 0 else members[0][0]
        hi = 1.0 if i == len(bins) - 1 else members[-1][0]
        out.append({"lo": lo, "hi": hi, "a": prior.a, "b": prior.b, "questions": len(members)})
    # Bins must tile [0, 1]: each starts where the previous ended.
    for prev, cur in zip(out, out[1:]):
        mid = (prev["hi"] + cur["lo"]) / 2
        prev["hi"], cur["lo"] = mid, mid
    return out


def fit_model(pilot: PilotSamples, rows: Sequence[dict[str, Any]], gold: Callable[[dict], str],
              is_right: Callable[[str | None, str], bool], group_field: str | None,
              first: int, *, predictor_samples: int | None = None,
              feature: str = DEFAULT_PILOT_FEATURE, bins: int = DEFAULT_PILOT_BINS,
              seed: int = 0) -> ModelCalibration:
    """Fit the utility model from a pool of samples. `first` pilot samples
    make the agreement bins; `predictor_samples` (default: `first`) pilot
    samples scored by `feature` make the pilot bins (agreement when the pool
    has no log-probabilities)."""
    totals = [len(c) for c in pilot.correct]
    prior = fit_beta(pilot.counts, totals)
    groups: dict[str, dict[str, float]] = {}
    if group_field and all(group_field in r for r in rows):
        for g in sorted({str(r[group_field]) for r in rows}):
            idx = [i for i, r in enumerate(rows) if str(r[group_field]) == g]
            gp = fit_beta([pilot.counts[i] for i in idx], [totals[i] for i in idx])
            groups[g] = {"a": gp.a, "b": gp.b, "questions": len(idx)}
    finished = [n for ls, fs in zip(pilot.lengths, pilot.finished) for n, f in zip(ls, fs) if f]
    all_samples = sum(totals)
    k = predictor_samples or first
    if feature != "agreement" and not pilot.mean_logprobs:
        feature = "agreement"
    return ModelCalibration(
        spec=pilot.spec, a=prior.a, b=prior.b,
        wrong_concentration=wrong_concentration(pilot.answers, [gold(r) for r in rows], is_right),
        finished_lengths=sorted(finished), finished_share=len(finished) / all_samples,
        questions=len(rows), samples_per_question=totals[0] if totals else 0,
        groups=groups, agreement_bins=agreement_bins(pilot, first),
        pilot_feature=feature, pilot_samples=k,
        pilot_bins=pilot_bins(pilot, k, feature, bins, seed=seed))


def verifier_reliability(correct: Sequence[Sequence[bool]], scores: Sequence[Sequence[float]],
                         ks: Sequence[int] = (2, 4, 8), draws: int = 200, seed: int = 0) -> float | None:
    """Least-squares share of (coverage - pass@1) that best-of-k by the
    verifier's scores recovers, over random k-subsets of each question's samples."""
    rng = random.Random(seed)
    num = den = 0.0
    p1 = sum(sum(c) / len(c) for c in correct) / len(correct)
    for k in ks:
        if k > min(len(c) for c in correct):
            continue
        best = cov = 0.0
        for c, s in zip(correct, scores):
            for _ in range(draws):
                pick = rng.sample(range(len(c)), k)
                best += c[max(pick, key=lambda i: s[i])]
                cov += any(c[i] for i in pick)
        best /= len(correct) * draws
        cov /= len(correct) * draws
        num += (best - p1) * (cov - p1)
        den += (cov - p1) ** 2
    if den <= 0:
        return None
    return min(1.0, max(0.0, num / den))


def pool_samples(pool: PilotSamples) -> list[list[Sample]]:
    """The pool as the rounds allocation's Sample records, each costing its
    question's mean completion length (what a planned sample is charged)."""
    gen = [sum(ls) / len(ls) if ls else 0.0 for ls in pool.lengths]
    lps = pool.mean_logprobs or [[0.0] * len(a) for a in pool.answers]
    return [[Sample(a, gen[i], lp) for a, lp in zip(pool.answers[i], lps[i])]
            for i in range(len(pool.answers))]


def fit_vote_table(pool: PilotSamples, groups: Sequence[str] | None = None,
                   seed: int = 0) -> dict[str, Any]:
    """The rounds allocation's vote-state table, with its confidence threshold
    chosen by cross-validation on the pool itself (halves stratified by
    `groups`), as JSON for the calibration file."""
    samples = pool_samples(pool)
    width = min(len(s) for s in samples)
    confident, table = choose_confidence(samples, pool.correct, pool.prompt_tokens, groups, seed=seed)
    values = fit_vote_values(samples, pool.correct, confident,
                             checkpoints=[c for c in CHECKPOINTS if c <= width])
    return {**values.to_json(), "selection": table}
