"""HFEngine on the tiny random model: the engine contract, plus its own details."""

from __future__ import annotations

import pytest
import torch

import engine_contract as contract
from engine_contract import completions_of, logprobs_of, totals_of
from ttsc.common.errors import UserError
from ttsc.runtime.engines.base import (
    ContinuationRequest,
    NextTokenRequest,
    Prompt,
    SampleRequest,
    SamplingParams,
)
from ttsc.runtime.engines.hf import HFEngine
from ttsc.runtime.engines.registry import make_engine
from ttsc.runtime.models import LoadedModel, tiny_random_model

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model's ops are too small to gain from threads, and on a shared
    2-core machine idle OpenMP workers spinning for a core slow them 5x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The default engine, and one whose tiny chunks and batches force chunking and
# the pruning of finished rows.
FACTORIES = {
    "default": lambda m: HFEngine(m),
    "small-batches": lambda m: HFEngine(m, max_batch_size=3, max_batch_tokens=64),
}


@pytest.mark.parametrize("factory", FACTORIES.values(), ids=FACTORIES.keys())
@pytest.mark.parametrize("check", contract.ENGINE_CHECKS, ids=lambda c: c.__name__)
def test_contract(check, factory, tiny_model: LoadedModel) -> None:
    check(lambda: factory(tiny_model))


@pytest.mark.parametrize("check", contract.MODEL_CHECKS, ids=lambda c: c.__name__)
def test_contract_with_model(check, tiny_model: LoadedModel) -> None:
    check(lambda: HFEngine(tiny_model, max_batch_size=8), tiny_model)


def test_contract_eos() -> None:
    biased = contract.eos_biased_model()
    contract.check_eos(lambda: HFEngine(biased), biased)


def test_greedy_matches_generate_longer(tiny_model: LoadedModel) -> None:
    contract.check_greedy_matches_generate(lambda: HFEngine(tiny_model), tiny_model,
                                           max_tokens=48)


def test_prompt_rendering(tiny_model: LoadedModel) -> None:
    engine = HFEngine(tiny_model)
    chat = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert engine.prompt_text(Prompt.user("hi")) == chat
    assert engine.prompt_text(Prompt.user("hi").continued("So")) == chat + "So"
    assert engine.prompt_text(Prompt.user("hi", system="Be brief.")).startswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n")
    assert engine.prompt_text(Prompt(raw="plain text")) == "plain text"
    ids = engine.tokenize(Prompt.user("hi"))
    assert ids[0] == tiny_model.tokenizer.bos_token_id
    assert tiny_model.tokenizer.decode(ids) == chat


def test_stop_string_inside_a_token(tiny_model: LoadedModel) -> None:
    """A stop string ending mid-token cuts the text there; the token is kept."""
    engine = HFEngine(tiny_model)
    prompt = Prompt.user("The quick brown fox")
    full = completions_of(engine.sample([SampleRequest(prompt, contract.greedy(32, ignore_eos=True))]))[0][0]
    pieces = [tiny_model.tokenizer.decode([t]) for t in full.token_ids]
    index = next(i for i, piece in enumerate(pieces) if len(piece) >= 2)
    stop = "".join(pieces[:index]) + pieces[index][0]
    got = completions_of(engine.sample([SampleRequest(prompt, contract.greedy(
        32, ignore_eos=True, stop=(stop,)))]))[0][0]
    assert got.finish_reason == "stop" and got.text == ""
    assert got.token_ids == full.token_ids[:index + 1]


def test_unseeded_requests_follow_the_engine_seed(tiny_model: LoadedModel) -> None:
    request = SampleRequest(Prompt.user("hi"), SamplingParams(n=2, max_tokens=8))
    first = HFEngine(tiny_model, seed=5)
    a1, a2 = completions_of(first.sample([request]))[0], completions_of(first.sample([request]))[0]
    b1 = completions_of(HFEngine(tiny_model, seed=5).sample([request]))[0]
    assert [c.token_ids for c in a1] == [c.token_ids for c in b1]
    assert [c.token_ids for c in a1] != [c.token_ids for c in a2]


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=-1.0), SamplingParams(top_p=0.0), SamplingParams(top_p=1.5),
    SamplingParams(top_k=-2), SamplingParams(max_tokens=-1), SamplingParams(n=-1)])
def test_invalid_sampling_settings(params: SamplingParams, tiny_model: LoadedModel) -> None:
    with pytest.raises(UserError, match="invalid sampling settings"):
        completions_of(HFEngine(tiny_model).sample([SampleRequest(Prompt.user("hi"), params)]))


def test_prompt_errors(tiny_model: LoadedModel) -> None:
    engine = HFEngine(tiny_model)
    too_long = Prompt(raw="a" * (tiny_model.max_length + 5))
    with pytest.raises(UserError, match="accepts at most"):
        completions_of(engine.sample([SampleRequest(too_long)]))
    with pytest.raises(UserError, match="accepts at most"):
        logprobs_of(engine.score_next([NextTokenRequest(too_long, ("Yes",))]))
    with pytest.raises(UserError, match="prompt \\+ continuation is"):
        totals_of(engine.score_continuations([ContinuationRequest(Prompt.user("hi"), too_long.raw)]))
    with pytest.raises(UserError, match="both raw text and chat messages"):
        engine.tokenize(Prompt(messages=(("user", "hi"),), raw="hi"))
    with pytest.raises(UserError, match="non-empty choice"):
        logprobs_of(engine.score_next([NextTokenRequest(Prompt.user("hi"), ("Yes", ""))]))


def test_generation_stops_at_the_context_limit() -> None:
    small = tiny_random_model(seed=3, max_position_embeddings=24)
    engine = HFEngine(small)
    prompt = Prompt(raw="The quick brown fox jumps")
    room = 24 - len(engine.tokenize(prompt))
    [[c]] = completions_of(engine.sample([SampleRequest(prompt, contract.greedy(100, ignore_eos=True))]))
    assert len(c.token_ids) == room and c.finish_reason == "length"


def test_registry(tiny_model: LoadedModel) -> None:
    from ttsc.runtime.engines.paged.engine import PagedEngine

    assert isinstance(make_engine("tiny-random"), PagedEngine)  # auto: the fast engine
    engine = make_engine("tiny-random", engine="hf", max_batch_size=4)
    assert isinstance(engine, HFEngine) and engine.max_batch_size == 4
    with pytest.raises(UserError, match="unknown engine `bogus`"):
        make_engine("tiny-random", engine="bogus")
    with pytest.raises(UserError, match="no option `max_batch`") as err:
        make_engine("tiny-random", engine="hf", max_batch=4)
    assert "max_batch_size" in (err.value.hint or "")
    # vllm: specs have their engine now; tests/test_engine_vllm.py covers it.
    from ttsc.runtime.engines.openai import OpenAIEngine

    remote = make_engine("openai:http://localhost:8000/v1#m")  # no request until first use
    assert isinstance(remote, OpenAIEngine) and remote.urls == ["http://localhost:8000/v1"]
    remote.close()
    with pytest.raises(UserError, match="unknown model spec"):
        make_engine("no-such-model")
