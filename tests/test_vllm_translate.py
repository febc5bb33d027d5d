"""Translation between our requests and vLLM's (runtime/engines/vllm_translate.py),
on objects shaped like vLLM's outputs: runs on every machine, vLLM or not."""

from __future__ import annotations

import pytest

from ttsc.runtime.engines import prompting
from ttsc.runtime.engines.base import SamplingParams, Usage
from ttsc.runtime.engines.vllm_translate import (
    NO_TOP_K,
    VllmOutputError,
    engine_arguments,
    next_token_request,
    prompt_logprob_request,
    read_completion,
    read_next_token,
    read_prompt_logprobs,
    read_samples,
    sample_requests,
    token_logprobs,
)
from vllm_shapes import CompletionOutput, Logprob, RequestOutput


@pytest.fixture(scope="module")
def tok(tiny_model):
    return tiny_model.tokenizer


def decode_with(tok, context):
    return lambda ids: prompting.decode_completion(tok, context, ids)


def completion(ids, finish="length", stop_reason=None, text="<vllm text>", lps=None):
    lps = lps if lps is not None else [-(i + 1) / 10 for i in range(len(ids))]
    return CompletionOutput(0, text, list(ids), sum(lps), [{t: Logprob(lp)} for t, lp in zip(ids, lps)],
                            finish, stop_reason)


def request_output(prompt_ids, outs, cached=0, prompt_logprobs=None):
    return RequestOutput("0", None, list(prompt_ids), prompt_logprobs, outs, True, cached)


# ------------------------------------------------------------------ requests


def test_one_request_per_sample_with_seed_plus_index():
    params = SamplingParams(n=3, temperature=0.8, top_p=0.9, top_k=0, max_tokens=50,
                            stop=("\n\n", "Answer"), seed=7, ignore_eos=True)
    rows = sample_requests([1, 2, 3], params, base_seed=7, max_tokens=20)
    assert [r.settings["seed"] for r in rows] == [7, 8, 9]
    for r in rows:
        assert r.prompt == {"prompt_token_ids": [1, 2, 3]}
        s = r.settings
        assert s["n"] == 1 and s["max_tokens"] == 20 and s["logprobs"] == 0
        assert s["temperature"] == 0.8 and s["top_p"] == 0.9 and s["top_k"] == NO_TOP_K
        assert s["stop"] == ["\n\n", "Answer"] and s["ignore_eos"] is True
    [one] = sample_requests([1], SamplingParams(top_k=5, temperature=0.0), base_seed=3, max_tokens=4)
    assert one.settings["top_k"] == 5 and one.settings["stop"] is None
    assert one.settings["temperature"] == 0.0 and one.settings["ignore_eos"] is False
    assert sample_requests([1], SamplingParams(n=0), base_seed=0, max_tokens=4) == []


def test_scoring_requests_read_the_model_distribution():
    nxt = next_token_request([5, 6], top=20)
    assert nxt.settings["logprobs"] == 20 and nxt.settings["max_tokens"] == 1
    # Temperature 1, no cut: vLLM's logprobs are the model's own in every logprobs_mode.
    assert nxt.settings["temperature"] == 1.0 and nxt.settings["top_k"] == NO_TOP_K
    assert nxt.settings["top_p"] == 1.0
    pl = prompt_logprob_request([5, 6, 7])
    assert pl.settings["prompt_logprobs"] == 0 and pl.prompt == {"prompt_token_ids": [5, 6, 7]}


# ------------------------------------------------------------------ completions


def test_length_keeps_every_token_and_decodes_in_context(tok):
    context = tok("Say", add_special_tokens=False)["input_ids"]
    ids = tok(" hello there", add_special_tokens=False)["input_ids"]
    c = read_completion(completion(ids), decode=decode_with(tok, context),
                        eos_ids=frozenset({tok.eos_token_id}), stop=())
    assert c.finish_reason == "length" and c.token_ids == ids
    assert c.text == " hello there"  # ours, not vLLM's detokenizer text
    assert c.logprobs == pytest.approx([-(i + 1) / 10 for i in range(len(ids))])


def test_eos_and_stop_tokens_end_as_eos_without_the_token(tok):
    ids = tok(" fox", add_special_tokens=False)["input_ids"]
    eos = tok.eos_token_id
    c = read_completion(completion(ids + [eos], finish="stop"), decode=decode_with(tok, []),
                        eos_ids=frozenset({eos}), stop=())
    assert (c.finish_reason, c.token_ids, c.text, len(c.logprobs)) == ("eos", ids, " fox", len(ids))
    # A stop token id of the generation config: stop_reason names it.
    c = read_completion(completion(ids + [7], finish="stop", stop_reason=7),
                        decode=decode_with(tok, []), eos_ids=frozenset({eos}), stop=())
    assert c.finish_reason == "eos" and c.token_ids == ids
    # A release that leaves the EOS token out of token_ids: nothing to drop.
    c = read_completion(completion(ids, finish="stop"), decode=decode_with(tok, []),
                        eos_ids=frozenset({eos}), stop=())
    assert c.finish_reason == "eos" and c.token_ids == ids


def test_stop_string_cuts_text_keeps_tokens(tok):
    ids = tok("The quick brown fox jumps", add_special_tokens=False)["input_ids"]
    c = read_completion(completion(ids, finish="stop", stop_reason=" fox"),
                        decode=decode_with(tok, []), eos_ids=frozenset(), stop=(" jumps", " fox"))
    assert c.finish_reason == "stop"
    assert c.text == "The quick brown"  # cut before the earliest stop string
    assert c.stop == " fox"  # which one: `extend` puts it back
    assert c.token_ids == ids and len(c.logprobs) == len(ids)


def test_unreadable_outputs_are_errors(tok):
    with pytest.raises(VllmOutputError, match="finish_reason='abort'"):
        read_completion(completion([5], finish="abort"), decode=decode_with(tok, []),
                        eos_ids=frozenset(), stop=())
    bare = CompletionOutput(0, "", [5, 6], None, None, "length")
    with pytest.raises(VllmOutputError, match="no logprobs"):
        read_completion(bare, decode=decode_with(tok, []), eos_ids=frozenset(), stop=())
    with pytest.raises(VllmOutputError, match="lack the token 6"):
        token_logprobs([{5: Logprob(-1.0)}, {9: Logprob(-1.0)}], [5, 6])


def test_samples_usage_comes_from_each_output(tok):
    prompt = list(range(20, 32))
    outs = [request_output(prompt, [completion([40, 41, 42])], cached=0),
            request_output(prompt, [completion([43, tok.eos_token_id], finish="stop")], cached=8)]
    completions, usage = read_samples(outs, decode=decode_with(tok, prompt[-4:]),
                                      eos_ids=frozenset({tok.eos_token_id}), stop=())
    assert [c.token_ids for c in completions] == [[40, 41, 42], [43]]
    assert usage == Usage(calls=1, prompt_tokens=24, prompt_tokens_computed=16,
                          prompt_tokens_reused=8, generated_tokens=4)
    assert usage.prompt_tokens_computed + usage.prompt_tokens_reused == usage.prompt_tokens
    two = request_output(prompt, [completion([1]), completion([2])])
    with pytest.raises(VllmOutputError, match="one completion per vLLM request"):
        read_samples([two], decode=decode_with(tok, []), eos_ids=frozenset(), stop=())


# ------------------------------------------------------------------ scores


def test_next_token_scores_from_top_logprobs():
    top = {40: Logprob(-0.1), 41: Logprob(-2.5), 99: Logprob(-0.7)}
    out = request_output([1, 2], [CompletionOutput(0, "", [40], -0.1, [top], "length")])
    assert read_next_token(out, [41, 40, 12]) == [-2.5, -0.1, None]  # 12: not among them
    empty = request_output([1, 2], [CompletionOutput(0, "", [40], None, None, "length")])
    with pytest.raises(VllmOutputError, match="no next-token logprobs"):
        read_next_token(empty, [40])


def test_prompt_logprobs_sum_from_the_continuation():
    ids = [3, 4, 5, 6]
    lps = [None, {4: Logprob(-1.0), 9: Logprob(-0.1)}, {5: Logprob(-2.0)}, {6: Logprob(-0.5)}]
    out = request_output(ids, [completion([7])], prompt_logprobs=lps)
    assert read_prompt_logprobs(out, start=2) == pytest.approx(-2.5)
    assert read_prompt_logprobs(out, start=0) == pytest.approx(-3.5)  # the first token has none
    with pytest.raises(VllmOutputError, match="no prompt logprobs"):
        read_prompt_logprobs(request_output(ids, [completion([7])]), start=1)
    lps[2] = {9: Logprob(-1.0)}
    with pytest.raises(VllmOutputError, match="position 2 lack the token 5"):
        read_prompt_logprobs(out, start=1)


# ------------------------------------------------------------------ engine arguments


def test_engine_arguments_turn_prefix_caching_on_and_ask_processed_logprobs():
    fields = {"model", "seed", "dtype", "enable_prefix_caching", "logprobs_mode",
              "gpu_memory_utilization", "max_model_len"}
    args, notes = engine_arguments("org/m", fields, seed=3, dtype="auto",
                                   options={"gpu_memory_utilization": 0.5})
    assert args == {"model": "org/m", "enable_prefix_caching": True, "seed": 3, "dtype": "auto",
                    "logprobs_mode": "processed_logprobs", "gpu_memory_utilization": 0.5}
    assert notes == []
    old, notes = engine_arguments("org/m", fields - {"logprobs_mode"}, seed=0, dtype="auto",
                                  options={})
    assert "logprobs_mode" not in old and "before temperature" in notes[0]
    with pytest.raises(KeyError, match="max_len"):
        engine_arguments("org/m", fields, seed=0, dtype="auto", options={"max_len": 10})
