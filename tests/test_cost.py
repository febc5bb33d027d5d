"""The cost model against hand-computed figures for one model shape (SmolLM2-135M)."""

import json

import pytest

from ttsc.compiler import cost, model_facts, profiles
from ttsc.compiler.model_facts import ModelShape
from ttsc.compiler.cost import (decode_flops, decode_step_bytes, generation_cost,
                                kinetics_cost, prefill_bytes, prefill_flops)

SMOL = model_facts.BUILTIN_SHAPES["smollm2-135m"]
# Hand-computed for SmolLM2-135M: hidden 576, 30 layers, 9 heads of 64, 3 KV heads, MLP 1536.
ATTN = 2 * 576 * 576 + 2 * 576 * 192  # q, o; k, v per layer = 884,736
MLP = 3 * 576 * 1536  # 2,654,208
EMB = 49152 * 576  # 28,311,552


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TTSC_CACHE_DIR", str(tmp_path / "cache"))


def test_parameter_count_matches_smollm2():
    assert SMOL.attention_params == 884_736
    assert SMOL.mlp_params == 2_654_208
    # 30 layers (+2 norms each), tied embeddings, final norm: the published 134.5M.
    assert SMOL.num_params == 30 * (ATTN + MLP + 2 * 576) + EMB + 576 == 134_515_008


def test_kv_bytes_per_token():
    assert SMOL.kv_bytes_per_token(2) == 2 * 30 * 3 * 64 * 2 == 23_040
    assert SMOL.kv_bytes_per_token(4) == 46_080


def test_prefill_flops_by_hand():
    t, cached = 10, 5
    dense = 2 * 30 * (ATTN + MLP) * t + 2 * EMB  # logits for the last token only
    attention = 4 * 30 * 9 * 64 * (cached * t + t * (t + 1) / 2)
    assert prefill_flops(SMOL, t, cached) == dense + attention
    assert prefill_flops(SMOL, 0) == 0


def test_decode_flops_and_bytes_by_hand():
    assert decode_flops(SMOL, 99) == 2 * (30 * (ATTN + MLP) + EMB) + 4 * 30 * 9 * 64 * 100
    w = SMOL.weight_bytes(2)
    kv = 23_040
    # Four rows at context 100: weights once, each row's KV, one new token each.
    assert decode_step_bytes(SMOL, [100] * 4) == w + kv * (400 + 4)
    # A 90-token prefix shared by the four rows is read once.
    assert decode_step_bytes(SMOL, [100] * 4, shared_prefix=90) == w + kv * (90 + 4 * 10 + 4)
    assert prefill_bytes(SMOL, 10, 5) == w + kv * (20 + 5)


def test_kinetics_cost_is_compute_plus_intensity_times_traffic():
    assert kinetics_cost(1e9, 1e6, 300.0) == 1e9 + 3e8


def test_generation_cost_sharing_prefills_once_and_holds_one_prompt():
    shared = generation_cost(SMOL, prompt_tokens=100, n=8, gen_tokens=4)
    alone = generation_cost(SMOL, prompt_tokens=100, n=8, gen_tokens=4, share_prefix=False)
    assert shared.prefill_tokens == 100 and alone.prefill_tokens == 800
    assert shared.decode_tokens == alone.decode_tokens == 32
    assert shared.kv_peak_bytes == 23_040 * (100 + 32)
    assert alone.kv_peak_bytes == 23_040 * (800 + 32)
    assert shared.flops < alone.flops and shared.bytes < alone.bytes
    assert shared.decode_steps == 4
    cached = generation_cost(SMOL, 100, 8, 4, cached_tokens=60)
    assert cached.prefill_tokens == 40


def test_shape_from_config_dict():
    shape = ModelShape.from_config({"hidden_size": 64, "num_attention_heads": 4,
                                    "num_key_value_heads": 2, "num_hidden_layers": 2,
                                    "intermediate_size": 128, "vocab_size": 320,
                                    "tie_word_embeddings": False})
    assert shape.head_dim == 16 and shape.num_kv_heads == 2 and not shape.tied_embeddings
    assert shape.num_params == 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 128) + 2 * 320 * 64 + 64


def test_model_shape_sources(tmp_path):
    assert model_facts.model_shape("smollm2-135m").source == "builtin"
    assert model_facts.model_shape("openai:http://x/v1#m").source == "default"
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(
        {"hidden_size": 128, "num_attention_heads": 4, "num_hidden_layers": 3, "vocab_size": 1000,
         "intermediate_size": 256}))
    shape = model_facts.model_shape(str(d))
    assert (shape.num_layers, shape.hidden_size, shape.num_kv_heads, shape.source) == (3, 128, 4, "config")


def test_fit_roofline_recovers_a_known_device():
    peak, bw, overhead = 4e10, 8e9, 0.015
    points = []
    for flops, moved, passes in [(1e11, 5e8, 1), (4e11, 6e8, 1), (2e10, 9e9, 17), (5e10, 2e10, 33),
                                 (8e11, 1e9, 2), (1e9, 3e9, 9)]:
        points.append((flops, moved, passes, flops / peak + moved / bw + passes * overhead))
    got = profiles.fit_roofline(points)
    assert got == pytest.approx((peak, bw, overhead), rel=1e-6)


def test_profiles_round_trip_and_defaults():
    default = profiles.load_profile("smollm2-135m")
    assert not default.measured and default.device == profiles.DEFAULT_DEVICE
    d = profiles.DEFAULT_DEVICES["cpu"]
    assert (default.peak_flops, default.bandwidth, default.overhead_s) == (d.peak_flops, d.bandwidth,
                                                                           d.overhead_s)
    points = [{"flops": f, "bytes": b, "passes": p, "seconds": f / 1e11 + b / 1e10 + p * 0.01}
              for f, b, p in [(1e11, 1e9, 1), (3e11, 2e9, 1), (1e10, 1e10, 17), (2e10, 3e10, 33)]]
    prof = profiles.new_profile("smollm2-135m", "hf", "cpu", 4, points)
    path = profiles.save_profile(prof)
    assert path.parent == profiles.profile_dir()
    loaded = profiles.load_profile("smollm2-135m")
    assert loaded.measured and loaded.engine == "hf"
    assert loaded.peak_flops == pytest.approx(1e11, rel=1e-6)
    assert loaded.intensity == pytest.approx(10.0, rel=1e-6)
    c = generation_cost(SMOL, 50, 4, 8, dtype_bytes=4)
    assert loaded.call_seconds(c) == pytest.approx(c.flops / 1e11 + c.bytes / 1e10 + 9 * 0.01, rel=1e-6)


def test_stage_seconds_grows_with_work():
    prof = profiles.default_profile("smollm2-135m")
    small = cost.stage_seconds(SMOL, prof, prefills=[(100, 0)], rows=4, steps=8)
    more_rows = cost.stage_seconds(SMOL, prof, prefills=[(100, 0)], rows=16, steps=8)
    more_steps = cost.stage_seconds(SMOL, prof, prefills=[(100, 0)], rows=4, steps=32)
    assert 0 < small < more_rows and small < more_steps
    assert cost.stage_seconds(SMOL, prof) == 0.0


def test_prompt_tokenizer_estimate_without_cache():
    tok = model_facts.prompt_tokenizer("smollm2-135m")
    assert not tok.exact and "estimated" in tok.how
    ids = tok.encode("abcdefgh" * 3)
    assert len(ids) == 6  # 4 characters per token
    # Equal text prefixes give equal pseudo-tokens, so tries still see sharing.
    assert tok.encode("abcdefghXYZ")[:2] == tok.encode("abcdefghQRS")[:2]


def test_prompt_tokenizer_frames_gemma_as_its_template_does(monkeypatch, tmp_path):
    """Without a cached tokenizer, gemma3-270m's prompts are framed with its
    own turns (not ChatML): the frames are what its chat template writes."""
    import jinja2

    from ttsc.runtime.models import GEMMA3_CHAT_TEMPLATE

    monkeypatch.setenv("TTSC_CACHE_DIR", str(tmp_path))  # nothing cached
    tok = model_facts.prompt_tokenizer("gemma3-270m")
    assert not tok.exact
    template = jinja2.Environment().from_string(GEMMA3_CHAT_TEMPLATE)

    def render(*messages):
        return template.render(messages=[{"role": r, "content": c} for r, c in messages],
                               bos_token="<bos>", add_generation_prompt=True)

    pre, post = tok.frame(system=False)
    assert pre + "Say Yes." + post == render(("user", "Say Yes."))
    before, between, after = tok.frame(system=True)
    assert before + "Be brief." + between + "Say Yes." + after == render(("system", "Be brief."),
                                                                         ("user", "Say Yes."))


def test_prompt_tokenizer_is_exact_once_cached(tiny_model):
    model_facts.cache_model_facts("tiny-random", tiny_model)
    tok = model_facts.prompt_tokenizer("tiny-random")
    assert tok.exact
    pre, post = tok.frame(system=False)
    text = tiny_model.tokenizer.apply_chat_template([{"role": "user", "content": "Say Yes or No."}],
                                                    add_generation_prompt=True, tokenize=False)
    assert pre + "Say Yes or No." + post == text
    want = tiny_model.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tok.encode(text) == want
    assert model_facts.model_shape("tiny-random").source == "cache"


def test_profile_measures_fits_and_stores(capsys):
    from ttsc.cli import main

    assert main(["profile", "tiny-random", "--engine", "hf", "--batch-sizes", "1,2",
                 "--prompt-tokens", "8,32", "--decode-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "effective roofline" in out and "saved" in out
    prof = profiles.load_profile("tiny-random")
    assert prof.measured and prof.engine == "hf" and len(prof.measurements) == 8
    assert prof.peak_flops > 0 and prof.bandwidth > 0 and prof.overhead_s >= 0
    # Profiling also cached what compile-time analysis needs.
    assert model_facts.prompt_tokenizer("tiny-random").exact
