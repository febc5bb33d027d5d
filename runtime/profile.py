"""`ttsc profile MODEL`: measure how fast an engine runs a model, for the cost model.

A handful of timed calls (prompt length x batch size x decode length) are
turned into (FLOPs, bytes, forward passes, seconds) points with the cost
model's own formulas, and an effective roofline (FLOP/s, bytes/s, seconds of
overhead per pass) is fitted to them. The compiler predicts latency from it.
Prefill tokens come from the engine's usage counters, so an engine that
shares a prompt among its samples is costed as doing so.

Profiles are JSON files under $TTSC_CACHE_DIR/profiles (default
~/.cache/ttsc/profiles), one per model, engine and device. Profiling also
caches the model's tokenizer and chat template for token-exact compile-time
prompt analysis (`model_facts.cache_model_facts`).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Sequence

from ttsc.common.errors import UserError
from ttsc.compiler import cost, model_facts, profiles
from ttsc.runtime.engines.base import (Engine, NextTokenRequest, Prompt, SampleRequest,
                                       SamplingParams, total_usage)

DEFAULT_BATCH_SIZES = (1, 8, 32)
DEFAULT_PROMPT_TOKENS = (32, 256)
DEFAULT_DECODE_TOKENS = 16
_WORDS = ("apple river stone cloud seven garden orange window music silver paper "
          "forest number yellow bridge coffee planet summer letter engine").split()


@dataclass
class Timing:
    kind: str  # prefill | generate
    batch: int
    prompt_tokens: int
    decode_tokens: int
    prefill_computed: int
    seconds: float
    flops: float
    bytes: float
    passes: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _prompt_of(engine: Engine, tokens: int, rng: random.Random) -> Prompt:
    """A raw prompt of about `tokens` tokens of distinct random words (distinct
    prompts, so a prefix cache cannot skip the work being timed)."""
    words = [rng.choice(_WORDS) for _ in range(tokens)]
    lo, hi = 1, len(words)
    while lo < hi:  # the longest word prefix that fits
        mid = (lo + hi + 1) // 2
        if len(engine.tokenize(Prompt(raw=" ".join(words[:mid])))) <= tokens:
            lo = mid
        else:
            hi = mid - 1
    return Prompt(raw=" ".join(words[:lo]))


def measure(engine: Engine, shape: model_facts.ModelShape, dtype_bytes: int, *,
            batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
            prompt_tokens: Sequence[int] = DEFAULT_PROMPT_TOKENS,
            decode_tokens: int = DEFAULT_DECODE_TOKENS, seed: int = 0,
            on_timing: Any = None) -> list[Timing]:
    """Time prefill-only calls (score_next) and generation calls on `engine`."""
    rng = random.Random(seed)
    # Warm-up: first calls pay one-time costs (allocations, kernel selection).
    warm = _prompt_of(engine, 16, rng)
    engine.score_next([NextTokenRequest(warm, ("the",))])
    engine.sample([SampleRequest(warm, SamplingParams(n=2, max_tokens=4, ignore_eos=True))])
    timings: list[Timing] = []
    for p in prompt_tokens:
        for b in batch_sizes:
            prompts = [_prompt_of(engine, p, rng) for _ in range(b)]
            lengths = [len(engine.tokenize(pr)) for pr in prompts]
            start = time.perf_counter()
            outputs = engine.score_next([NextTokenRequest(pr, ("the",)) for pr in prompts])
            seconds = time.perf_counter() - start
            computed = total_usage(outputs).prompt_tokens_computed
            flops = sum(cost.prefill_flops(shape, n) for n in lengths)
            moved = cost.prefill_bytes(shape, 1, 0, dtype_bytes) + sum(
                shape.kv_bytes_per_token(dtype_bytes) * 2 * n for n in lengths)
            t = Timing("prefill", b, p, 0, computed, seconds, flops, moved, 1)
            timings.append(t)
            if on_timing:
                on_timing(t)
            # One prompt, b samples: what test-time scaling does.
            params = SamplingParams(n=b, temperature=1.0, max_tokens=decode_tokens,
                                    ignore_eos=True, seed=seed)
            prompt = _prompt_of(engine, p, rng)
            length = len(engine.tokenize(prompt))
            start = time.perf_counter()
            outputs = engine.sample([SampleRequest(prompt, params)])
            seconds = time.perf_counter() - start
            used = total_usage(outputs)
            computed = used.prompt_tokens_computed
            shared = computed < b * length  # the engine prefilled the prompt once
            c = cost.generation_cost(shape, length, b, decode_tokens, share_prefix=shared,
                                     dtype_bytes=dtype_bytes)
            t = Timing("generate", b, p, decode_tokens, computed, seconds, c.flops, c.bytes,
                       1 + decode_tokens)
            timings.append(t)
            if on_timing:
                on_timing(t)
    return timings


def profile_model(spec: str, engine_kind: str = "auto", device: str | None = None, *,
                  batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
                  prompt_tokens: Sequence[int] = DEFAULT_PROMPT_TOKENS,
                  decode_tokens: int = DEFAULT_DECODE_TOKENS, save: bool = True,
                  on_timing: Any = None) -> profiles.EngineProfile:
    """Measure, fit and (by default) store the profile of `spec` on an engine."""
    from ttsc.runtime.engines.registry import make_engine
    from ttsc.runtime.models import load_model

    engine = make_engine(spec, engine=engine_kind, device=device)
    try:
        loaded = getattr(engine, "loaded", None) or load_model(spec, device=device)
        model_facts.cache_model_facts(spec, loaded)
        shape = model_facts.ModelShape.from_config(loaded.model.config)
        dtype_bytes = _dtype_bytes(engine, loaded)
        timings = measure(engine, shape, dtype_bytes, batch_sizes=batch_sizes,
                          prompt_tokens=prompt_tokens, decode_tokens=decode_tokens,
                          on_timing=on_timing)
    finally:
        engine.close()
    profile = profiles.new_profile(spec, getattr(engine, "name", engine_kind), loaded.device.type,
                               dtype_bytes, [t.as_dict() for t in timings])
    if save:
        profiles.save_profile(profile)
    return profile


def _dtype_bytes(engine: Engine, loaded: Any) -> int:
    dtype = getattr(engine, "dtype", None)
    if dtype is None:
        dtype = next(loaded.model.parameters()).dtype
    return int(getattr(dtype, "itemsize", 4))
