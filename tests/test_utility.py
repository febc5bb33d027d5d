"""The utility model: vote, coverage and best-of-k accuracy, fitting, calibration files."""

import math
import random

import pytest

from ttsc.compiler.utility import (AccuracyModel, BetaPrior, Calibration, ModelCalibration,
                                   calibration_path, fit_beta, load_calibration, pooled,
                                   prior_mean_accuracy, prior_model, truncated, wrong_concentration)


def point(p: float, w: float = 1.0) -> AccuracyModel:
    """Every question has per-sample accuracy (almost exactly) p."""
    return AccuracyModel(BetaPrior(p * 1e5, (1 - p) * 1e5), wrong_concentration=w)


def test_vote_matches_the_binomial_majority_by_hand():
    # One wrong answer (w=1): 3 samples are right when 2 or 3 are: p^3 + 3p^2(1-p).
    assert point(0.6).vote_accuracy(3) == pytest.approx(0.6 ** 3 + 3 * 0.6 ** 2 * 0.4, abs=1e-3)
    # 4 samples, 2-2 tie broken uniformly: P(X>=3) + P(X=2)/2.
    p = 0.6
    want = p ** 4 + 4 * p ** 3 * (1 - p) + 0.5 * 6 * p ** 2 * (1 - p) ** 2
    assert point(p).vote_accuracy(4) == pytest.approx(want, abs=1e-3)
    assert point(0.3).vote_accuracy(1) == pytest.approx(0.3, abs=1e-3)


def test_scattered_wrong_answers_make_votes_win_more():
    # w=0: two samples, one right and one scattered -> tie of two singletons.
    p = 0.4
    assert point(p, w=0.0).vote_accuracy(2) == pytest.approx(p * p + 2 * p * (1 - p) / 2, abs=1e-3)
    assert point(p, w=0.0).vote_accuracy(9) > point(p, w=1.0).vote_accuracy(9)
    assert point(p, w=0.0).vote_accuracy(9) > p  # the plurality of scattered answers helps


def test_coverage_matches_the_beta_function_formula():
    a, b = 0.5, 0.7
    m = AccuracyModel(BetaPrior(a, b))

    def beta_fn(x, y):
        return math.exp(math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y))
    for k in (1, 4, 16):
        assert m.coverage(k) == pytest.approx(1 - beta_fn(a, b + k) / beta_fn(a, b), abs=5e-4)
    assert m.pass_at_1() == pytest.approx(a / (a + b), abs=5e-4)


def test_best_of_k_lies_between_pass_at_1_and_coverage():
    m = AccuracyModel(BetaPrior(1.0, 2.0), verifier_reliability=0.5)
    p1, cov = m.pass_at_1(), m.coverage(8)
    assert m.best_of(8) == pytest.approx(p1 + 0.5 * (cov - p1))
    assert m.best_of(8, reliability=1.0) == pytest.approx(cov)
    assert m.best_of(8, reliability=0.0) == pytest.approx(p1)


def test_truncation_scales_accuracy():
    m = AccuracyModel(BetaPrior(3.0, 3.0), finished_lengths=(10, 20, 30, 40), finished_share=0.8)
    # Relative to the pilot: half its finished samples were longer than 25.
    assert m.finish_prob(25) == 0.5 and m.finish_prob(100) == 1.0
    assert m.pass_at_1(25) == pytest.approx(0.25, abs=1e-3)
    t = truncated(m, 0.5)
    assert t.prior.mean == pytest.approx(0.25) and t.finish_prob(10) == 1.0
    # The documented prior without measured lengths: exponential, mean 96 tokens.
    assert AccuracyModel(BetaPrior(1, 1)).finish_prob(96) == pytest.approx(1 - math.exp(-1))


def test_fit_beta_recovers_parameters():
    rng = random.Random(7)
    a, b, n = 2.0, 3.0, 12
    correct, totals = [], []
    for _ in range(3000):
        p = rng.betavariate(a, b)
        correct.append(sum(rng.random() < p for _ in range(n)))
        totals.append(n)
    fit = fit_beta(correct, totals)
    assert fit.mean == pytest.approx(a / (a + b), abs=0.02)
    assert fit.a + fit.b == pytest.approx(a + b, rel=0.2)


def test_fit_beta_is_finite_on_degenerate_data():
    fit = fit_beta([0, 0, 0], [8, 8, 8])
    assert 0.05 <= fit.a and fit.b <= 1000 and fit.mean < 0.01


def test_wrong_concentration_counts_the_top_wrong_answer():
    answers = [["4", "5", "5", "6"], ["7", "7", "2", None]]
    golds = ["4", "7"]
    # Wrong: q1 has 5,5,6 (top 2 of 3); q2 has 2 and None (top 1 of 2): 3/5.
    assert wrong_concentration(answers, golds, lambda a, g: a == g) == pytest.approx(3 / 5)


def test_pooled_of_one_model_is_that_model_and_mixes_means():
    m = AccuracyModel(BetaPrior(2, 2))
    assert pooled([(m, 4)]) is m
    mix = pooled([(AccuracyModel(BetaPrior(9, 1)), 1), (AccuracyModel(BetaPrior(1, 9)), 1)])
    assert mix.prior.mean == pytest.approx(0.5)


def test_priors_grow_with_model_size():
    assert prior_mean_accuracy(1e8) == pytest.approx(0.25)
    assert prior_mean_accuracy(7e9) > prior_mean_accuracy(1.35e8)
    assert prior_model(1e8).prior.a + prior_model(1e8).prior.b == pytest.approx(2.0)


def test_calibration_file_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("TTSC_CACHE_DIR", str(tmp_path / "cache"))
    strategy = tmp_path / "s.tts"
    strategy.write_text("")
    cal = Calibration(strategy="s", file=str(strategy), data="dev.jsonl",
                      pilot={"samples_per_question": 8},
                      models={"policy": ModelCalibration("smollm2-135m", 0.8, 0.9, 0.4, [3, 5, 9],
                                                         0.9, 20, 8, {"easy": {"a": 2.0, "b": 1.0}},
                                                         [{"lo": 0.0, "hi": 0.6, "a": 0.5, "b": 2.0},
                                                          {"lo": 0.6, "hi": 1.0, "a": 4.0, "b": 1.0}],
                                                         "agreement", 2,
                                                         [{"lo": 0.0, "hi": 0.75, "a": 0.5, "b": 2.0,
                                                           "questions": 5, "generated": 4.0,
                                                           "curve": {"2": 0.2, "4": 0.4}},
                                                          {"lo": 0.75, "hi": 1.0, "a": 4.0, "b": 1.0,
                                                           "questions": 5, "generated": 3.0,
                                                           "curve": {"2": 0.9, "4": 0.95}}])},
                      verifiers={"judge": 0.3}, input_tokens=9.5)
    path = calibration_path(strategy)
    # Kept in the ttsc cache directory, one file per strategy file, never beside the source.
    assert path.parent != strategy.parent and path.name.startswith("s-")
    assert calibration_path(strategy.parent / "other" / "s.tts") != path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cal.to_json())
    back = load_calibration(strategy)
    assert back == cal
    m = back.models["policy"]
    assert m.model().calibrated and m.model().finish_prob(5) == pytest.approx(2 / 3)
    assert m.model("easy").prior == BetaPrior(2.0, 1.0)
    assert m.agreement_model(0.75).prior == BetaPrior(4.0, 1.0)
    assert m.agreement_model(0.25).prior == BetaPrior(0.5, 2.0)
    assert m.pilot_curve(1.0, [2, 4]) == [0.9, 0.95] and m.pilot_bin(0.2)["generated"] == 4.0
    assert m.pilot_curve(0.5, [3])[0] == pytest.approx(0.2 + 0.2 * (math.log(3) - math.log(2)) / math.log(2))
    path.write_text("{not json")
    assert load_calibration(strategy) is None


# ------------------------------------------------------------------ fitting from pilot samples


def pilot(answers, golds):
    from ttsc.runtime.calibrate import PilotSamples

    correct = [[a == g for a in ans] for ans, g in zip(answers, golds)]
    return PilotSamples("policy", "tiny-random", answers, correct,
                        [[3] * len(a) for a in answers], [[True] * len(a) for a in answers],
                        [[str(x) for x in a] for a in answers], [10] * len(answers), 0.0)


def test_agreement_bins_tile_the_unit_interval_and_keep_every_question():
    from ttsc.runtime.allocation.votes import agreement
    from ttsc.runtime.calibrate.fit import agreement_bins

    assert agreement(["4", "4", None, "5"]) == 0.5 and agreement([None, None]) == 0.0
    # 4 questions with unanimous pilots (right after), 4 scattered (wrong after), 1 in between.
    answers = ([["7"] * 8] * 4 + [["1", "2", "3", "4", "9", "9", "9", "9"]] * 4
               + [["5", "5", "6", "8", "5", "5", "5", "5"]])
    golds = ["7"] * 4 + ["5"] * 4 + ["5"]
    bins = agreement_bins(pilot(answers, golds), 4)
    assert bins[0]["lo"] == 0.0 and bins[-1]["hi"] == 1.0
    assert all(a["hi"] == b["lo"] for a, b in zip(bins, bins[1:]))
    assert sum(b["questions"] for b in bins) == 9
    low, high = bins[0], bins[-1]
    assert low["a"] / (low["a"] + low["b"]) < 0.3 < high["a"] / (high["a"] + high["b"])


def test_verifier_reliability_between_zero_and_one():
    from ttsc.runtime.calibrate.fit import verifier_reliability

    correct = [[True, False, False, False]] * 5 + [[False, True, False, False]] * 5
    perfect = [[1.0 if c else 0.0 for c in row] for row in correct]
    useless = [[0.5] * 4 for _ in correct]
    assert verifier_reliability(correct, perfect) == pytest.approx(1.0)
    assert verifier_reliability(correct, useless, draws=400) < 0.4
    assert verifier_reliability([[True] * 4] * 3, useless) is None  # no gap to close


def test_calibrate_writes_the_file_the_allocator_reads(tmp_path, monkeypatch):
    from ttsc.compiler.pipeline import compile_file
    from ttsc.runtime.calibrate import calibrate_file, summary

    monkeypatch.setenv("TTSC_CACHE_DIR", str(tmp_path / "cache"))
    strategy = tmp_path / "s.tts"
    strategy.write_text('''model policy = "tiny-random"
prompt solve = """{question} Answer with a number."""
strategy s(question) {
    return vote(extract(generate(policy, solve, n=auto, max_tokens=4), number))
}
budget { tokens <= 500 per input }
''')
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(f'{{"question": "What is {i} + 1?", "answer": "{i + 1}", '
                            f'"difficulty": "{"easy" if i < 2 else "hard"}"}}\n' for i in range(4)))
    lines: list[str] = []
    cal = calibrate_file(strategy, data, samples=4, pilot=2, log=lines.append, cache=None)
    assert calibration_path(strategy).is_file() and any("saved" in line for line in lines)
    m = cal.models["policy"]
    assert m.questions == 4 and m.samples_per_question == 4 and set(m.groups) == {"easy", "hard"}
    assert cal.input_tokens and cal.input_tokens > 0
    assert "policy (tiny-random)" in summary(cal)
    # The pilot predictor: agreement of the first 2 samples, curves up to 4.
    assert m.pilot_feature == "agreement" and m.pilot_samples == 2 and m.pilot_bins
    assert all(set(b["curve"]) == {"2", "3", "4"} for b in m.pilot_bins)
    assert cal.pilot["pilot_feature"] == "agreement" and "pilot agreement <=" in summary(cal)
    plan = compile_file(strategy).plan
    assert plan.allocation["utility_model"].startswith("calibrated")
