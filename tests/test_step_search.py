"""Step-level search: a step cut by its stop string is continued after that
string, counts as a completed step (not a finished answer), an empty step ends
a candidate, and `top(..., distinct=true)` keeps identical beams once."""

from __future__ import annotations

from engine_contract import completions_of
from scripted_engine import ScriptedEngine
from test_executor import run
from ttsc.runtime.engines.base import Completion, Prompt, SampleRequest, SamplingParams
from ttsc.runtime.engines.hf import HFEngine
from ttsc.runtime.ops import Extend, Generate, OpContext, host_op, top
from ttsc.runtime.values import Candidate

CTX = OpContext(prompts={}, seed_for=lambda salt: 7 + salt)
P = Prompt.user("q")


def _extend(cands: list[Candidate], completions: list[list[Completion]], stop=("\n\n",)) -> tuple:
    attrs = {"n": 1, "stop": list(stop), "temperature": 0.7, "max_tokens": 16}
    reqs = Extend().requests(attrs, {"candidates": cands}, CTX)
    return reqs, Extend().collect(attrs, {"candidates": cands}, reqs, completions)


def test_extend_continues_after_the_stop_string_and_keeps_it_between_steps():
    first = Candidate("Step 1: 2 + 3 = 5", P, finished=False, tokens=5, logprobs=(-0.1,) * 5, stop="\n\n")
    reqs, (out,) = _extend([first], [[Completion("Answer: 5", [1, 2, 3], [-0.2] * 3, "eos")]])
    assert reqs[0].prompt.assistant_prefix == "Step 1: 2 + 3 = 5\n\n"  # the model sees its separator
    assert out.text == "Step 1: 2 + 3 = 5\n\nAnswer: 5"
    assert out.finished and out.tokens == 8 and out.logprobs == (-0.1,) * 5 + (-0.2,) * 3


def test_a_step_cut_by_its_stop_string_is_not_done_but_one_ended_by_eos_is():
    attrs = {"n": 2, "stop": ["\n\n"], "temperature": 0.7, "max_tokens": 16}
    comps = [Completion("Step 1", [1, 2], [-0.1, -0.1], "stop", "\n\n"),
             Completion("Answer: 5", [3], [-0.1], "eos")]
    cands = Generate().collect(attrs, {}, [SampleRequest(P)], [comps])
    assert [(c.finished, c.stop) for c in cands] == [(False, "\n\n"), (True, None)]
    assert host_op("all_done", {}, {"candidates": cands}) is False
    _, nxt = _extend(cands, [[Completion("Answer: 5", [4], [-0.1], "eos")]])
    assert host_op("all_done", {}, {"candidates": nxt}) is True
    assert nxt[0].text == "Step 1\n\nAnswer: 5"


def test_the_ops_only_stop_string_stands_in_when_the_engine_does_not_say():
    attrs = {"n": 1, "stop": ["\n"]}
    (c,) = Generate().collect(attrs, {}, [SampleRequest(P)], [[Completion("a", [1], [-0.1], "stop")]])
    assert c.stop == "\n"
    attrs = {"n": 1, "stop": ["\n", "."]}  # which one cut it is unknown: nothing is invented
    (c,) = Generate().collect(attrs, {}, [SampleRequest(P)], [[Completion("a", [1], [-0.1], "stop")]])
    assert c.stop is None


def test_an_empty_step_ends_the_candidate_unchanged():
    first = Candidate("Step 1", P, finished=False, tokens=2, logprobs=(-0.1, -0.1), stop="\n\n")
    _, (out,) = _extend([first], [[Completion("", [5], [-0.3], "stop", "\n\n")]])
    assert out.finished and out.text == "Step 1" and out.tokens == 3


def test_top_distinct_keeps_identical_beams_once():
    a, b = Candidate("x", P, False, stop="\n"), Candidate("y", P, False, stop="\n")
    cands = [a, Candidate("x", P, False, stop="\n"), b, Candidate("x", P, False, stop="\n")]
    assert top(cands, [0.9, 0.9, 0.5, 0.8], 2) == [a, cands[1]]  # duplicates kept: votes count them
    assert top(cands, [0.9, 0.9, 0.5, 0.8], 2, distinct=True) == [a, b]
    assert top(cands, [0.9, 0.9, 0.5, 0.8], 3, distinct=True) == [a, b]  # only two distinct


def test_beam_search_reaches_the_end_of_sequence_with_steps_separated():
    # The model writes one step per call, then the answer; with the separator
    # lost it would answer "\n" again and again (empty steps) and never end.
    class Steps(ScriptedEngine):
        def sample(self, requests):
            outs = super().sample(requests)
            for r, o in zip(requests, outs):
                done = r.prompt.assistant_prefix.count("\n")
                for c in o.completions:
                    c.text, c.finish_reason, c.stop = ((f"step {done + 1}", "stop", "\n") if done < 2
                                                       else ("Answer: 3", "eos", None))
            return outs

    body = ("strategy s(question) {\n b = generate(policy, solve, n=4, stop=\"\\n\")\n"
            " repeat 6 until all_done(b) {\n  b = top(b, by=verify(judge, b, check), k=2, distinct=true)\n"
            "  b = extend(policy, b, n=3, stop=\"\\n\")\n }\n return best(b, by=verify(judge, b, check))\n}\n")
    engine = Steps({"solve": ["x"]})
    result = run(body, [{"question": "solve it"}], engine)
    assert result.outputs == ["step 1\nstep 2\nAnswer: 3"]
    # distinct beams: each round extends one beam (all samples agree), not two copies of it
    assert [len(r.prompt.assistant_prefix) > 0 for r in engine.requests].count(True) == 2


def _stop_after_first_tokens(engine) -> None:
    """A stop string the model is sure to write: the start of its own greedy text."""
    params = SamplingParams(temperature=0.0, max_tokens=12, seed=3)
    [[free]] = completions_of(engine.sample([SampleRequest(P, params)]))
    stop = free.text[3:6]
    assert stop and stop not in free.text[:3]
    [[cut]] = completions_of(engine.sample([SampleRequest(P, SamplingParams(
        temperature=0.0, max_tokens=12, seed=3, stop=("zzzzzz", stop)))]))
    assert (cut.finish_reason, cut.text, cut.stop) == ("stop", free.text[:3], stop)


def test_the_paged_engine_says_which_stop_string_cut_a_completion(tiny_paged):
    _stop_after_first_tokens(tiny_paged)


def test_the_hf_engine_says_which_stop_string_cut_a_completion(tiny_model):
    _stop_after_first_tokens(HFEngine(tiny_model))


def test_an_openai_server_that_names_the_matched_stop_string_is_believed():
    from ttsc.runtime.engines.openai import OpenAIEngine

    engine = object.__new__(OpenAIEngine)  # _completion reads only the reply
    params = SamplingParams(stop=("\n\n", "."))
    said = engine._completion({"text": "Step 1", "finish_reason": "stop", "stop_reason": "\n\n"}, params)
    assert (said.finish_reason, said.stop) == ("stop", "\n\n")
    silent = engine._completion({"text": "Step 1", "finish_reason": "stop"}, params)
    assert (silent.finish_reason, silent.stop) == ("stop", None)  # the op falls back, or does not guess
