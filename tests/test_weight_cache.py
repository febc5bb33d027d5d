"""The paged engine's weight cache and the light tokenizer it stores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ttsc.kernels import cpu_ops
from ttsc.runtime import models
from ttsc.runtime.engines.base import NextTokenRequest, Prompt, SampleRequest, SamplingParams
from ttsc.runtime.engines.paged import weight_cache
from ttsc.runtime.engines.paged.engine import PagedEngine
from ttsc.runtime.engines.registry import make_engine
from ttsc.runtime.engines.tokenizer import PROBE_CHATS, PROBE_TEXTS, LightTokenizer
from ttsc.runtime.models import LoadedModel, tiny_random_model

MiB = 1 << 20
PROMPTS = [Prompt.user("What is 2+3?"), Prompt.user("Is it correct? Answer Yes or No.", system="Be brief."),
           Prompt(raw="The quick brown fox"), Prompt.user("Add the numbers.").continued("First, ")]


@pytest.fixture()
def cache_root(tmp_path: Path, monkeypatch) -> Path:
    cpu_ops.load()  # built (or found) in the real cache first: not again under the temporary root
    root = tmp_path / "cache"
    monkeypatch.setenv("TTSC_CACHE_DIR", str(root))
    monkeypatch.delenv("TTSC_WEIGHT_CACHE", raising=False)
    models._cache.clear()  # load_model's in-process cache: each test loads from disk
    return root


def save_tiny(directory: Path, chat_template: str | None = None) -> str:
    """The tiny model as a local model directory; its spec."""
    tiny = tiny_random_model()
    if chat_template is not None:
        tiny.tokenizer.chat_template = chat_template
    tiny.model.save_pretrained(directory)
    tiny.tokenizer.save_pretrained(directory)
    return str(directory)


def outputs(engine: PagedEngine) -> tuple:
    samples = engine.sample([SampleRequest(p, SamplingParams(n=2, temperature=0.9, max_tokens=12, seed=3))
                             for p in PROMPTS])
    scores = engine.score_next([NextTokenRequest(p, ("Yes", "No")) for p in PROMPTS])
    return ([[(c.text, c.token_ids, c.logprobs) for c in o.completions] for o in samples],
            [s.logprobs for s in scores], [engine.tokenize(p) for p in PROMPTS])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_warm_start_loads_the_engine_weights_without_transformers(tmp_path: Path, cache_root: Path,
                                                                    monkeypatch, dtype: str) -> None:
    spec = save_tiny(tmp_path / "tiny")
    cold = make_engine(spec, engine="paged", dtype=dtype, kv_memory_bytes=16 * MiB)
    [entry] = (cache_root / "weights").iterdir()
    facts = json.loads((entry / "engine.json").read_text())
    assert facts["dtype"] == dtype and facts["tokenizer"]["light"] is True
    assert (entry / "model.safetensors").is_file() and (entry / "tokenizer.json").is_file()

    def no_transformers(*args, **kwargs):
        raise AssertionError("a warm start went through transformers")

    monkeypatch.setattr(models, "load_model", no_transformers)
    warm = make_engine(spec, engine="paged", dtype=dtype, kv_memory_bytes=16 * MiB)
    assert isinstance(warm.tokenizer, LightTokenizer)
    assert outputs(warm) == outputs(cold)


def test_the_key_is_the_content_not_the_path(tmp_path: Path, cache_root: Path) -> None:
    a = save_tiny(tmp_path / "a")
    b = save_tiny(tmp_path / "b")  # the same model in another folder
    assert weight_cache.entry_dir(a, torch.float32) == weight_cache.entry_dir(b, torch.float32)
    assert weight_cache.entry_dir(a, torch.float32) != weight_cache.entry_dir(a, torch.bfloat16)
    other = tiny_random_model(seed=5)
    other.model.save_pretrained(tmp_path / "c")
    other.tokenizer.save_pretrained(tmp_path / "c")
    assert weight_cache.entry_dir(str(tmp_path / "c"), torch.float32) != weight_cache.entry_dir(a, torch.float32)
    assert weight_cache.entry_dir("tiny-random", torch.float32) is None  # no file to key it by


def test_no_entry_when_caching_is_off(tmp_path: Path, cache_root: Path, monkeypatch) -> None:
    spec = save_tiny(tmp_path / "tiny")
    monkeypatch.setenv("TTSC_WEIGHT_CACHE", "off")
    assert weight_cache.entry_dir(spec, torch.float32) is None
    monkeypatch.setenv("TTSC_CACHE_DIR", "off")
    monkeypatch.delenv("TTSC_WEIGHT_CACHE")
    assert weight_cache.entry_dir(spec, torch.float32) is None
    make_engine(spec, engine="paged", dtype="float32", kv_memory_bytes=16 * MiB)
    assert not cache_root.exists()


def test_a_damaged_entry_is_rebuilt(tmp_path: Path, cache_root: Path) -> None:
    spec = save_tiny(tmp_path / "tiny")
    first = outputs(make_engine(spec, engine="paged", dtype="float32", kv_memory_bytes=16 * MiB))
    [entry] = (cache_root / "weights").iterdir()
    data = (entry / "model.safetensors").read_bytes()
    (entry / "model.safetensors").write_bytes(data[:len(data) // 2])  # a half-written file
    again = outputs(make_engine(spec, engine="paged", dtype="float32", kv_memory_bytes=16 * MiB))
    assert again == first
    assert len((entry / "model.safetensors").read_bytes()) == len(data)  # stored anew


def test_a_template_the_light_tokenizer_cannot_render_keeps_transformers(tmp_path: Path,
                                                                          cache_root: Path) -> None:
    # `{% generation %}` is a transformers extension of jinja2.
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% generation %}{{ m['content'] }}"
                "{% endgeneration %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}"
                "<|im_start|>assistant\n{% endif %}")
    spec = save_tiny(tmp_path / "tiny", chat_template=template)
    cold = make_engine(spec, engine="paged", dtype="float32", kv_memory_bytes=16 * MiB)
    [entry] = (cache_root / "weights").iterdir()
    facts = json.loads((entry / "engine.json").read_text())["tokenizer"]
    assert facts["light"] is False and "TemplateSyntaxError" in facts["why_not_light"]
    warm = make_engine(spec, engine="paged", dtype="float32", kv_memory_bytes=16 * MiB)
    assert not isinstance(warm.tokenizer, LightTokenizer)
    assert outputs(warm) == outputs(cold)


def test_light_tokenizer_reproduces_the_tiny_tokenizer(tiny_model: LoadedModel) -> None:
    light = LightTokenizer.from_hf(tiny_model.tokenizer)
    assert light.agrees_with(tiny_model.tokenizer) is None
    assert len(PROBE_CHATS) >= 5 and len(PROBE_TEXTS) >= 10


def test_light_tokenizer_notices_a_difference(tiny_model: LoadedModel) -> None:
    facts = LightTokenizer.facts_of(tiny_model.tokenizer)
    backend = LightTokenizer.from_hf(tiny_model.tokenizer).backend
    spaced = {**facts, "chat_template": facts["chat_template"].replace("<|im_start|>", "<|im_start|> ")}
    assert "renders differently" in (LightTokenizer.from_facts(backend, spaced).agrees_with(tiny_model.tokenizer)
                                     or "")


@pytest.mark.slow
def test_embedded_model_warm_start_matches_a_transformers_load(tmp_path: Path, cache_root: Path) -> None:
    """smollm2-135m: the engine from safetensors and the light tokenizer gives what
    the engine built from the transformers model gives."""
    from_transformers = PagedEngine(models.load_model("smollm2-135m"), dtype=torch.bfloat16,
                                    kv_memory_bytes=64 * MiB)
    models._cache.clear()
    make_engine("smollm2-135m", engine="paged", dtype="bfloat16")  # cold: stores the entry
    warm = make_engine("smollm2-135m", engine="paged", dtype="bfloat16", kv_memory_bytes=64 * MiB)
    assert isinstance(warm.tokenizer, LightTokenizer)
    assert outputs(warm) == outputs(from_transformers)
