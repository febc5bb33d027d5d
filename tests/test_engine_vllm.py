"""The vLLM engine: clear errors where vLLM cannot run, its own bookkeeping over
an LLM stand-in (tests/vllm_shapes.py), and the engine contract against real
vLLM wherever vLLM imports and a CUDA GPU is visible (skipped elsewhere)."""

from __future__ import annotations

import importlib.util
import threading

import pytest
import torch

import engine_contract as contract
from engine_contract import completions_of, logprobs_of, totals_of
from ttsc.common.errors import UserError
from ttsc.runtime.engines.base import (ContinuationRequest, NextTokenRequest, Prompt, SampleRequest,
                                       SamplingParams)
from ttsc.runtime.engines.registry import engine_kinds, make_engine
from ttsc.runtime.engines.vllm import VllmEngine, vllm_model_name
from ttsc.runtime.models import tiny_random_model
from vllm_shapes import ScriptedLLM

VLLM_HERE = importlib.util.find_spec("vllm") is not None
GPU_HERE = torch.cuda.is_available()
NO_VLLM = ("vLLM is not installed or no CUDA GPU is visible: the contract runs against vLLM only "
           "where it imports (pip install 'ttsc[vllm]' on a Linux machine with a CUDA GPU)")


def scripted(tiny_model, **kw) -> tuple[VllmEngine, ScriptedLLM]:
    llm = ScriptedLLM(tiny_model.tokenizer, **kw)
    return VllmEngine(llm, "vllm:test/scripted", make_params=dict), llm


# ------------------------------------------------------------------ where vLLM cannot run


@pytest.mark.skipif(VLLM_HERE and GPU_HERE, reason="vLLM runs here")
def test_missing_vllm_or_cuda_is_a_user_error():
    with pytest.raises(UserError, match="needs the `vllm` package|needs a CUDA GPU") as err:
        make_engine("vllm:org/name")
    assert "ttsc[vllm]" in (err.value.hint or "") or "torch engines" in (err.value.hint or "")


def test_specs_the_vllm_engine_serves(tmp_path):
    assert engine_kinds("vllm:org/name") == ["vllm"]
    assert engine_kinds("hf:org/name")[0] == "paged"  # auto stays the torch engine
    assert "vllm" in engine_kinds("hf:org/name")
    assert vllm_model_name("vllm:Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert vllm_model_name("hf:Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert vllm_model_name(str(tmp_path)) == str(tmp_path)
    with pytest.raises(UserError, match="cannot serve `tiny-random`"):
        make_engine("tiny-random", engine="vllm")
    with pytest.raises(UserError, match="runs on CUDA GPUs, not `cpu`"):
        make_engine("vllm:org/name", device="cpu")


# ------------------------------------------------------------------ bookkeeping


def test_each_sample_is_its_own_request_with_seed_plus_index(tiny_model):
    engine, llm = scripted(tiny_model)
    prompt = Prompt.user("What is 2+3?")
    params = SamplingParams(n=3, temperature=1.0, max_tokens=6, seed=11)
    [out] = engine.sample([SampleRequest(prompt, params)])
    assert [s["seed"] for s in llm.calls[-1]] == [11, 12, 13]
    for i, c in enumerate(out.completions):
        [[alone]] = completions_of(engine.sample([SampleRequest(prompt, params.replace(n=1, seed=11 + i))]))
        assert (alone.token_ids, alone.text) == (c.token_ids, c.text)
    assert out.usage.calls == 1
    assert out.usage.generated_tokens == sum(len(c.token_ids) for c in out.completions)
    n = len(engine.tokenize(prompt))
    assert out.usage.prompt_tokens == 3 * n
    assert out.usage.prompt_tokens_computed + out.usage.prompt_tokens_reused == 3 * n
    assert out.usage.prompt_tokens_reused > 0  # samples 2 and 3 reuse the first one's prompt


def test_prompts_go_as_our_token_ids_cut_to_the_context(tiny_model):
    engine, llm = scripted(tiny_model, max_model_len=40)
    prompt = Prompt(raw="The quick brown fox")
    ids = engine.tokenize(prompt)
    [[c]] = completions_of(engine.sample([SampleRequest(prompt, contract.greedy(100, ignore_eos=True))]))
    assert llm.calls[-1][0]["max_tokens"] == 40 - len(ids)
    assert len(c.token_ids) == 40 - len(ids) and c.finish_reason == "length"
    # Nothing asked, nothing sent: vLLM refuses max_tokens=0.
    calls = len(llm.calls)
    [[empty, again]] = completions_of(engine.sample([SampleRequest(prompt, SamplingParams(n=2, max_tokens=0))]))
    assert len(llm.calls) == calls and empty.token_ids == again.token_ids == []
    with pytest.raises(UserError, match="accepts at most 40"):
        engine.sample([SampleRequest(Prompt(raw="a" * 200))])


def test_eos_from_the_generation_config_ends_a_sample(tiny_model):
    engine, _ = scripted(tiny_model)
    assert {tiny_model.tokenizer.eos_token_id, 7} <= engine._eos_ids
    outs = completions_of(engine.sample([SampleRequest(Prompt.user("hi"), SamplingParams(
        n=12, temperature=1.0, max_tokens=20, seed=1))]))[0]
    ended = [c for c in outs if c.finish_reason == "eos"]
    assert ended and all(tiny_model.tokenizer.eos_token_id not in c.token_ids for c in ended)


def test_score_next_falls_back_to_prompt_logprobs_outside_the_top(tiny_model):
    engine, llm = scripted(tiny_model)
    engine.top_logprobs = 3  # the scripted top tokens are 40, 41, 42
    prompt = Prompt.user("Is it right?")
    text = engine.prompt_text(prompt)
    ids = engine.tokenize(prompt)
    inside = tiny_model.tokenizer.decode([41])
    choice_id = prompting_first(engine, prompt, text, ids, "Yes")
    assert choice_id not in (40, 41, 42)
    [out] = engine.score_next([NextTokenRequest(prompt, (inside, "Yes"))])
    assert out.logprobs[0] == pytest.approx(-0.3)  # from the top log-probabilities
    assert out.logprobs[1] == pytest.approx(-0.25)  # scored exactly by a second request
    first, second = llm.calls[-2:]
    assert first[0]["logprobs"] == 3 and second[0]["prompt_logprobs"] == 0
    assert out.usage.calls == 1 and out.usage.generated_tokens == 0
    assert out.usage.prompt_tokens == 2 * len(ids) + 1  # both requests' prompts
    assert out.usage.prompt_tokens_computed + out.usage.prompt_tokens_reused == out.usage.prompt_tokens


def prompting_first(engine, prompt, text, ids, choice):
    from ttsc.runtime.engines import prompting

    return prompting.first_token(engine.tokenizer, prompt, text, ids, choice)


def test_continuations_are_scored_with_prompt_logprobs(tiny_model):
    engine, llm = scripted(tiny_model)
    prompt = Prompt.user("Add.")
    full = engine.tokenize(prompt.continued(" 5"))
    outs = engine.score_continuations([ContinuationRequest(prompt, " 5"),
                                       ContinuationRequest(prompt, "")])
    n = len(full) - len(engine.tokenize(prompt))
    assert outs[0].logprob == pytest.approx(-0.25 * n)
    assert outs[1].logprob == 0.0 and outs[1].usage.prompt_tokens == 0  # nothing sent
    assert len(llm.calls[-1]) == 1 and llm.calls[-1][0]["prompt_logprobs"] == 0
    assert outs[0].usage.prompt_tokens == len(full) and outs[0].usage.calls == 1
    assert totals_of(engine.score_continuations([])) == []
    assert logprobs_of(engine.score_next([])) == []


def test_concurrent_callers_share_generate_calls(tiny_model):
    engine, llm = scripted(tiny_model)
    gate = threading.Barrier(6)
    results = {}

    def call(i):
        gate.wait()
        results[i] = completions_of(engine.sample([SampleRequest(Prompt.user(f"q{i}"), SamplingParams(
            n=2, temperature=1.0, max_tokens=4, seed=i))]))[0]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(engine._batcher.batches) == 12 and len(llm.calls) == len(engine._batcher.batches)
    for i in range(6):  # each caller got its own samples, whatever it was batched with
        alone = completions_of(engine.sample([SampleRequest(Prompt.user(f"q{i}"), SamplingParams(
            n=2, temperature=1.0, max_tokens=4, seed=i))]))[0]
        assert [c.token_ids for c in alone] == [c.token_ids for c in results[i]]


def test_a_failed_batch_fails_every_caller_in_it():
    from ttsc.runtime.engines.coalesce import Coalescer

    def run(items):
        if "bad" in items:
            raise ValueError("vLLM said no")
        return [i.upper() for i in items]

    batcher = Coalescer(run)
    assert batcher.submit([]) == [] and batcher.batches == []
    assert batcher.submit(["a", "b"]) == ["A", "B"]
    with pytest.raises(ValueError, match="vLLM said no"):
        batcher.submit(["c", "bad"])
    assert batcher.submit(["d"]) == ["D"]  # the next batch runs as usual
    short = Coalescer(lambda items: items[:1])
    with pytest.raises(RuntimeError, match="returned 1 results"):
        short.submit(["x", "y"])


# ------------------------------------------------------------------ the contract, on real vLLM


@pytest.fixture(scope="module")
def vllm_engine(tmp_path_factory):
    """vLLM over the tiny random model saved as a Hugging Face directory, in
    float32 so the contract's log-probability tolerances apply. One engine for
    all checks: a second vLLM instance would need a second share of the GPU."""
    directory = tmp_path_factory.mktemp("tiny-hf")
    # head_dim 64: attention backends do not all take the tiny model's 16.
    tiny = tiny_random_model(hidden_size=256, intermediate_size=512, num_attention_heads=4,
                             num_key_value_heads=2)
    tiny.model.save_pretrained(directory)
    tiny.tokenizer.save_pretrained(directory)
    engine = make_engine(str(directory), engine="vllm", dtype="float32",
                         gpu_memory_utilization=0.3, max_model_len=1024, enforce_eager=True)
    yield engine
    engine.close()


@pytest.mark.skipif(not (VLLM_HERE and GPU_HERE), reason=NO_VLLM)
@pytest.mark.parametrize("check", contract.ENGINE_CHECKS, ids=lambda c: c.__name__)
def test_contract_on_vllm(check, vllm_engine):
    check(lambda: vllm_engine)

