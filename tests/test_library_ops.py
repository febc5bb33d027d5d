"""The strategy library's ops: `knockout` (a pairwise judge's tournament,
played in rounds), `debate` (one round of multi-agent debate) and
`top(keep=share)` (DeepConf's filter)."""

from __future__ import annotations

import math
import re

import pytest

from scripted_engine import ScriptedEngine, _text
from test_compile_errors import render
from test_executor import HEAD, plan_of, run
from ttsc.common.capabilities import Capabilities, op_needs
from ttsc.common.errors import TTSError
from ttsc.compiler.ops import keep_count
from ttsc.compiler.pipeline import compile_source
from ttsc.runtime.engines.base import ScoreOutput, Usage
from ttsc.runtime.ops import host_op
from ttsc.runtime.values import Candidate

ANSWER = re.compile(r"Answer A:\n(.*?)\n\nAnswer B:\n(.*?)\n\n", re.S)


class Judge(ScriptedEngine):
    """A pairwise judge: P(A) from the two answers' strengths (a logistic of
    their difference), plus `bias` towards whichever answer is shown first.
    Records the size of every score call."""

    def __init__(self, answers, strength: dict[str, float], bias: float = 0.0):
        super().__init__(answers)
        self.strength = strength
        self.bias = bias
        self.score_batches: list[int] = []

    def score_next(self, requests):
        self.score_batches.append(len(requests))
        out = []
        for r in requests:
            assert r.choices == ("A", "B")
            a, b = ANSWER.search(_text(r.prompt)).groups()
            p = 1 / (1 + math.exp(-(self.strength[a] - self.strength[b]) - self.bias))
            out.append(ScoreOutput([math.log(p), math.log(1 - p)], Usage(calls=1, prompt_tokens=10)))
        return out


KNOCKOUT = "strategy s(question) {\n c = generate(policy, solve, n=%d)\n return knockout(judge, c)\n}\n"


def test_the_strongest_candidate_wins_in_log2_rounds_of_one_call_each():
    texts = [f"c{i}" for i in range(8)]
    engine = Judge({"q": texts}, {t: s for t, s in zip(texts, [3, 1, 4, 1, 5, 9, 2, 6])})
    result = run(KNOCKOUT % 8, [{"question": "q"}], engine)
    assert result.outputs == ["c5"]
    # 4 + 2 + 1 matches, each read in both orders, one engine call a round
    assert engine.score_batches == [8, 4, 2]
    (stage,) = [t for t in result.trace if t.ops == ["knockout"]]
    assert stage.requests == 14


def test_both_orders_cancel_a_judge_that_favours_the_first_answer():
    # Shown first, either answer gets P(A) > 0.5; "good" is still preferred
    # on average over the two orders, so it wins from the second place too.
    engine = Judge({"q": ["bad", "good"]}, {"bad": 0.0, "good": 0.5}, bias=1.5)
    assert run(KNOCKOUT % 2, [{"question": "q"}], engine).outputs == ["good"]
    engine = Judge({"q": ["good", "bad"]}, {"bad": 0.0, "good": 0.5}, bias=1.5)
    assert run(KNOCKOUT % 2, [{"question": "q"}], engine).outputs == ["good"]


def test_an_odd_field_gives_a_bye_and_one_candidate_needs_no_judge():
    engine = Judge({"q": ["x", "y", "z"]}, {"x": 0.0, "y": 1.0, "z": 2.0})
    assert run(KNOCKOUT % 3, [{"question": "q"}], engine).outputs == ["z"]
    assert engine.score_batches == [2, 2]  # x-y, then y-z (z had a bye)
    engine = Judge({"q": ["only"]}, {"only": 0.0})
    assert run(KNOCKOUT % 1, [{"question": "q"}], engine).outputs == ["only"]
    assert engine.score_batches == []


def test_equal_candidates_tie_to_the_one_listed_first():
    body = KNOCKOUT.replace("n=%d", "n=2, seed=0")  # seed 0: the scripted samples in order
    engine = Judge({"q": ["a", "b"]}, {"a": 0.0, "b": 0.0})
    assert run(body, [{"question": "q"}], engine).outputs == ["a"]
    engine = Judge({"q": ["b", "a"]}, {"a": 0.0, "b": 0.0})
    assert run(body, [{"question": "q"}], engine).outputs == ["b"]


def test_two_knockouts_in_one_stage_advance_in_step():
    body = ("prompt again = \"{question} again\"\n"
            "strategy s(question) {\n c = generate(policy, solve, n=4)\n d = generate(policy, again, n=2)\n"
            " return knockout(judge, c) + knockout(judge, d)\n}\n")
    engine = Judge({"again": ["e", "f"], "q": ["a", "b", "c", "d"]},
                   {"a": 0.0, "b": 1.0, "c": 2.0, "d": 3.0, "e": 5.0, "f": 4.0})
    result = run(body, [{"question": "q"}], engine)
    assert result.outputs == ["de"]
    assert engine.score_batches == [4 + 2, 2]  # round one of both, then the 4-field's final


def test_knockout_is_text_from_a_judge_with_a_prompt_of_its_own():
    plan = plan_of("prompt pair = \"{question} A: {candidate_a} B: {candidate_b}\"\n" + KNOCKOUT.replace(
        "knockout(judge, c)", "knockout(judge, c, pair)") % 4)
    node = next(n for n in plan.region.nodes.values() if n.op == "knockout")
    assert node.type == "text" and node.attrs["prompt"] == "pair"
    stage = next(s for s in plan.region.stages if s.kind == "llm" and node.id in s.nodes)
    assert stage.facts["requests_per_input"] == 6 and stage.facts["samples_per_input"] == 0
    engine = Judge({"q": ["a", "b"]}, {"a": 0.0, "b": 1.0})
    with pytest.raises(AttributeError):  # the own prompt has no "Answer A:" for this judge to read
        run("prompt pair = \"{question} A: {candidate_a} B: {candidate_b}\"\n"
            + KNOCKOUT.replace("knockout(judge, c)", "knockout(judge, c, pair)") % 2,
            [{"question": "q"}], engine)


def test_knockout_errors_are_at_the_argument():
    src = HEAD + "strategy s(question) {\n c = generate(policy, solve)\n return knockout(judge, extract(c, number))\n}\n"
    assert "argument `candidates` of `knockout` must be candidates, got answers" in render(src)
    src = HEAD + ("prompt bad = \"{question} {candidate}\"\n"
                  "strategy s(question) {\n c = generate(policy, solve)\n return knockout(judge, c, bad)\n}\n")
    assert "`{candidate}` in prompt `bad` names no variable" in render(src)


def test_knockout_needs_next_token_scores():
    assert op_needs("knockout") == ("next_token_scores",)
    src = HEAD + KNOCKOUT % 4
    with pytest.raises(TTSError) as caught:
        compile_source(src, "t.tts", capabilities={"judge": Capabilities(next_token_scores=False)})
    assert "`knockout` cannot run on model `judge`" in caught.value.diagnostics[0].message


def test_explain_predicts_the_matches_tokens():
    def predicted(n: int) -> int:
        return compile_source(HEAD + KNOCKOUT % n, "t.tts").plan.facts["predicted_tokens_per_input"]

    def generated(n: int) -> int:
        body = "strategy s(question) {\n c = generate(policy, solve, n=%d)\n return best(c, by=confidence(c))\n}\n"
        return compile_source(HEAD + body % n, "t.tts").plan.facts["predicted_tokens_per_input"]

    # m - 1 matches of two requests, each holding two candidates and the question
    four, eight = predicted(4) - generated(4), predicted(8) - generated(8)
    assert four > 0 and eight > 2 * four


# ------------------------------------------------------------------ debate

DEBATE = ("prompt argue = \"{question} | mine: {candidate} | others: {others}\"\n"
          "strategy s(question) {\n a = generate(policy, solve, n=3)\n"
          " repeat %d {\n  a = debate(policy, a, argue, max_tokens=8)\n }\n return vote(extract(a, number))\n}\n")


def test_each_agent_reads_its_own_answer_and_the_others():
    engine = ScriptedEngine({"mine": ["7"], "q": ["1", "2", "3"]})
    result = run(DEBATE % 1, [{"question": "q"}], engine)
    assert result.outputs == ["7"]
    debate = [r for r in engine.requests if "mine" in _text(r.prompt)]
    assert engine.batches == [1, 3]  # the agents' answers, then one call for the round
    mines = []
    for req in debate:
        mine, others = _text(req.prompt).split("| mine: ")[1].split(" | others: ")
        listed = re.findall(r"\[(\d)\] (\d)", others)
        assert [i for i, _ in listed] == ["1", "2"] and req.params.n == 1
        assert sorted([mine] + [a for _, a in listed]) == ["1", "2", "3"]
        mines.append(mine)
    assert sorted(mines) == ["1", "2", "3"]  # every agent speaks once


def test_rounds_of_debate_revise_the_revisions():
    engine = ScriptedEngine({"mine: 5": ["6"], "mine": ["5"], "q": ["1", "2", "3"]})
    result = run(DEBATE % 2, [{"question": "q"}], engine)
    assert result.outputs == ["6"] and engine.batches == [1, 3, 3]


def test_debate_is_typed_and_predicted():
    plan = plan_of(DEBATE % 2)
    node = next(n for loop in plan.region.stages if loop.kind == "loop"
                for n in loop.body.nodes.values() if n.op == "debate")
    assert node.type == "candidates" and node.facts["count"] == 3
    src = HEAD + "strategy s(question) {\n c = generate(policy, solve)\n return vote(debate(policy, c))\n}\n"
    assert "argument `answers` of `vote` must be answers, got candidates" in render(src)
    one, two = (compile_source(HEAD + DEBATE % r, "t.tts").plan.facts["predicted_tokens_per_input"]
                for r in (1, 2))
    assert two > one


def test_debate_runs_on_the_tiny_model(tiny_paged):
    engine = tiny_paged
    body = ("strategy s(question) {\n a = generate(policy, solve, n=3, max_tokens=6)\n"
            " repeat 2 {\n  a = debate(policy, a, max_tokens=6)\n }\n"
            " return knockout(judge, a)\n}\n")
    result = run(body, [{"question": "What is 1 + 1?"}, {"question": "2 + 2?"}], engine)
    assert all(isinstance(o, str) for o in result.outputs)
    ops = [t.ops for t in result.trace if t.kind == "llm"]
    assert ops.count(["debate"]) == 4 and ops.count(["knockout"]) == 2


# ------------------------------------------------------------------ top(keep=)

def test_keep_rounds_the_share_up_and_keeps_at_least_one():
    assert [keep_count(0.1, 16), keep_count(0.5, 3), keep_count(0.3, 10), keep_count(1, 7),
            keep_count(0.01, 5), keep_count(0.5, 0)] == [2, 2, 3, 7, 1, 0]


def test_top_keeps_the_best_share():
    cands = [Candidate(t, None, True, 1) for t in "abcdef"]
    kept = host_op("top", {"keep": 0.5}, {"candidates": cands, "by": [1, 6, 2, 5, 3, 4]})
    assert [c.text for c in kept] == ["b", "d", "f"]


def test_top_takes_k_or_keep():
    body = "strategy s(question) {\n c = generate(policy, solve, n=8)\n return vote(extract(top(c, by=confidence(c)%s), number))\n}\n"
    assert "`top` takes `k=` or `keep=`" in render(HEAD + body % "")
    assert "`top` takes `k=` or `keep=`, not both" in render(HEAD + body % ", k=2, keep=0.5")
    assert "argument `keep` of `top` must be in (0, 1], got 0" in render(HEAD + body % ", keep=0")
    assert "must be in (0, 1], got 1.5" in render(HEAD + body % ", keep=1.5")
    # groups= keeps k per subtree (DVTS): a share has no per-subtree count.
    assert "`top` with `groups=` needs `k=`" in render(HEAD + body % ", keep=0.5, groups=2")
    plan = plan_of(body % ", keep=0.25")
    node = next(n for n in plan.region.nodes.values() if n.op == "top")
    assert node.facts["count"] == 2 and node.attrs["keep"] == 0.25


def test_keep_filters_then_votes():
    engine = ScriptedEngine({"q": ["1", "1", "2", "1", "1", "2", "1", "1"]},
                            logprob=lambda text: -0.05 if text == "2" else -1.0)
    body = "strategy s(question) {\n c = generate(policy, solve, n=8)\n return vote(extract(top(c, by=confidence(c), keep=%s), number))\n}\n"
    assert run(body % "0.25", [{"question": "q"}], engine).outputs == ["2"]
    assert run(body % "1", [{"question": "q"}], engine).outputs == ["1"]


# ------------------------------------------------------------------ repeated sampling

def test_repeated_sampling_reports_coverage_by_the_unbiased_estimator():
    from pathlib import Path

    from ttsc.runtime.eval import evaluate
    from ttsc.runtime.metrics import pass_at_k

    path = Path(__file__).resolve().parent.parent / "examples/repeated_sampling.tts"
    plan = compile_source(path.read_text(), str(path)).plan
    engine = ScriptedEngine({"2 + 2": ["Answer: 4", "Answer: 5", "Answer: 5", "Answer: 5"],
                             "3 + 3": ["Answer: 7"]})
    rows = [{"question": "What is 2 + 2?", "answer": "4"}, {"question": "What is 3 + 3?", "answer": "6"}]
    summary = evaluate(plan, {"policy": engine}, rows)
    assert list(summary.pass_at) == [1, 2, 4, 8, 16, 32]
    # 8 of the first item's 32 samples are right, none of the second's
    for k, v in summary.pass_at.items():
        assert v == pytest.approx((pass_at_k(32, 8, k) + 0.0) / 2)
    assert summary.pass_at[32] == 0.5
