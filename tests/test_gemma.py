"""The second built-in model, Gemma 3 270M (`gemma3-270m`): loaded from its
wheels with no network, rendered with Gemma's chat template, served by the hf
engine (the paged forward is Llama-shaped), deterministic with a seed, and
usable as a `verify` judge. Every test here loads the real model (slow)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Iterator

import pytest

from engine_contract import completions_of, totals_of
from ttsc.runtime import models
from ttsc.runtime.engines.base import (
    ContinuationRequest,
    NextTokenRequest,
    Prompt,
    SampleRequest,
    SamplingParams,
)
from ttsc.runtime.engines.hf import HFEngine
from ttsc.runtime.engines.registry import make_engine
from ttsc.runtime.models import LoadedModel

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(models.importlib.util.find_spec(models.GEMMA3_PACKAGE) is None,
                                 reason="gemma3-270m is not installed (scripts/install.sh installs it)")]


def _no_network(*args, **kwargs):
    raise OSError("network access during a model load")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gemma-cache")


@pytest.fixture(scope="module")
def gemma(cache_dir: Path) -> Iterator[LoadedModel]:
    """Loaded from a fresh cache (the chunks joined, the GGUF converted) with
    every socket connection refused, so the whole first load is offline. The
    in-process model cache then keeps it for the module's other loads."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TTSC_CACHE_DIR", str(cache_dir))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket.socket, "connect_ex", _no_network)
        for key in [k for k in models._cache if k[0] == "gemma3-270m"]:
            del models._cache[key]  # loaded by an earlier test: load it again, here
        loaded = models.load_model("gemma3-270m", device="cpu")
    yield loaded  # the network is back for the tests (llama-server is on loopback)


@pytest.fixture(scope="module")
def engine(gemma: LoadedModel) -> HFEngine:
    return HFEngine(gemma)


def test_loads_offline_with_gemmas_chat_template(gemma: LoadedModel) -> None:
    assert gemma.model.config.model_type == "gemma3_text"
    assert gemma.model.config.layer_types.count("sliding_attention") == 15
    tok = gemma.tokenizer
    text = tok.apply_chat_template([{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": " What is 2+3? "}],
                                   add_generation_prompt=True, tokenize=False)
    assert text == ("<bos><start_of_turn>user\nBe brief.\n\nWhat is 2+3?<end_of_turn>\n"
                    "<start_of_turn>model\n")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids[:2] == [tok.bos_token_id, tok.convert_tokens_to_ids("<start_of_turn>")]
    assert ids.count(tok.bos_token_id) == 1  # the template's BOS, none added twice
    # A chat turn ends at <end_of_turn>; the tokenizer's <eos> ends raw text.
    assert gemma.eos_token_ids == {tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")}


def test_auto_serves_it_on_the_hf_engine() -> None:
    # Loaded in the fixture's cache already: the in-process model cache answers.
    assert isinstance(make_engine("gemma3-270m", device="cpu"), HFEngine)


def test_prompts_render_through_gemmas_template(engine: HFEngine) -> None:
    prompt = Prompt.user("What is 7 + 4?", system="Answer with a number.")
    assert engine.prompt_text(prompt) == ("<bos><start_of_turn>user\nAnswer with a number.\n\n"
                                          "What is 7 + 4?<end_of_turn>\n<start_of_turn>model\n")
    raw = engine.tokenize(Prompt(raw="Question: What is 7 + 4?\nAnswer:"))
    assert raw[0] == engine.tokenizer.bos_token_id  # raw text gets its BOS from the tokenizer


def test_generation_is_deterministic_with_a_seed(engine: HFEngine) -> None:
    prompt = Prompt(raw="Question: What is 5 + 8?\nAnswer:")

    def draw(seed: int, temperature: float = 0.8) -> list[list[int]]:
        out = engine.sample([SampleRequest(prompt, SamplingParams(n=3, temperature=temperature,
                                                                  max_tokens=12, seed=seed))])
        return [c.token_ids for c in completions_of(out)[0]]

    first = draw(7)
    assert draw(7) == first and len({tuple(t) for t in first}) > 1
    assert draw(8) != first
    greedy = draw(0, temperature=0.0)
    assert greedy[0] == greedy[1] == greedy[2] == draw(5, temperature=0.0)[0]
    [[answer]] = completions_of(engine.sample([SampleRequest(prompt, SamplingParams(
        temperature=0.0, max_tokens=10))]))
    assert answer.text.startswith(" 5 + 8 = 13"), answer  # what llama.cpp writes too


def test_scores_next_token_and_continuations(engine: HFEngine) -> None:
    asked = Prompt(raw="The capital of France is")
    paris, london = totals_of(engine.score_continuations([ContinuationRequest(asked, " Paris"),
                                                          ContinuationRequest(asked, " London")]))
    assert paris > london + 1.0, (paris, london)
    judged = [Prompt(raw=f"Question: What is 2 + 2?\nProposed answer: {a}\n"
                         "Is the proposed answer correct? Answer Yes or No.\nAnswer:")
              for a in ("4", "7")]
    outs = engine.score_next([NextTokenRequest(p, ("Yes", "No")) for p in judged])
    for out in outs:
        assert len(out.logprobs) == 2 and all(-30 < lp < 0 for lp in out.logprobs), out
    assert outs[0].logprobs != outs[1].logprobs


def test_judges_with_verify_in_a_strategy(gemma: LoadedModel, tmp_path: Path) -> None:
    """`verify` with Gemma as the judge of another model's samples: a strategy
    mixing the paged engine (tiny-random) and the hf engine (gemma)."""
    from ttsc import api

    source = tmp_path / "judged.tts"
    source.write_text(
        'model policy = "tiny-random"\nmodel judge = "gemma3-270m"\n'
        'prompt solve = "{question}"\n'
        'raw prompt check = "Question: {question}\\nProposed answer: {candidate}\\n'
        'Is the proposed answer correct? Answer Yes or No.\\nAnswer:"\n'
        "strategy judged(question) {\n"
        "    cands = generate(policy, solve, n=3, temperature=0.8, max_tokens=6)\n"
        "    return best(cands, by=verify(judge, cands, check))\n}\n")
    first = api.run(source, {"question": "What is 2 + 2?"}, seed=3, cache=None)
    again = api.run(source, {"question": "What is 2 + 2?"}, seed=3, cache=None)
    [answer] = first.outputs
    assert isinstance(answer, str) and again.outputs == [answer]


def test_greedy_matches_llama_cpp(gemma: LoadedModel, cache_dir: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The GGUF as transformers dequantizes it and llama.cpp's own reading of
    it write the same greedy text: the loader gets Gemma's embedding scale,
    norms and layer pattern right."""
    from ttsc.runtime.llama_server import LlamaServer, find_tool

    if find_tool("llama-server") is None:
        pytest.skip("llama-server is not built (scripts/install.sh builds it)")
    import httpx

    monkeypatch.setenv("TTSC_CACHE_DIR", str(cache_dir))  # the fixture's joined GGUF file
    prompts = ["Question: What is 5 + 8?\nAnswer:", "The capital of France is",
               "<start_of_turn>user\nWhat is 5 + 8?<end_of_turn>\n<start_of_turn>model\n"]
    engine = HFEngine(gemma)
    ours = completions_of(engine.sample([SampleRequest(Prompt(raw=p), SamplingParams(
        temperature=0.0, max_tokens=10)) for p in prompts]))
    with LlamaServer(models.gemma3_gguf(), alias="gemma3-270m", threads=1, parallel=1) as server:
        for p, [mine] in zip(prompts, ours):
            reply = httpx.post(f"{server.root}/completion", timeout=300, json={
                "prompt": p, "n_predict": 10, "temperature": 0, "top_k": 1}).json()
            assert reply["content"] == mine.text, (p, reply["content"], mine.text)
