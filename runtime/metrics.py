"""Accuracy with its uncertainty, and coverage where samples are kept.

- `bootstrap_ci`: a percentile bootstrap interval of a mean (accuracy over
  items): resample the items with replacement, take the mean each time, read
  the interval's ends off the sorted means. Seeded, so a rerun prints the
  same interval.
- `pass_at_k`: the unbiased estimator of Chen et al. (2021): with n samples of
  which c are right, the chance that k drawn without replacement hold at
  least one right one, 1 - C(n-c, k) / C(n, k). Coverage is pass@n.
"""

from __future__ import annotations

from math import comb
from typing import Sequence

import numpy as np

CI_LEVEL = 0.95
RESAMPLES = 2000


def bootstrap_ci(values: Sequence[float], level: float = CI_LEVEL, resamples: int = RESAMPLES,
                 seed: int = 0) -> tuple[float, float]:
    """The `level` percentile-bootstrap interval of the mean of `values`."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1.0 - level) / 2
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(lo), float(hi)


def pass_at_k(n: int, c: int, k: int) -> float:
    """P(at least one of k samples drawn from n, c of them right, is right)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n and 0 <= c <= n (n={n}, c={c})")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def ks_for(n: int) -> list[int]:
    """The k reported for n samples: powers of two below n, and n itself."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n] if n >= 1 else []


def coverage(samples: Sequence[tuple[int, int]]) -> dict[int, float]:
    """pass@k averaged over items, for each k every item has samples for;
    `samples` holds (n, c) per item."""
    if not samples:
        return {}
    n_min = min(n for n, _ in samples)
    if n_min < 1:
        return {}
    return {k: sum(pass_at_k(n, c, k) for n, c in samples) / len(samples) for k in ks_for(n_min)}
