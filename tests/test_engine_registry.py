"""The engine registry: which engine serves a spec, and what it can do, before loading."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ttsc.common.capabilities import Capabilities
from ttsc.common.errors import UserError
from ttsc.runtime import models
from ttsc.runtime.engines.registry import engine_capabilities, engine_kind, engine_kinds, make_engine


def test_declared_capabilities_are_the_engines_own(tiny_model) -> None:
    for kind in ("paged", "hf"):
        assert engine_capabilities("tiny-random", kind) == make_engine("tiny-random", engine=kind).capabilities
    assert engine_capabilities("tiny-random") == engine_capabilities("tiny-random", "paged")  # auto


def test_capabilities_say_how_each_engine_serves_callers() -> None:
    paged, hf = engine_capabilities("smollm2-135m", "paged"), engine_capabilities("smollm2-135m", "hf")
    assert paged.max_concurrency == 256 and paged.prefix_cache  # callers batch together
    assert hf.max_concurrency == 1 and not hf.prefix_cache  # one call at a time
    for caps in (paged, hf):
        assert not caps.missing(("token_ids", "logprobs", "next_token_scores", "continuation_scores",
                                 "assistant_prefix", "tokenizer"))
    # An engine's options show in its own capabilities.
    engine = make_engine("tiny-random", engine="paged", max_num_seqs=8, prefix_cache=False)
    assert engine.capabilities == Capabilities(max_concurrency=8, prefix_cache=False)


def test_capabilities_load_nothing(monkeypatch) -> None:
    def no_loading(*args, **kwargs):
        raise AssertionError("engine_capabilities loaded a model")

    monkeypatch.setattr(models, "load_model", no_loading)
    assert engine_capabilities("gguf:/nowhere/model.gguf").prefix_cache  # not even the file is needed
    # Nor is torch imported: the compiler asks before anything heavy loads.
    code = ("import sys; from ttsc.runtime.engines.registry import engine_capabilities; "
            "engine_capabilities('smollm2-135m'); engine_capabilities('hf:org/name', 'hf'); "
            "engine_capabilities('gemma3-270m'); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-P", "-c", code], check=True)


def test_auto_picks_the_hf_engine_for_gemma() -> None:
    """Gemma 3 is not Llama-shaped: `auto` skips the paged engine for it, and
    asking for the paged engine says why; Llama-shaped models keep it."""
    assert engine_kinds("gemma3-270m") == ["hf", "vllm"]
    assert engine_kind("gemma3-270m") == "hf" and engine_kind(" Gemma3-270M ", "hf") == "hf"
    assert engine_kind("smollm2-135m") == "paged" and engine_kind("tiny-random") == "paged"
    with pytest.raises(UserError, match="engine `paged` cannot serve `gemma3-270m`: Gemma 3 ") as err:
        engine_kind("gemma3-270m", "paged")
    assert "sliding-window" in err.value.message and "Llama-shaped" in err.value.message
    assert err.value.hint == "engines for this model: hf, vllm"
    assert engine_capabilities("gemma3-270m") == engine_capabilities("smollm2-135m", "hf")


def test_paged_model_types_are_what_its_forward_accepts() -> None:
    from ttsc.runtime.engines.paged.model import SUPPORTED_MODEL_TYPES
    from ttsc.runtime.engines.registry import PAGED_MODEL_TYPES

    assert PAGED_MODEL_TYPES == SUPPORTED_MODEL_TYPES


def test_kinds_and_mistakes() -> None:
    assert engine_kinds("smollm2-135m") == ["paged", "hf", "vllm"]
    assert engine_kind("./some/dir") == "paged"
    with pytest.raises(UserError, match="unknown engine `pagd`") as err:
        engine_capabilities("smollm2-135m", "pagd")
    assert "paged" in (err.value.hint or "")
    # vLLM is declared without importing it: a compile checks ops before vLLM loads.
    assert engine_capabilities("vllm:org/name").prefix_cache
    # A server's capabilities are probed on first use; declared: what a capable one serves.
    remote = engine_capabilities("openai:http://localhost:8000/v1#m")
    assert engine_kind("openai:http://localhost:8000/v1#m") == "openai"
    assert remote.next_token_scores and not remote.prefix_cache and remote.max_concurrency == 16
    with pytest.raises(UserError, match="unknown model spec"):
        engine_capabilities("no-such-model")
