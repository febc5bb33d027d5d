"""The ops of the search strategies: `resample` (particle filtering),
`top(..., groups=G)` (DVTS), `generate(..., first=k)` (first-finish search)
and `extend(..., force=...)` (budget forcing)."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from scripted_engine import ScriptedEngine
from test_compile_errors import render
from test_executor import HEAD, plan_of, run
from ttsc.compiler import cost
from ttsc.compiler.ops import T
from ttsc.compiler.pipeline import compile_source
from ttsc.runtime.engines.base import (Completion, Prompt, SampleOutput, SampleRequest, SamplingParams,
                                       Usage, first_finished)
from ttsc.runtime.engines.hf import HFEngine
from ttsc.runtime.ops import Extend, Generate, OpContext, host_op, resample, resample_weights, top_per_group
from ttsc.runtime.values import Candidate

P = Prompt.user("q")
CTX = OpContext(prompts={}, seed_for=lambda salt: 7 + salt)


def cand(text: str, root: int = 0, finished: bool = False) -> Candidate:
    return Candidate(text, P, finished, 1, (-0.1,), root=root)


# ------------------------------------------------------------------ resample

def test_resample_weights_are_the_odds_or_the_scores_normalized():
    odds = resample_weights([0.5, 0.8], "odds")
    assert odds == pytest.approx([1 / 5, 4 / 5])  # odds 1 and 4
    assert resample_weights([0.5, 0.8], "linear") == pytest.approx([0.5 / 1.3, 0.8 / 1.3])
    assert sum(resample_weights([0.0, 0.0, 0.0], "linear")) == pytest.approx(1.0)  # clipped, not 0/0
    with pytest.raises(ValueError):
        resample_weights([0.5], "softmax")


def test_resample_draws_k_with_replacement_by_weight_and_repeats_for_a_seed():
    cands = [cand("weak"), cand("strong")]
    drawn = resample(cands, [0.1, 0.9], k=400, seed=3)
    counts = Counter(c.text for c in drawn)
    assert len(drawn) == 400 and set(counts) == {"weak", "strong"}
    # odds 1/9 against 9: about 1.2 % weak
    assert counts["weak"] < 20 < counts["strong"]
    assert [c.text for c in resample(cands, [0.1, 0.9], k=400, seed=3)] == [c.text for c in drawn]
    assert [c.text for c in resample(cands, [0.1, 0.9], k=400, seed=4)] != [c.text for c in drawn]
    assert resample([], [], k=4) == []


def test_resample_is_typed_and_its_bad_arguments_are_errors_at_the_argument():
    plan = plan_of("strategy s(question) {\n p = generate(policy, solve, n=4, stop=\"\\n\")\n"
                   " p = resample(p, by=verify(judge, p, check), k=4, weigh=linear)\n"
                   " return vote(extract(p, number))\n}\n")
    node = next(n for n in plan.region.nodes.values() if n.op == "resample")
    assert node.type == T.CANDIDATES.value and node.attrs["k"] == 4 and node.attrs["weigh"] == "linear"
    assert node.facts.get("seed_key")  # seeded like a sampling call
    src = HEAD + "strategy s(question) {\n c = generate(policy, solve)\n return best(resample(c, by=verify(judge, c), k=2, weigh=odd), by=verify(judge, c))\n}\n"
    assert "argument `weigh` of `resample` must be one of odds, linear" in render(src)
    src = HEAD + "strategy s(question) {\n c = generate(policy, solve)\n return best(c, by=resample(c, by=verify(judge, c), k=2))\n}\n"
    assert "argument `by` of `best` must be scores, got candidates" in render(src)
    src = HEAD + "strategy s(question) {\n c = generate(policy, solve)\n return best(c, by=verify(judge, resample(c, k=2)))\n}\n"
    assert "`resample` needs argument `by`" in render(src)


def test_particle_filter_resamples_every_round_and_the_seed_fixes_the_draws():
    # Two kinds of step: the judge likes "good" (0.9) and not "bad" (0.1);
    # after a resample round the good particles crowd out the bad ones.
    engine = ScriptedEngine({"q": ["good 4", "bad 5"]}, yes={"good": 0.9, "bad": 0.1}, finish="stop")
    body = ("strategy s(question) {\n p = generate(policy, solve, n=8, stop=\"\\n\")\n"
            " repeat 2 {\n  p = resample(p, by=verify(judge, p, check), k=8)\n"
            "  p = extend(policy, p, stop=\"\\n\")\n }\n"
            " return vote(extract(p, number))\n}\n")
    a = run(body, [{"question": "q"}], engine, seed=1)
    b = run(body, [{"question": "q"}], engine, seed=1)
    assert a.outputs == b.outputs
    ops = [op for t in a.trace for op in t.ops]
    assert ops.count("resample") == 2


def test_resample_per_input_draws_do_not_depend_on_the_batch():
    engine = ScriptedEngine({"q": ["a 1", "b 2", "c 3", "d 4"]}, yes={"a": 0.5, "b": 0.5, "c": 0.5, "d": 0.5})
    body = ("strategy s(question) {\n p = generate(policy, solve, n=4)\n"
            " return best(resample(p, by=verify(judge, p, check), k=1), by=verify(judge, p, check))\n}\n")
    alone = run(body, [{"question": "q one"}], engine, seed=2)
    together = run(body, [{"question": "q two"}, {"question": "q one"}], engine, seed=2)
    assert alone.outputs[0] == together.outputs[1]


# ------------------------------------------------------------------ DVTS

def test_top_with_groups_keeps_the_best_of_each_subtree():
    cands = [cand("a0", 0), cand("b0", 0), cand("a1", 1), cand("b1", 1), cand("a2", 2)]
    scores = [0.9, 0.8, 0.1, 0.2, 0.3]
    kept = top_per_group(cands, scores, k=1, groups=3)
    assert [c.text for c in kept] == ["a0", "b1", "a2"]  # a plain top 3 would take a0, b0, a2
    assert [c.text for c in host_op("top", {"k": 1, "groups": 2}, {"candidates": cands, "by": scores})] \
        == ["a0", "b1"]  # roots 0 and 2 share subtree 0 of 2


def test_generate_numbers_its_samples_and_extend_keeps_their_roots():
    attrs = {"n": 3, "temperature": 0.7, "max_tokens": 8, "stop": ["\n"]}
    comps = [Completion(t, [1], [-0.1], "stop", "\n") for t in ("x", "y", "z")]
    cands = Generate().collect(attrs, {}, [SampleRequest(P)], [comps])
    assert [c.root for c in cands] == [0, 1, 2]
    ext = {"n": 2, "temperature": 0.7, "max_tokens": 8, "stop": ["\n"]}
    reqs = Extend().requests(ext, {"candidates": cands}, CTX)
    more = [[Completion("s", [1], [-0.1], "stop", "\n")] * 2 for _ in reqs]
    out = Extend().collect(ext, {"candidates": cands}, reqs, more)
    assert [c.root for c in out] == [0, 0, 1, 1, 2, 2]


def test_dvts_counts_and_compiles_with_stable_beams():
    plan = plan_of("strategy s(question) {\n b = generate(policy, solve, n=4, stop=\"\\n\")\n"
                   " repeat 3 until all_done(b) {\n  b = extend(policy, b, n=4, stop=\"\\n\")\n"
                   "  b = top(b, by=verify(judge, b, check), k=1, groups=4)\n }\n"
                   " return vote(extract(b, number))\n}\n")
    loop = next(s for s in plan.region.stages if s.kind == "loop")
    top_node = next(n for n in loop.body.nodes.values() if n.op == "top")
    assert top_node.attrs["groups"] == 4
    src = HEAD + "strategy s(question) {\n c = generate(policy, solve, n=4)\n return best(top(c, by=verify(judge, c), k=1, groups=0), by=verify(judge, c))\n}\n"
    assert "argument `groups` of `top` must be at least 1, got 0" in render(src)


# ------------------------------------------------------------------ first-finish search

def test_first_finished_keeps_the_fewest_tokens_and_puts_cut_ones_last():
    comps = [Completion("long", [1] * 9, [0.0] * 9, "eos"), Completion("cut", [1] * 2, [0.0] * 2, "length"),
             Completion("short", [1] * 3, [0.0] * 3, "stop", "\n"), Completion("mid", [1] * 5, [0.0] * 5, "eos"),
             Completion("tie", [1] * 3, [0.0] * 3, "eos")]
    assert [c.text for c in first_finished(comps, 3)] == ["short", "tie", "mid"]
    assert [c.text for c in first_finished(comps, 5)] == [c.text for c in comps]
    assert first_finished(comps, None) == comps


def test_first_must_not_exceed_n():
    src = HEAD + "strategy s(question) {\n c = generate(policy, solve, n=2, first=3)\n return vote(extract(c, number))\n}\n"
    assert "`first=3` keeps more samples than the n=2 that `generate` draws" in render(src)
    assert "first must be at most n" in SamplingParams(n=2, first=3).problems()[0]


def _ffs_requests(first):
    params = SamplingParams(n=8, temperature=1.0, max_tokens=32, stop=("e",), seed=5, first=first)
    return [SampleRequest(Prompt.user("What is 1 + 1?"), params),
            SampleRequest(Prompt.user("What is 2 + 3?"), params.replace(seed=11))]


def test_paged_engine_stops_the_other_samples_once_k_finished(tiny_paged):
    """Same seeds with and without first=2: the engine returns the 2 samples
    that finished first (the 2 shortest of the full run, token for token) and
    generates fewer tokens, the stopped samples counted in the usage."""
    engine = tiny_paged
    full = engine.sample(_ffs_requests(None))
    first = engine.sample(_ffs_requests(2))
    for a, b in zip(full, first):
        assert len(a.completions) == 8 and len(b.completions) == 2
        assert [c.token_ids for c in b.completions] == [c.token_ids for c in first_finished(a.completions, 2)]
        assert b.usage.generated_tokens < a.usage.generated_tokens
        assert b.usage.samples_stopped > 0 and a.usage.samples_stopped == 0
        assert 0 < b.usage.tokens_saved <= b.usage.samples_stopped * 32
    assert engine.stats()["kv_live_bytes"] == 0  # the stopped samples' blocks went back to the pool


def test_the_hf_engine_falls_back_to_the_k_shortest_and_counts_all_it_generated(tiny_model):
    plan_src = ("strategy s(question) {\n c = generate(policy, solve, n=6, first=2, temperature=1.0, "
                "max_tokens=12, stop=\"e\")\n return vote(extract(c, regex(\".\")))\n}\n")
    engine = HFEngine(tiny_model)
    result = run(plan_src, [{"question": "What is 1 + 1?"}], engine)
    (r,) = result.results
    assert result.total_usage.samples_stopped == 0  # it cannot stop samples: it computed all six
    assert len(r.samples) == 2


def test_first_finish_in_a_strategy_on_the_paged_engine_saves_tokens(tiny_paged):
    engine = tiny_paged
    body = ("strategy s(question) {\n c = generate(policy, solve, n=8, {first}temperature=1.0, "
            "max_tokens=24, stop=\"e\")\n return vote(extract(c, regex(\".\")))\n}\n")
    inputs = [{"question": "What is 1 + 1?"}, {"question": "What is 7 + 5?"}]
    every = run(body.replace("{first}", ""), inputs, engine)
    kept = run(body.replace("{first}", "first=2, "), inputs, engine)
    assert [len(r.samples) for r in kept.results] == [2, 2]
    assert kept.total_usage.generated_tokens < every.total_usage.generated_tokens
    assert "samples stopped early" in kept.summary()


def test_the_call_cache_passes_first_finish_requests_through(tiny_paged, tmp_path):
    from ttsc.runtime.cache import CachedEngine, CallCache, call_key

    engine = CachedEngine(tiny_paged, CallCache(tmp_path / "c.db"), "tiny-random")
    plain = SampleRequest(P, SamplingParams(n=2, max_tokens=4, seed=1))
    outs = engine.sample([*_ffs_requests(2), plain])
    assert [len(o.completions) for o in outs] == [2, 2, 2]
    assert outs[2].usage.cache_misses == 2 and outs[0].usage.cache_misses == 0
    # keys of requests without `first` are what they were before it existed
    import dataclasses, hashlib, json
    from ttsc.runtime.cache import KEY_VERSION
    fields = dataclasses.asdict(plain)
    del fields["params"]["first"]
    text = json.dumps({"v": KEY_VERSION, "model": "m", "kind": "sample", "request": fields},
                      sort_keys=True, separators=(",", ":"))
    assert call_key("m", "sample", plain) == hashlib.sha256(text.encode()).hexdigest()


def test_explain_predicts_fewer_generated_tokens_with_first():
    src = HEAD.replace("tiny-random", "smollm2-135m") + (
        "strategy s(question) {\n c = generate(policy, solve, n=8, {first}max_tokens=40)\n"
        " return vote(extract(c, number))\n}\n")
    every = compile_source(src.replace("{first}", ""), "t.tts").plan.facts
    kept = compile_source(src.replace("{first}", "first=2, "), "t.tts").plan.facts
    assert kept["predicted_generated_tokens_per_input"] < every["predicted_generated_tokens_per_input"]


def test_first_finish_expectation_matches_order_statistics():
    # k = n: no stopping, n times the mean of one sample cut at the cap
    one = 96 * (1 - math.exp(-40 / 96))
    assert cost.first_finish_tokens(8, 8, one, 40).generated == pytest.approx(8 * one, rel=1e-3)
    # uncut exponentials: the first of n finishes after mean / n on average
    first = cost.first_finish_tokens(4, 1, 10 * (1 - math.exp(-1000 / 10)), 1000)
    assert first.kept_length == pytest.approx(10 / 4, rel=0.02)
    assert first.generated == pytest.approx(4 * 10 / 4, rel=0.02)
    # every sample runs to its cap: nothing is saved
    assert cost.first_finish_tokens(8, 2, 40, 40).generated == 8 * 40


# ------------------------------------------------------------------ budget forcing

def test_force_continues_every_candidate_after_the_forcing_text():
    done = Candidate("Answer: 5", P, True, 3, (-0.1,) * 3)
    step = Candidate("2 + 3", P, False, 2, (-0.1,) * 2, stop="\n")
    attrs = {"n": 1, "temperature": 0.0, "max_tokens": 8, "force": "\nWait,"}
    reqs = Extend().requests(attrs, {"candidates": [done, step]}, CTX)
    assert [r.prompt.assistant_prefix for r in reqs] == ["Answer: 5\nWait,", "2 + 3\n\nWait,"]
    comps = [[Completion(" no, Answer: 6", [1, 2], [-0.2] * 2, "eos")], [Completion(" = 5", [3], [-0.2], "eos")]]
    out = Extend().collect(attrs, {"candidates": [done, step]}, reqs, comps)
    assert [c.text for c in out] == ["Answer: 5\nWait, no, Answer: 6", "2 + 3\n\nWait, = 5"]
    assert out[0].finished and out[0].tokens == 5
    # without force a finished candidate passes through
    plain = {k: v for k, v in attrs.items() if k != "force"}
    assert len(Extend().requests(plain, {"candidates": [done, step]}, CTX)) == 1


def test_budget_forcing_extracts_the_last_answer_and_rejects_a_non_string():
    engine = ScriptedEngine({"Wait,": ["actually Answer: 7"], "q": ["Answer: 5"]})
    body = ("strategy s(question) {\n a = generate(policy, solve, temperature=0)\n"
            " repeat 2 {\n  a = extend(policy, a, force=\" Wait,\", temperature=0)\n }\n"
            " return vote(extract(a, number))\n}\n")
    assert run(body, [{"question": "q"}], engine).outputs == ["7"]
    src = HEAD + "strategy s(question) {\n c = generate(policy, solve)\n return vote(extract(extend(policy, c, force=1), number))\n}\n"
    assert "argument `force` of `extend` must be a string" in render(src)
    src = HEAD + "strategy s(question) {\n c = generate(policy, solve)\n return vote(extract(extend(policy, c, force=\"\"), number))\n}\n"
    assert "argument `force` of `extend` must not be empty" in render(src)


def test_the_examples_compile():
    from pathlib import Path

    for name in ("particle_filter", "dvts", "first_finish", "budget_forcing"):
        path = Path(__file__).parent.parent / "examples" / f"{name}.tts"
        assert compile_source(path.read_text(), str(path)).plan is not None


def test_two_first_finish_calls_are_not_merged_into_one():
    plan = plan_of("strategy s(question) {\n a = generate(policy, solve, n=4, first=2)\n"
                   " b = generate(policy, solve, n=4, first=2)\n return vote(extract(a + b, number))\n}\n")
    gens = [n for n in plan.region.nodes.values() if n.op == "generate"]
    assert [(g.attrs["n"], g.attrs["first"]) for g in gens] == [(4, 2), (4, 2)]
