"""The `openai` engine against a real OpenAI-compatible server: llama.cpp's
llama-server serving the embedded model (the `llama_server` fixture).

All engine-only contract checks run. The model-aware checks
(`check_all_with_model`) do not: they compare token for token with the torch
forward pass of a `LoadedModel`, while llama.cpp runs the GGUF's quantized
weights with its own kernels, so exact agreement is not expected of it.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from engine_contract import ENGINE_CHECKS, PROMPTS
from ttsc.cli import main
from ttsc.common.prompts import Prompt
from ttsc.runtime.engines.base import (ContinuationRequest, NextTokenRequest, SampleRequest,
                                       SamplingParams)
from ttsc.runtime.engines.http_pool import ServerError
from ttsc.runtime.engines.openai import OpenAIEngine
from ttsc.runtime.engines.registry import make_engine

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # starts llama-server with the embedded model


@pytest.fixture
def engines():
    """A factory of fresh engines, all closed after the test."""
    made: list[OpenAIEngine] = []

    def make(spec: str, **options) -> OpenAIEngine:
        engine = make_engine(spec, **options)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


@pytest.mark.parametrize("check", ENGINE_CHECKS, ids=lambda c: c.__name__)
def test_contract(check, llama_server, engines):
    check(lambda: engines(llama_server.spec))


def test_capabilities_are_probed(llama_server, engines):
    caps = engines(llama_server.spec).capabilities
    assert (caps.token_ids, caps.logprobs, caps.next_token_scores, caps.continuation_scores,
            caps.assistant_prefix, caps.tokenizer) == (True,) * 6
    assert caps.prefix_cache is False  # llama.cpp's prompt cache is per slot
    assert caps.max_concurrency == 16


def test_unknown_model_names_the_endpoint(llama_server, engines):
    engine = engines(f"openai:{llama_server.url}#no-such-model")
    with pytest.raises(ServerError) as info:
        engine.sample([SampleRequest(PROMPTS[0], SamplingParams(max_tokens=2))])
    assert llama_server.url in info.value.message
    assert "serves no model `no-such-model`" in info.value.message
    assert info.value.hint == "it serves: smollm2-135m"


def test_choice_outside_top_logprobs_is_forced(llama_server, engines):
    """With 2 alternatives asked for, an unlikely choice is missing from them:
    its logprob comes from a forced request and equals the continuation score."""
    engine = engines(llama_server.spec, top_logprobs=2)
    prompt = PROMPTS[1]
    [out] = engine.score_next([NextTokenRequest(prompt, ("Yes", " national"))])
    conts = engine.score_continuations([ContinuationRequest(prompt, c) for c in ("Yes", " national")])
    assert out.logprobs[1] < -5  # far outside the top two
    for got, ref in zip(out.logprobs, conts):
        assert abs(got - ref.logprob) < 2e-3


def test_usage_counts_the_server_prompt_cache(llama_server, engines):
    """A repeated prompt is served from llama.cpp's prompt cache: the usage says
    which prompt tokens were computed and which reused."""
    engine = engines(llama_server.spec)
    request = SampleRequest(PROMPTS[0], SamplingParams(n=1, temperature=0.0, max_tokens=3))
    engine.sample([request])
    [again] = engine.sample([request])
    u = again.usage
    assert u.prompt_tokens == len(engine.tokenize(PROMPTS[0]))
    assert u.prompt_tokens_reused > 0 and u.prompt_tokens_computed < u.prompt_tokens


def test_self_consistency_end_to_end(llama_server, engines, capsys):
    """The README's strategy, unchanged, through the CLI against the server."""
    code = main(["run", str(ROOT / "examples/self_consistency.tts"), "--input",
                 "question=What is 3 + 4?", "--model", f"policy={llama_server.spec}"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert re.fullmatch(r"-?\d+(\.\d+)?|", out.strip())  # a number ("" if no sample gave one)
    summary = re.search(r"\[self_consistency\] (\d+) calls, \d+ tokens computed \((\d+) prompt \+ "
                        r"(\d+) generated tokens; (\d+) requested, (\d+) prompt tokens reused\)", err)
    assert summary, err
    calls, computed, generated, requested, reused = map(int, summary.groups())
    assert calls == 1  # one request of 16 samples
    question = Prompt.user("What is 3 + 4? Give the final answer as 'Answer: <number>'.")
    prompt = requested - generated
    assert prompt == 16 * len(engines(llama_server.spec).tokenize(question))
    assert computed + reused == prompt and reused > 0  # llama.cpp's prompt cache
    assert 0 < generated <= 16 * 40


def test_eval_end_to_end(llama_server, tmp_path, capsys):
    out_file = tmp_path / "results.jsonl"
    code = main(["eval", str(ROOT / "examples/self_consistency.tts"), "--data",
                 str(ROOT / "examples/data/addition.jsonl"), "--limit", "3", "--quiet",
                 "--out", str(out_file), "--json", "--model", f"policy={llama_server.spec}"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["items"] == 3 and summary["run_items"] == 3
    assert summary["tokens_per_input"] > 0
    items = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(items) == 3 and all(len(item["samples"]) == 16 for item in items)


def test_seeded_samples_share_one_request(llama_server, engines):
    """On llama.cpp the n samples of a seeded request go out as one request per
    at most `slots` samples (choice i seeded s + i), so the prompt is computed
    once per request, not once per sample."""
    engine = engines(llama_server.spec)
    assert engine.facts.slots == 4
    calls = engine.pool.stats.http_calls
    [out] = engine.sample([SampleRequest(PROMPTS[1], SamplingParams(n=6, temperature=1.0,
                                                                    max_tokens=4, seed=40))])
    assert engine.pool.stats.http_calls - calls == 2  # 4 + 2 samples
    prompt = len(engine.tokenize(PROMPTS[1]))
    assert out.usage.prompt_tokens == 6 * prompt
    assert out.usage.prompt_tokens_computed <= 2 * prompt
    alone = engine.sample([SampleRequest(PROMPTS[1], SamplingParams(n=1, temperature=1.0,
                                                                    max_tokens=4, seed=40 + 5))])
    assert alone[0].completions[0].token_ids == out.completions[5].token_ids


def test_logprobs_are_log_probabilities(llama_server, engines):
    engine = engines(llama_server.spec)
    [out] = engine.sample([SampleRequest(PROMPTS[0], SamplingParams(n=4, temperature=1.0,
                                                                    max_tokens=6, seed=1))])
    for c in out.completions:
        assert len(c.logprobs) == len(c.token_ids) > 0
        assert all(lp <= 0 and math.isfinite(lp) for lp in c.logprobs)

