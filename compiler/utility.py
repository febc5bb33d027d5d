"""The utility model: how accurate a strategy is for a given amount of compute.

A model answering a task has a per-question accuracy p: the chance that one
sample is right. Across questions p follows a Beta(a, b) (hard questions near
0, easy ones near 1). Wrong samples either agree on the question's most common
wrong answer (a share `wrong_concentration` of them) or scatter.

From that:
- majority vote over k samples is right when the right answer has the
  plurality (ties broken uniformly, as `vote` breaks them by first seen);
- a verifier picking among k samples gets pass@1 + reliability x (coverage -
  pass@1), coverage being 1 - E[(1-p)^k] (a perfect verifier reaches coverage);
- a sample cut off at `max_tokens` has no answer: p becomes p x P(the
  completion finishes within max_tokens) (relative to the pilot's max_tokens
  for a calibrated model, whose accuracy was measured there).

`ttsc calibrate` fits a, b, the wrong-answer concentration, the verifier
reliability and the completion-length distribution from pilot samples on a
dev set and stores them where `calibration_path` says (the ttsc cache directory).
Without one, the documented priors below are used.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ttsc.common import paths

if TYPE_CHECKING:
    import numpy as np

CALIBRATION_VERSION = 1

# Documented priors (used when no calibration file exists):
# - per-sample accuracy: a weak Beta whose mean grows with log model size,
#   0.25 at 100M parameters, +0.1 per decade, clipped to [0.05, 0.9]; its
#   concentration a + b = 2 says "little is known" (wide spread across questions);
PRIOR_CONCENTRATION = 2.0
# - half of the wrong samples agree on one wrong answer;
PRIOR_WRONG_CONCENTRATION = 0.5
# - a verifier recovers half of the gap between pass@1 and coverage;
PRIOR_VERIFIER_RELIABILITY = 0.5
# - completion lengths are exponential with this mean (tokens).
PRIOR_MEAN_COMPLETION_TOKENS = 96.0

_GRID = 400  # quadrature points over p


def prior_mean_accuracy(num_params: float | None) -> float:
    if not num_params:
        return 0.25
    return float(min(0.9, max(0.05, 0.25 + 0.1 * math.log10(num_params / 1e8))))


@dataclass(frozen=True)
class BetaPrior:
    a: float
    b: float

    @property
    def mean(self) -> float:
        return self.a / (self.a + self.b)

    @property
    def variance(self) -> float:
        s = self.a + self.b
        return self.a * self.b / (s * s * (s + 1))

    @staticmethod
    def from_mean(mean: float, concentration: float = PRIOR_CONCENTRATION) -> "BetaPrior":
        return BetaPrior(mean * concentration, (1 - mean) * concentration)


# numpy is imported where used: compiling a file without a budget never needs it.


@lru_cache(maxsize=256)
def _grid(a: float, b: float) -> tuple["np.ndarray", "np.ndarray"]:
    """Quadrature nodes p and weights for E over Beta(a, b).

    Nodes are Chebyshev-spaced (dense near 0 and 1, where Beta densities with
    a or b < 1 put their mass); weights are density x node spacing, normalized.
    """
    import numpy as np

    u = (np.arange(_GRID) + 0.5) / _GRID
    p = (1 - np.cos(np.pi * u)) / 2
    dp = np.pi / 2 * np.sin(np.pi * u) / _GRID
    logd = (a - 1) * np.log(p) + (b - 1) * np.log1p(-p)
    w = np.exp(logd - logd.max()) * dp
    return p, w / w.sum()


def _log_multinomial(k: int) -> tuple["np.ndarray", "np.ndarray", "np.ndarray"]:
    import numpy as np

    x, y = np.meshgrid(np.arange(k + 1), np.arange(k + 1), indexing="ij")
    ok = x + y <= k
    z = np.where(ok, k - x - y, 0)
    from math import lgamma
    lg = np.array([lgamma(i + 1) for i in range(k + 1)])
    coef = lg[k] - lg[x] - lg[y] - lg[z]
    return np.where(ok, coef, -np.inf), x, y


@lru_cache(maxsize=128)
def _win_table(k: int) -> tuple["np.ndarray", "np.ndarray", "np.ndarray", "np.ndarray"]:
    """For x right, y top-wrong and z scattered answers (x + y + z = k): the
    chance the plurality vote picks the right answer, and the terms of the
    multinomial coefficient."""
    import numpy as np

    coef, x, y = _log_multinomial(k)
    z = k - x - y
    win = np.zeros_like(coef)
    rival = np.maximum(y, (z > 0).astype(int))  # best count among wrong answers
    win[x > rival] = 1.0
    tie = (x == rival) & (x >= 1)
    # Tied groups: the right answer, the top wrong one if tied, and (at a
    # count of 1) every scattered answer.
    tied = 1 + (y == x) + np.where(x == 1, z, 0)
    win = np.where(tie, 1.0 / np.maximum(tied, 1), win)
    win[np.isinf(coef)] = 0.0
    return coef, x, y, win


def vote_accuracy_at(p: "np.ndarray", k: int, wrong_concentration: float) -> "np.ndarray":
    """P(plurality vote over k samples is right) for each per-sample accuracy in p."""
    import numpy as np

    if k <= 0:
        return np.zeros_like(p)
    coef, x, y, win = _win_table(k)
    ok = ~np.isinf(coef)
    xs, ys = x[ok], y[ok]
    zs = k - xs - ys
    weight = np.exp(coef[ok]) * win[ok]
    powers = np.arange(k + 1)
    # numpy's 0.0 ** 0 == 1: a zero count of an impossible kind is certain.
    pp = p[:, None] ** powers
    qq = ((1 - p) * wrong_concentration)[:, None] ** powers  # the top wrong answer
    rr = ((1 - p) * (1 - wrong_concentration))[:, None] ** powers  # scattered answers
    return (pp[:, xs] * qq[:, ys] * rr[:, zs]) @ weight


@lru_cache(maxsize=4096)
def _expected(kind: str, a: float, b: float, w: float, k: int, finish: float) -> float:
    """E over p ~ Beta(a, b) of an accuracy, for samples that finish with
    probability `finish`: kind is pass1, coverage or vote."""
    p, weights = _grid(a, b)
    p = p * finish
    if kind == "pass1":
        return float(p @ weights)
    if kind == "coverage":
        return float(1 - ((1 - p) ** k) @ weights)
    return float(vote_accuracy_at(p, k, w) @ weights)


@dataclass(frozen=True)
class AccuracyModel:
    """Per-sample accuracy of one model on one task, and what follows for k samples."""

    prior: BetaPrior
    wrong_concentration: float = PRIOR_WRONG_CONCENTRATION
    verifier_reliability: float = PRIOR_VERIFIER_RELIABILITY
    # Sorted lengths (tokens) of pilot completions that finished, and the share
    # that finished within the pilot's max_tokens (reported; the accuracy
    # already reflects it); None: the exponential prior.
    finished_lengths: tuple[int, ...] | None = None
    finished_share: float = 1.0
    calibrated: bool = False

    def finish_prob(self, max_tokens: int | None) -> float:
        """P(a completion finishes within max_tokens); 1 when unlimited, or
        when the model was already truncated (finished_lengths == ()).

        A calibrated accuracy was measured at the pilot's max_tokens, so this is
        relative to it: the share of the pilot's finished completions that
        would also finish within max_tokens (1 at or beyond the pilot's limit,
        which the pilot cannot see past)."""
        if max_tokens is None or self.finished_lengths == ():
            return 1.0
        if self.finished_lengths:
            lengths = self.finished_lengths
            return sum(1 for n in lengths if n <= max_tokens) / len(lengths)
        return 1.0 - math.exp(-max_tokens / PRIOR_MEAN_COMPLETION_TOKENS)

    def _expected(self, kind: str, k: int, max_tokens: int | None) -> float:
        return _expected(kind, round(self.prior.a, 6), round(self.prior.b, 6),
                         round(self.wrong_concentration, 6), k, self.finish_prob(max_tokens))

    def pass_at_1(self, max_tokens: int | None = None) -> float:
        return self._expected("pass1", 1, max_tokens)

    def coverage(self, k: int, max_tokens: int | None = None) -> float:
        """1 - E[(1 - p)^k]: some sample among k is right."""
        return self._expected("coverage", k, max_tokens)

    def vote_accuracy(self, k: int, max_tokens: int | None = None) -> float:
        return self._expected("vote", k, max_tokens)

    def best_of(self, k: int, max_tokens: int | None = None,
                reliability: float | None = None) -> float:
        """Accuracy of picking one of k samples with a verifier."""
        rho = self.verifier_reliability if reliability is None else reliability
        p1 = self.pass_at_1(max_tokens)
        return p1 + rho * (self.coverage(k, max_tokens) - p1)

    def accuracy(self, aggregate: str, k: int, max_tokens: int | None = None) -> float:
        """`aggregate` is vote, best or single."""
        if aggregate == "vote":
            return self.vote_accuracy(k, max_tokens)
        if aggregate == "best":
            return self.best_of(k, max_tokens)
        return self.pass_at_1(max_tokens)


def expected_completion_tokens(max_tokens: int, calibration: "ModelCalibration | None" = None) -> float:
    """Mean tokens a sample generates when cut at `max_tokens`.

    Calibrated: the pilot's completions, finished ones at their length (cut
    at max_tokens) and unfinished ones at max_tokens. Prior: lengths are
    exponential with mean PRIOR_MEAN_COMPLETION_TOKENS, so the mean of
    min(length, max_tokens) is mean x (1 - exp(-max_tokens / mean)).
    """
    if max_tokens <= 0:
        return 0.0
    if calibration is not None and calibration.finished_lengths:
        share = calibration.finished_share
        finished = sum(min(n, max_tokens) for n in calibration.finished_lengths) / len(calibration.finished_lengths)
        return share * finished + (1 - share) * max_tokens
    mean = PRIOR_MEAN_COMPLETION_TOKENS
    return mean * (1 - math.exp(-max_tokens / mean))


def prior_model(num_params: float | None) -> AccuracyModel:
    return AccuracyModel(BetaPrior.from_mean(prior_mean_accuracy(num_params)))


def truncated(model: AccuracyModel, finish: float) -> AccuracyModel:
    """The model of samples that are right only when they also finish (p x finish),
    its Beta matched to the mean and variance of p x finish; no further truncation."""
    if finish >= 1.0:
        return AccuracyModel(model.prior, model.wrong_concentration, model.verifier_reliability,
                             (), 1.0, model.calibrated)
    finish = max(finish, 1e-6)
    mean = model.prior.mean * finish
    var = max(model.prior.variance * finish ** 2, 1e-9)
    conc = max(mean * (1 - mean) / var - 1, 1e-3)
    return AccuracyModel(BetaPrior(max(mean * conc, 1e-4), max((1 - mean) * conc, 1e-4)),
                         model.wrong_concentration, model.verifier_reliability, (), 1.0,
                         model.calibrated)


def pooled(models: Sequence[tuple[AccuracyModel, int]]) -> AccuracyModel:
    """One model for samples drawn from several sources (count-weighted): the
    Beta matched to the mixture's mean and variance, other parameters averaged."""
    models = [(m, c) for m, c in models if c > 0]
    if len(models) == 1:
        return models[0][0]
    total = sum(c for _, c in models)
    mean = sum(m.prior.mean * c for m, c in models) / total
    second = sum((m.prior.variance + m.prior.mean ** 2) * c for m, c in models) / total
    var = max(second - mean ** 2, 1e-6)
    conc = max(mean * (1 - mean) / var - 1, 1e-3)
    avg = lambda f: sum(f(m) * c for m, c in models) / total  # noqa: E731
    lengths = None if any(m.finished_lengths is None for m, _ in models) else ()
    return AccuracyModel(BetaPrior(max(mean * conc, 1e-3), max((1 - mean) * conc, 1e-3)),
                         avg(lambda m: m.wrong_concentration),
                         avg(lambda m: m.verifier_reliability),
                         lengths, 1.0, all(m.calibrated for m, _ in models))


# ------------------------------------------------------------------ fitting


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def beta_binomial_loglik(a: float, b: float, correct: Sequence[int], totals: Sequence[int]) -> float:
    return sum(_log_beta(c + a, n - c + b) - _log_beta(a, b) for c, n in zip(correct, totals))


def fit_beta(correct: Sequence[int], totals: Sequence[int]) -> BetaPrior:
    """Maximum-likelihood Beta(a, b) of per-question accuracy from per-question
    counts of right samples, started from the method of moments.

    Bounds keep degenerate data (all right, all wrong) finite: a, b in [0.05, 1000].
    """
    if not correct or len(correct) != len(totals):
        raise ValueError("need one (correct, total) pair per question")
    shares = [c / n for c, n in zip(correct, totals) if n > 0]
    m = sum(shares) / len(shares)
    v = sum((s - m) ** 2 for s in shares) / max(len(shares) - 1, 1)
    mean_n = sum(totals) / len(totals)
    # Moments of a beta-binomial share: var = m(1-m)/n + (1 - 1/n) * var_beta.
    var_beta = max((v - m * (1 - m) / mean_n) / max(1 - 1 / mean_n, 1e-9), 1e-4)
    m = min(max(m, 1e-3), 1 - 1e-3)
    conc = min(max(m * (1 - m) / var_beta - 1, 0.1), 1000.0)
    start = (math.log(m * conc), math.log((1 - m) * conc))
    lo, hi = math.log(0.05), math.log(1000.0)

    def neg(theta: Sequence[float]) -> float:
        la, lb = (min(max(t, lo), hi) for t in theta)
        return -beta_binomial_loglik(math.exp(la), math.exp(lb), correct, totals)

    best = _nelder_mead(neg, start)
    a, b = (math.exp(min(max(t, lo), hi)) for t in best)
    return BetaPrior(a, b)


def _nelder_mead(f, x0: Sequence[float], step: float = 0.5, iters: int = 300,
                 tol: float = 1e-9) -> list[float]:
    """Minimize f over R^2 (a small, dependable simplex search)."""
    pts = [list(x0), [x0[0] + step, x0[1]], [x0[0], x0[1] + step]]
    vals = [f(p) for p in pts]
    for _ in range(iters):
        order = sorted(range(3), key=lambda i: vals[i])
        pts, vals = [pts[i] for i in order], [vals[i] for i in order]
        if abs(vals[2] - vals[0]) < tol:
            break
        c = [(pts[0][j] + pts[1][j]) / 2 for j in range(2)]
        refl = [c[j] + (c[j] - pts[2][j]) for j in range(2)]
        fr = f(refl)
        if fr < vals[0]:
            exp_ = [c[j] + 2 * (c[j] - pts[2][j]) for j in range(2)]
            fe = f(exp_)
            pts[2], vals[2] = (exp_, fe) if fe < fr else (refl, fr)
        elif fr < vals[1]:
            pts[2], vals[2] = refl, fr
        else:
            con = [c[j] + 0.5 * (pts[2][j] - c[j]) for j in range(2)]
            fc = f(con)
            if fc < vals[2]:
                pts[2], vals[2] = con, fc
            else:
                for i in (1, 2):
                    pts[i] = [pts[0][j] + 0.5 * (pts[i][j] - pts[0][j]) for j in range(2)]
                    vals[i] = f(pts[i])
    return pts[min(range(3), key=lambda i: vals[i])]


def wrong_concentration(answer_lists: Sequence[Sequence[Any]], golds: Sequence[Any],
                        is_right) -> float:
    """Share of wrong samples equal to their question's most common wrong answer
    (no-answer samples count as scattered)."""
    top = wrong = 0
    for answers, gold in zip(answer_lists, golds):
        counts: dict[Any, int] = {}
        for a in answers:
            if not is_right(a, gold):
                wrong += 1
                if a is not None and a != "":
                    counts[a] = counts.get(a, 0) + 1
        top += max(counts.values(), default=0)
    return top / wrong if wrong else PRIOR_WRONG_CONCENTRATION


# ------------------------------------------------------------------ calibration files


@dataclass
class ModelCalibration:
    """Fitted figures for one model (by the strategy's model name)."""

    spec: str
    a: float
    b: float
    wrong_concentration: float
    finished_lengths: list[int]
    finished_share: float
    questions: int
    samples_per_question: int
    groups: dict[str, dict[str, float]] = field(default_factory=dict)  # e.g. difficulty -> a, b
    agreement_bins: list[dict[str, float]] = field(default_factory=list)
    # The pilot predictor (runtime/calibrate.py: pilot_bins): which score of
    # how many pilot samples, and per score bin its range, the Beta of the
    # later samples' accuracy, tokens per sample and the measured vote
    # accuracy by total sample count (the pilot included).
    pilot_feature: str = ""
    pilot_samples: int = 0
    pilot_bins: list[dict[str, Any]] = field(default_factory=list)
    # The rounds allocation's vote-state table (runtime/allocation/rounds.py:
    # VoteValues.to_json), with the dev cross-validation that chose its
    # confidence threshold; empty when not fitted.
    vote_values: dict[str, Any] = field(default_factory=dict)

    def model(self, group: str | None = None) -> AccuracyModel:
        a, b = self.a, self.b
        if group is not None and group in self.groups:
            a, b = self.groups[group]["a"], self.groups[group]["b"]
        return AccuracyModel(BetaPrior(a, b), self.wrong_concentration, PRIOR_VERIFIER_RELIABILITY,
                             tuple(sorted(self.finished_lengths)) or None, self.finished_share, True)

    def agreement_model(self, agreement: float) -> AccuracyModel:
        """The model for a question whose pilot samples agreed this much."""
        for b in self.agreement_bins:
            if b["lo"] <= agreement <= b["hi"]:
                return AccuracyModel(BetaPrior(b["a"], b["b"]), self.wrong_concentration,
                                     PRIOR_VERIFIER_RELIABILITY,
                                     tuple(sorted(self.finished_lengths)) or None,
                                     self.finished_share, True)
        return self.model()

    def pilot_bin(self, score: float) -> dict[str, Any]:
        """The pilot bin a score falls in (the first and last are open-ended)."""
        if not self.pilot_bins:
            raise ValueError("this calibration has no pilot bins (run `ttsc calibrate`)")
        return next((b for b in self.pilot_bins if score <= b["hi"]), self.pilot_bins[-1])

    def pilot_curve(self, score: float, totals: Sequence[int]) -> list[float]:
        """Predicted vote accuracy at each total sample count (each >= the pilot's
        size) for an input whose pilot scored `score`: the dev set's measured
        accuracy where it reached, extended past that by the bin's Beta model."""
        b = self.pilot_bin(score)
        measured = {int(t): v for t, v in b["curve"].items()}
        top = max(measured)
        model = AccuracyModel(BetaPrior(b["a"], b["b"]), self.wrong_concentration,
                              PRIOR_VERIFIER_RELIABILITY, (), 1.0, True)
        out = []
        for t in totals:
            if t < self.pilot_samples:
                raise ValueError(f"a total of {t} samples is fewer than the pilot's "
                                 f"{self.pilot_samples}")
            if t in measured:
                out.append(measured[t])
            elif t > top:
                extra = model.vote_accuracy(t) - model.vote_accuracy(top)
                out.append(min(1.0, max(measured[top], measured[top] + extra)))
            else:  # between measured totals: linear in log t
                lo = max(k for k in measured if k < t)
                hi = min(k for k in measured if k > t)
                w = (math.log(t) - math.log(lo)) / (math.log(hi) - math.log(lo))
                out.append(measured[lo] + w * (measured[hi] - measured[lo]))
        return out


@dataclass
class Calibration:
    strategy: str
    file: str
    data: str
    pilot: dict[str, Any]
    models: dict[str, ModelCalibration]
    verifiers: dict[str, float] = field(default_factory=dict)  # verifier model -> reliability
    input_tokens: float | None = None  # mean tokens of a task input (question)
    created: float = 0.0
    version: int = CALIBRATION_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @staticmethod
    def from_json(text: str) -> "Calibration":
        d = json.loads(text)
        if d.get("version") != CALIBRATION_VERSION:
            raise ValueError(f"calibration version {d.get('version')} is not {CALIBRATION_VERSION}")
        d["models"] = {k: ModelCalibration(**v) for k, v in d["models"].items()}
        return Calibration(**d)


def calibration_path(strategy_file: str | Path) -> Path:
    """Where `ttsc calibrate` keeps a strategy file's calibration and the
    compiler finds it: the calibrations room of the ttsc cache directory,
    one file per strategy file (by its resolved path); never beside the
    source, which may be a read-only checkout."""
    p = Path(strategy_file).expanduser().resolve()
    digest = hashlib.sha256(str(p).encode()).hexdigest()[:10]
    return paths.room("calibrations") / f"{p.stem}-{digest}.json"


def load_calibration(strategy_file: str | Path) -> Calibration | None:
    """The calibration stored for a strategy file, or None (also when unreadable)."""
    path = calibration_path(strategy_file)
    if not path.is_file():
        return None
    try:
        return Calibration.from_json(path.read_text())
    except (ValueError, TypeError, KeyError, OSError):
        return None
