"""Scores on a bf16 engine are read from fp32 logits: a verifier's P(Yes)
takes as many distinct values as in fp32, and agrees with fp32 closely."""

from __future__ import annotations

import math

import pytest
import torch

from engine_contract import logprobs_of, totals_of
from ttsc.runtime.engines.base import ContinuationRequest, NextTokenRequest, Prompt
from ttsc.runtime.engines.hf import HFEngine
from ttsc.runtime.engines.paged.engine import PagedEngine
from ttsc.runtime.models import load_model


def _verifier_requests(n: int) -> list[NextTokenRequest]:
    reqs = []
    for i in range(n):
        a, b = i % 9 + 1, i // 9 + 2
        claim = a + b + (i % 3) - 1  # right for a third of them
        reqs.append(NextTokenRequest(Prompt.user(
            f"Problem: What is {a} + {b}?\nProposed solution: {a} + {b} = {claim}. Answer: {claim}\n"
            "Is the proposed solution correct? Answer Yes or No."), ("Yes", "No")))
    return reqs


def _p_yes(logprobs: list[list[float]]) -> list[float]:
    return [1 / (1 + math.exp(n - y)) for y, n in logprobs]


def _scores(loaded, dtype, reqs):
    engine = PagedEngine(loaded, dtype=dtype, kv_memory_bytes=64 << 20)
    try:
        return _p_yes(logprobs_of(engine.score_next(reqs)))
    finally:
        engine.close()


def distinct(ps: list[float]) -> int:
    return len({round(p, 6) for p in ps})


def test_a_bf16_model_reads_score_logits_in_fp32(tiny_model):
    engine = PagedEngine(tiny_model, dtype=torch.bfloat16, kv_memory_bytes=16 << 20)
    model = engine.runner.model
    hidden = (torch.randn(8, model.cfg.hidden_size, generator=torch.Generator().manual_seed(0)) * 40
              ).to(torch.bfloat16)  # logits of a trained model's size, where bf16 steps are coarse
    exact = model.logits_fp32(hidden)
    assert exact.dtype == torch.float32
    torch.testing.assert_close(exact, hidden.float() @ model.head_weight.float().T, rtol=1e-5, atol=1e-4)
    coarse = model.logits(hidden).float()
    assert coarse.unique().numel() < exact.unique().numel()


@pytest.mark.slow
def test_bf16_verifier_scores_are_as_distinct_as_fp32_on_the_embedded_model():
    # With bf16 logits the 135M judge's P(Yes) over these 256 candidates took 8
    # distinct values (256 in fp32), so `best` and `top` broke ties by position.
    loaded = load_model("smollm2-135m", device="cpu")
    reqs = _verifier_requests(256)
    bf16, fp32 = _scores(loaded, torch.bfloat16, reqs), _scores(loaded, torch.float32, reqs)
    assert distinct(bf16) >= 0.8 * distinct(fp32), (distinct(bf16), distinct(fp32))
    assert max(abs(a - b) for a, b in zip(bf16, fp32)) < 0.05


@pytest.mark.slow
def test_the_hf_engine_reads_a_bf16_models_scores_in_fp32():
    reqs = _verifier_requests(128)
    half = HFEngine(load_model("smollm2-135m", device="cpu", dtype=torch.bfloat16))
    full = HFEngine(load_model("smollm2-135m", device="cpu", dtype=torch.float32))
    bf16, fp32 = (_p_yes(logprobs_of(e.score_next(reqs))) for e in (half, full))
    assert distinct(bf16) >= 0.8 * distinct(fp32), (distinct(bf16), distinct(fp32))
    assert max(abs(a - b) for a, b in zip(bf16, fp32)) < 0.05
    asked = [ContinuationRequest(r.prompt, " Yes, it is.") for r in reqs[:4]]
    lo, hi = (totals_of(e.score_continuations(asked)) for e in (half, full))
    assert max(abs(a - b) for a, b in zip(lo, hi)) < 0.5
