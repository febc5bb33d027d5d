"""The pilot predictor for per-input allocation (runtime/allocation/pilot.py),
the utility it gives (compiler/utility.py: ModelCalibration.pilot_curve), and
the pilot pool calibration draws (runtime/calibrate/pool.py)."""

import math
import random

import pytest

from ttsc.compiler.allocator import Infeasible
from ttsc.compiler.utility import ModelCalibration
from ttsc.runtime.allocation.pilot import (allocate_by_pilot, pilot_allocation, pilot_bins,
                                           pilot_score, pool_scores)
from ttsc.runtime.allocation.votes import conditional_vote_accuracy, isotonic, vote_is_right
from ttsc.runtime.calibrate.fit import fit_model
from ttsc.runtime.calibrate.pool import PilotSamples, draw_pool


def pool(answers, golds, logprobs=None, length=3):
    correct = [[a == g for a in ans] for ans, g in zip(answers, golds)]
    return PilotSamples("policy", "tiny-random", answers, correct,
                        [[length] * len(a) for a in answers], [[True] * len(a) for a in answers],
                        [[str(x) for x in a] for a in answers], [10] * len(answers), 0.0,
                        logprobs if logprobs is not None else [])


# Easy questions: every sample right. Hard ones: every sample a different wrong
# answer. Medium ones: a third right, the rest scattered.
EASY = ["7"] * 8
HARD = ["1", "2", "3", "4", "5", "6", "8", "9"]
MEDIUM = ["7", "1", "2", "7", "3", "4", "7", "5"]


def three_tiers(per_tier=4):
    answers = [EASY] * per_tier + [HARD] * per_tier + [MEDIUM] * per_tier
    return pool(answers, ["7"] * len(answers))


def test_pilot_scores():
    lp = [math.log(0.9), math.log(0.5), math.log(0.8)]
    assert pilot_score(["4", "4", "5"], None, "agreement") == pytest.approx(2 / 3)
    assert pilot_score(["4", None, "5"], lp, "confidence") == pytest.approx((0.9 + 0.8) / 3)
    # The answer with the most probability mass: "4" (0.9 + 0.5) over "5" (0.8).
    assert pilot_score(["4", "4", "5"], lp, "confident_agreement") == pytest.approx(1.4 / 3)
    # A tie in count goes to the surer answer, whichever came first.
    assert pilot_score(["4", "5"], [math.log(0.2), math.log(0.6)],
                       "confident_agreement") == pytest.approx(0.3)
    assert pilot_score([None, None], [0.0, 0.0], "confident_agreement") == 0.0
    with pytest.raises(ValueError, match="log-probabilities"):
        pilot_score(["4"], None, "confidence")
    with pytest.raises(ValueError, match="unknown pilot feature"):
        pilot_score(["4"], None, "vibes")


def test_isotonic_removes_dips_and_keeps_rising_curves():
    assert isotonic([0.1, 0.3, 0.5]) == [0.1, 0.3, 0.5]
    assert isotonic([0.2, 0.4, 0.3, 0.6]) == pytest.approx([0.2, 0.35, 0.35, 0.6])
    assert isotonic([0.5, 0.1]) == pytest.approx([0.3, 0.3])


def test_conditional_vote_keeps_the_pilot():
    rng = random.Random(0)
    answers = ["3", "3", "9", "9", "9", "9"]
    right = [a == "3" for a in answers]
    assert vote_is_right(["3", "9", "3"], [True, False, True])
    assert not vote_is_right([None, None], [False, False])
    # The pilot alone: both "3", right every time.
    assert conditional_vote_accuracy(answers, right, 2, 2, rng) == 1.0
    # Pilot plus one more ("9"): a 2-1 vote for "3", still right.
    assert conditional_vote_accuracy(answers, right, 2, 3, rng) == 1.0
    # Everything: 2 against 4, always wrong.
    assert conditional_vote_accuracy(answers, right, 2, 6, rng) == 0.0
    # Without a pilot, one random sample is right a third of the time.
    assert conditional_vote_accuracy(answers, right, 0, 1, rng, draws=3000) == pytest.approx(1 / 3, abs=0.04)
    with pytest.raises(ValueError):
        conditional_vote_accuracy(answers, right, 2, 7, rng)


def test_pilot_bins_separate_tiers_and_cover_every_question():
    bins = pilot_bins(three_tiers(), 2, "agreement", bins=3)
    assert sum(b["questions"] for b in bins) == 12
    assert all(a["hi"] == b["lo"] for a, b in zip(bins, bins[1:]))
    low, high = bins[0], bins[-1]
    # Unanimous pilots (easy) are right at any total; scattered ones (hard and
    # medium) are not, and gain from more samples.
    assert high["curve"]["2"] == 1.0 and high["curve"]["8"] == 1.0
    assert low["curve"]["2"] < 0.5
    for b in bins:
        curve = [b["curve"][t] for t in sorted(b["curve"], key=int)]
        assert curve == sorted(curve)  # non-decreasing
        assert set(b["curve"]) == {"2", "3", "4", "6", "8"}  # up to the 8 samples drawn
        assert b["generated"] == 3
    assert pilot_bins(three_tiers(), 8) == []  # no samples after the pilot


def test_fit_model_stores_the_pilot_predictor_and_looks_it_up():
    p = three_tiers()
    m = fit_model(p, [{"answer": "7"}] * 12, lambda r: r["answer"], lambda a, g: a == g, None, 4,
                  predictor_samples=2, feature="confident_agreement")
    # No log-probabilities in the pool: the agreement score instead.
    assert m.pilot_feature == "agreement" and m.pilot_samples == 2 and m.pilot_bins
    assert m.agreement_bins  # from the first 4 samples, as before
    assert m.pilot_curve(1.0, [2, 8]) == [1.0, 1.0]
    low = m.pilot_curve(0.0, [2, 4, 8])
    assert low[0] < low[-1] < 1.0
    # Between measured totals: interpolated; past them: extended by the Beta model.
    five = m.pilot_curve(0.0, [5])[0]
    assert low[1] <= five <= m.pilot_curve(0.0, [6])[0]
    far = m.pilot_curve(0.0, [64])[0]
    assert low[-1] <= far <= 1.0
    with pytest.raises(ValueError, match="fewer than the pilot"):
        m.pilot_curve(0.0, [1])
    with pytest.raises(ValueError, match="no pilot bins"):
        ModelCalibration("x", 1, 1, 0.5, [], 1.0, 0, 0).pilot_bin(0.5)


def test_allocation_by_pilot_spends_on_inputs_that_gain():
    m = fit_model(three_tiers(), [{"answer": "7"}] * 12, lambda r: r["answer"],
                  lambda a, g: a == g, None, 2)
    # New inputs: two with unanimous pilots, two with split pilots.
    pilots = [["5", "5"], ["6", "6"], ["1", "2"], ["3", "4"]]
    totals, utilities, costs = pilot_allocation(m, pilots, None, [10] * 4)
    assert totals[0] == 2 and all(len(u) == len(totals) for u in utilities)
    assert costs[0][0] == 10 + 2 * 3  # prompt once, the pilot's two samples
    budget = sum(c[0] for c in costs) + 2 * 6 * 3  # room for 6 more samples, twice
    ns = allocate_by_pilot(m, pilots, None, [10] * 4, budget)
    assert ns[0] == ns[1] == 2  # nothing to gain
    assert ns[2] > 2 and ns[3] > 2
    assert sum(10 + n * 3 for n in ns) <= budget
    with pytest.raises(Infeasible):
        allocate_by_pilot(m, pilots, None, [10] * 4, sum(c[0] for c in costs) - 1)
    with pytest.raises(ValueError, match="pilot samples"):
        pilot_allocation(m, [["5"]], None, [10])


def test_pool_scores_use_the_first_samples():
    lp = [[math.log(0.5)] * 8] * 12
    p = pool(three_tiers().answers, ["7"] * 12, lp)
    scores = pool_scores(p, 2, "confident_agreement")
    assert scores[0] == pytest.approx(0.5) and scores[4] == pytest.approx(0.25)


def test_draw_pool_keeps_each_samples_mean_logprob_and_verdicts():
    from scripted_engine import ScriptedEngine

    from ttsc.compiler.pipeline import compile_source
    from ttsc.runtime.calibrate import calibration_target

    plan = compile_source('''model policy = "tiny-random"
model judge = policy
prompt solve = "{question}"
prompt check = "Q: {question} A: {candidate}"
strategy s(question) {
    c = generate(policy, solve, n=4, max_tokens=8)
    return best(c, by=verify(judge, c, check))
}
''', "t.tts").plan
    engine = ScriptedEngine({"2 + 2": ["Answer: 4", "it is 5"]}, yes={"A: Answer: 4": 0.9})
    rows = [{"question": "What is 2 + 2?", "answer": "4"}]
    gen, how, verifiers = calibration_target(plan)
    assert gen.op == "generate" and how == {"how": "number"} and [v.op for v in verifiers] == ["verify"]
    out = draw_pool(plan, {"policy": engine, "judge": engine}, rows, gen, samples=2, how=how,
                    gold=lambda r: r["answer"], is_right=lambda a, g: a == g, verifiers=verifiers)
    assert sorted(out.answers[0]) == ["4", "5"]
    assert out.correct[0] == [a == "4" for a in out.answers[0]]
    assert out.mean_logprobs == [[pytest.approx(-0.1), pytest.approx(-0.1)]]
    verdicts = out.verdicts[verifiers[0].id][0]
    assert verdicts == [pytest.approx(0.9 if a == "4" else 0.5) for a in out.answers[0]]
    # Drawn by the executor with the generate's own node and seeds.
    assert len(engine.requests) == 1 and engine.requests[0].params.n == 2


def test_pilot_bin_curves_never_fall_with_more_samples():
    # A pilot that happens to agree on the right answer, then a wrong answer
    # that wins the longer votes: measured accuracy falls from 1 to 0 with
    # more samples; the stored curve is the closest non-decreasing one.
    answers = [["7", "7", "9", "9", "9", "9", "9", "9"]] * 3
    bins = pilot_bins(pool(answers, ["7"] * 3), 2, "agreement", bins=1)
    curve = [bins[0]["curve"][t] for t in ("2", "3", "4", "6", "8")]
    assert curve == sorted(curve)
    assert 0.0 < curve[0] < 1.0  # pooled: neither the pilot's 1 nor the longest vote's 0


def test_summary_prints_an_aliased_model_once():
    from ttsc.compiler.utility import Calibration
    from ttsc.runtime.calibrate import summary

    m = fit_model(three_tiers(), [{"answer": "7"}] * 12, lambda r: r["answer"], lambda a, g: a == g,
                  None, 2)
    twin = ModelCalibration(**{**m.__dict__})  # what a calibration file read back holds
    text = summary(Calibration("s", "s.tts", "dev.jsonl", {}, {"policy": m, "judge": twin}))
    assert text.count("per-sample accuracy") == 1 and "policy, judge (tiny-random)" in text
