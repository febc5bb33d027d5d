"""`confidence`: a score per candidate from its own token log-probabilities
(DeepConf; the perplexity-weighted vote), as a weight or a filter."""

from __future__ import annotations

import math

import pytest

from scripted_engine import ScriptedEngine
from test_compile_errors import render
from test_executor import HEAD, plan_of, run
from ttsc.compiler.ops import T
from ttsc.runtime.ops import confidence, host_op
from ttsc.runtime.values import Candidate


def cand(*lps: float) -> Candidate:
    return Candidate("x", None, True, len(lps), tuple(lps) if lps else None)


def test_mean_is_the_inverse_perplexity():
    (c,) = confidence([cand(-0.1, -0.3, -0.2)], "mean")
    assert c == pytest.approx(math.exp(-0.2))


def test_min_is_the_weakest_window_and_tail_the_last_one():
    lps = (-0.1, -0.1, -2.0, -2.0, -0.1, -0.1, -0.1, -0.5)
    (lo,) = confidence([cand(*lps)], "min", window=2)
    assert lo == pytest.approx(math.exp(-2.0))  # tokens 3-4
    (tail,) = confidence([cand(*lps)], "tail", window=2)
    assert tail == pytest.approx(math.exp(-0.3))
    (whole,) = confidence([cand(-0.4, -0.2)], "min", window=8)  # shorter than a window: all of it
    assert whole == pytest.approx(math.exp(-0.3))
    (tail,) = confidence([cand(-0.4, -0.2)], "tail", window=8)
    assert tail == pytest.approx(math.exp(-0.3))


def test_a_candidate_without_logprobs_scores_zero():
    assert confidence([cand(), Candidate("", None, True, 0, ())], "mean") == [0.0, 0.0]


def test_confidence_orders_a_sure_sample_above_an_unsure_one():
    sure, unsure = cand(-0.01, -0.02, -0.01), cand(-1.5, -0.01, -2.0)
    for agg in ("mean", "min", "tail"):
        a, b = host_op("confidence", {"agg": agg, "window": 2}, {"candidates": [unsure, sure]})
        assert 0 < b <= 1 and a < b, agg


def test_confidence_is_typed_scores_with_its_own_aggregations():
    plan = plan_of("strategy s(question) {\n c = generate(policy, solve, n=4)\n"
                   " return vote(extract(c, number), weights=confidence(c, agg=tail, window=4))\n}\n")
    node = next(n for n in plan.region.nodes.values() if n.op == "confidence")
    assert node.type == T.SCORES.value and node.attrs["agg"] == "tail" and node.attrs["window"] == 4
    plan = plan_of("strategy s(question) {\n c = generate(policy, solve, n=4)\n"
                   " return vote(extract(c, number), weights=confidence(c))\n}\n")
    node = next(n for n in plan.region.nodes.values() if n.op == "confidence")
    assert "agg" not in node.attrs and node.attrs["window"] == 8  # the table's default, read at run time
    lps = (-1.0, -0.1)
    assert host_op("confidence", node.attrs, {"candidates": [cand(*lps)]}) == confidence([cand(*lps)], "mean")


def test_a_bad_aggregation_or_window_is_an_error_at_the_argument():
    src = HEAD + "strategy s(question) {\n c = generate(policy, solve)\n return best(c, by=confidence(c, agg=tial))\n}\n"
    assert render(src).startswith("t.tts:7:38: error: argument `agg` of `confidence` must be one of "
                                  "mean, min, tail")
    assert "did you mean `tail`?" in render(src)
    src = HEAD + "strategy s(question) {\n c = generate(policy, solve)\n return best(c, by=confidence(c, window=0))\n}\n"
    assert "argument `window` of `confidence` must be at least 1" in render(src)
    src = HEAD + "strategy s(question) {\n c = generate(policy, solve)\n return top(c, by=confidence(c), k=2, distinct=1)\n}\n"
    assert "argument `distinct` of `top` must be true or false" in render(src)


def test_filter_then_vote_keeps_the_most_confident_samples():
    # Four samples say "1" unsure, two say "2" sure: the vote says 1, the
    # filtered vote 2, the weighted vote weighs them.
    engine = ScriptedEngine({"q": ["1", "1", "2", "1", "1", "2"]},
                            logprob=lambda text: -0.05 if text == "2" else -1.0)
    head = "strategy s(question) {\n c = generate(policy, solve, n=6)\n"
    plain = run(head + " return vote(extract(c, number))\n}\n", [{"question": "q"}], engine)
    kept = run(head + " return vote(extract(top(c, by=confidence(c), k=2), number))\n}\n",
               [{"question": "q"}], engine)
    assert (plain.outputs, kept.outputs) == (["1"], ["2"])


def test_confidence_vote_runs_on_the_tiny_model(tiny_paged):
    engine = tiny_paged
    body = ("strategy s(question) {\n c = generate(policy, solve, n=6, max_tokens=6)\n"
            " kept = top(c, by=confidence(c, agg=min, window=3), k=3)\n"
            " return vote(extract(kept, regex(\".\")), weights=confidence(kept))\n}\n")
    result = run(body, [{"question": "What is 1 + 1?"}, {"question": "2 + 2?"}], engine)
    assert all(isinstance(o, str) and o for o in result.outputs)
    ops = [op for t in result.trace for op in t.ops]
    assert "confidence" in ops
    # no model call for the scores: the only engine calls are the samples
    assert result.total_usage.calls == 2
