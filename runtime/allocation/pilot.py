"""Per-input allocation from a pilot (Snell et al.'s difficulty bins, with the
difficulty predicted at test time).

Draw a small pilot of `first` samples per input (they stay as votes, and their
tokens are paid for), score it, and look the score up in bins fitted on a dev
set. Each bin holds the measured vote accuracy at each total sample count
(the pilot included, so the curve is conditioned on what the pilot showed)
and the Beta of the later samples' per-sample accuracy, which extends the
curve past what the dev set measured. `allocate_by_pilot` then gives every
input its total with CP-SAT under one token budget.
"""

from __future__ import annotations

import math
import random
from typing import Any, Sequence

from ttsc.compiler.utility import ModelCalibration, fit_beta
from ttsc.runtime.allocation.votes import (MIN_BIN_QUESTIONS, agreement, conditional_vote_accuracy,
                                           group_sorted, isotonic)

PILOT_FEATURES = ("agreement", "confident_agreement", "confidence")
DEFAULT_PILOT_FEATURE = "agreement"
DEFAULT_PILOT_BINS = 4
PILOT_TOTALS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)  # sample counts an input may get in all


def pilot_score(answers: Sequence[str | None], mean_logprobs: Sequence[float] | None,
                feature: str = DEFAULT_PILOT_FEATURE) -> float:
    """How easy the pilot samples make an input look (higher: easier).

    - agreement: the share of pilot samples giving the most common answer;
    - confidence: the mean per-token probability of the pilot samples that
      gave an answer (0 for those that gave none);
    - confident_agreement: the same, counting only the samples that gave one
      answer, the answer with the most probability mass: agreement weighted
      by how sure those samples were.
    """
    if feature == "agreement":
        return agreement(answers)
    if feature not in PILOT_FEATURES:
        raise ValueError(f"unknown pilot feature {feature!r} (one of {', '.join(PILOT_FEATURES)})")
    if not answers:
        return 0.0
    if not mean_logprobs:
        raise ValueError(f"pilot feature {feature!r} needs the samples' log-probabilities")
    probs = [math.exp(lp) for lp in mean_logprobs]
    if feature == "confidence":
        return sum(p for a, p in zip(answers, probs) if a not in (None, "")) / len(answers)
    mass: dict[str, float] = {}
    for a, p in zip(answers, probs):
        if a not in (None, ""):
            mass[a] = mass.get(a, 0.0) + p
    return max(mass.values(), default=0.0) / len(answers)


def pool_scores(pool: Any, first: int, feature: str = DEFAULT_PILOT_FEATURE) -> list[float]:
    """The pilot score of every question of a pool, from its first `first` samples."""
    lps = pool.mean_logprobs or [None] * len(pool.answers)
    return [pilot_score(ans[:first], lp[:first] if lp else None, feature)
            for ans, lp in zip(pool.answers, lps)]


def pilot_bins(pilot: Any, first: int, feature: str = DEFAULT_PILOT_FEATURE,
               bins: int = DEFAULT_PILOT_BINS, totals: Sequence[int] = PILOT_TOTALS,
               seed: int = 0) -> list[dict[str, Any]]:
    """Dev questions grouped by pilot score into `bins` bins of about equal size
    (ties stay together); per bin: the score range (adjacent bins meet),
    the Beta of the later samples' accuracy, the mean generated tokens per
    sample, and the measured vote accuracy at each total in `totals` that the
    dev samples reach (`curve`, keyed by the total as a string)."""
    width = min(len(c) for c in pilot.correct) if pilot.correct else 0
    if first >= width:
        return []
    scores = pool_scores(pilot, first, feature)
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    size = max(MIN_BIN_QUESTIONS, -(-len(order) // max(bins, 1)))
    groups = [[order[j] for j in g] for g in group_sorted([scores[i] for i in order], size)]
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for members in groups:
        prior = fit_beta([sum(pilot.correct[i][first:]) for i in members],
                         [len(pilot.correct[i]) - first for i in members])
        ts = sorted({first} | {t for t in totals if first <= t <= width})
        measured = [sum(conditional_vote_accuracy(pilot.answers[i], pilot.correct[i], first, t, rng)
                        for i in members) / len(members) for t in ts]
        curve = {str(t): v for t, v in zip(ts, isotonic(measured))}
        lengths = [n for i in members for n in pilot.lengths[i]]
        out.append({"lo": scores[members[0]], "hi": scores[members[-1]], "a": prior.a,
                    "b": prior.b, "questions": len(members),
                    "generated": sum(lengths) / len(lengths), "curve": curve})
    # Bins tile the scores: each starts where the previous ended (the first
    # and last are open-ended when looked up).
    for prev, cur in zip(out, out[1:]):
        mid = (prev["hi"] + cur["lo"]) / 2
        prev["hi"], cur["lo"] = mid, mid
    return out


def pilot_allocation(model: ModelCalibration, answers: Sequence[Sequence[str | None]],
                     mean_logprobs: Sequence[Sequence[float]] | None,
                     prompt_tokens: Sequence[float], totals: Sequence[int] = PILOT_TOTALS
                     ) -> tuple[list[int], list[list[float]], list[list[int]]]:
    """The per-input allocation problem for inputs whose pilots are drawn:
    (the totals each input may get, pilot included; per input, the predicted
    vote accuracy and the tokens of each total: its prompt once plus its
    samples, the pilot's among them, at its bin's tokens per sample)."""
    if not model.pilot_bins:
        raise ValueError("the calibration has no pilot bins (run `ttsc calibrate`)")
    k = model.pilot_samples
    offered = sorted({k} | {t for t in totals if t >= k})
    utilities, costs = [], []
    for i, ans in enumerate(answers):
        if len(ans) != k:
            raise ValueError(f"input {i} has {len(ans)} pilot samples; the calibration's pilot has {k}")
        lps = mean_logprobs[i] if mean_logprobs else None
        score = pilot_score(ans, lps, model.pilot_feature)
        gen = model.pilot_bin(score)["generated"]
        utilities.append(model.pilot_curve(score, offered))
        costs.append([round(prompt_tokens[i] + t * gen) for t in offered])
    return offered, utilities, costs


def allocate_by_pilot(model: ModelCalibration, answers: Sequence[Sequence[str | None]],
                      mean_logprobs: Sequence[Sequence[float]] | None,
                      prompt_tokens: Sequence[float], budget: int,
                      totals: Sequence[int] = PILOT_TOTALS) -> list[int]:
    """Samples per input in all (pilot included) that maximize the predicted
    accuracy over the data set within `budget` tokens (the pilots' included):
    CP-SAT over the per-input options (compiler/allocator.py)."""
    from ttsc.compiler.allocator import allocate_across_inputs  # ortools: loaded when used

    offered, utilities, costs = pilot_allocation(model, answers, mean_logprobs, prompt_tokens,
                                                 totals)
    return [offered[j] for j in allocate_across_inputs(utilities, costs, budget)]
