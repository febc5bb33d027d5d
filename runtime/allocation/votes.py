"""Votes over samples: agreement, whether a vote is right, and its expected
accuracy over random subsets of a pool of samples (what calibration, the
pilot predictor, the rounds allocation and threshold selection all read)."""

from __future__ import annotations

import random
from typing import Sequence

CURVE_DRAWS = 200
MIN_BIN_QUESTIONS = 3


def agreement(answers: Sequence[str | None]) -> float:
    """Share of the answers equal to the most common real answer."""
    counts: dict[str, int] = {}
    for a in answers:
        if a is not None and a != "":
            counts[a] = counts.get(a, 0) + 1
    return max(counts.values(), default=0) / len(answers) if answers else 0.0


def group_sorted(keys: Sequence[float], size: int) -> list[list[int]]:
    """Positions of ascending `keys` in consecutive groups of at least `size`
    (equal keys stay together); a last group smaller than MIN_BIN_QUESTIONS
    joins the one before."""
    groups: list[list[int]] = []
    for j, key in enumerate(keys):
        if groups and (len(groups[-1]) < size or keys[groups[-1][-1]] == key):
            groups[-1].append(j)
        else:
            groups.append([j])
    if len(groups) > 1 and len(groups[-1]) < MIN_BIN_QUESTIONS:
        last = groups.pop()
        groups[-1] += last
    return groups


def vote_is_right(answers: Sequence[str | None], right: Sequence[bool]) -> bool:
    """Whether the plurality vote (ties to the first seen) picks a right answer."""
    from ttsc.runtime.ops import vote  # the vote strategies run: one tie rule

    winner = vote(list(answers))
    return winner != "" and any(r for a, r in zip(answers, right) if a == winner)


def conditional_vote_accuracy(answers: Sequence[str | None], right: Sequence[bool], first: int,
                              total: int, rng: random.Random, draws: int = CURVE_DRAWS) -> float:
    """Vote accuracy over `total` samples of one question whose first `first`
    samples (the pilot) are always in, the rest drawn without replacement
    from its other samples (random order: ties go to the first seen)."""
    rest = list(range(first, len(answers)))
    extra = total - first
    if extra < 0 or extra > len(rest):
        raise ValueError(f"cannot draw {total} samples with a pilot of {first} from {len(answers)}")
    if extra == len(rest) or extra == 0:
        draws = min(draws, 24)  # only the order varies
    hits = 0
    for _ in range(draws):
        pick = list(range(first)) + rng.sample(rest, extra)
        rng.shuffle(pick)
        hits += vote_is_right([answers[i] for i in pick], [right[i] for i in pick])
    return hits / draws


def isotonic(values: Sequence[float]) -> list[float]:
    """The closest non-decreasing sequence (least squares, pool adjacent
    violators): a measured vote-accuracy curve without its sampling dips, so
    the allocator does not chase noise."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([v, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m1, c1), (m2, c2) = blocks[-2], blocks.pop()
            blocks[-1] = [(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2]
    return [m for m, c in blocks for _ in range(int(c))]
