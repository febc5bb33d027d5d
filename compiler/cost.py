"""The cost model: FLOPs, memory traffic, KV bytes and latency of LLM calls.

Per model, from its shape (`model_facts.ModelShape`), Kinetics-style
(Sadhukhan et al., 2025): a token's cost is its FLOPs plus `intensity` x its
memory traffic, where intensity is the device's FLOP/s over its bytes/s.
Decode is dominated by the traffic term: weights are read once per step for
the whole batch, and each sample's KV cache once per token; a prefix shared
by the samples of a request is read once per step (cascade attention), not
once per sample. Seconds come from an engine profile (`profiles`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from ttsc.compiler.model_facts import ModelShape
from ttsc.compiler.profiles import EngineProfile


# ------------------------------------------------------------------ FLOPs and bytes


def prefill_flops(shape: ModelShape, new_tokens: int, cached_tokens: int = 0) -> float:
    """FLOPs to prefill `new_tokens` after `cached_tokens` already in the KV cache.

    2 FLOPs per multiply-add; attention is causal (token t attends to
    cached + t positions, QK^T and PV); logits only for the last position.
    """
    if new_tokens <= 0:
        return 0.0
    t = new_tokens
    dense = 2 * shape.body_matmul_params * t + 2 * shape.embedding_params
    attended = cached_tokens * t + t * (t + 1) / 2
    attention = 4 * shape.num_layers * shape.num_heads * shape.head_dim * attended
    return float(dense + attention)


def decode_flops(shape: ModelShape, context: int) -> float:
    """FLOPs for one generated token at `context` tokens of history."""
    dense = 2 * (shape.body_matmul_params + shape.embedding_params)
    attention = 4 * shape.num_layers * shape.num_heads * shape.head_dim * (context + 1)
    return float(dense + attention)


def prefill_bytes(shape: ModelShape, new_tokens: int, cached_tokens: int = 0,
                  dtype_bytes: float = 2) -> float:
    """Memory traffic of one prefill pass: weights once, KV written and read."""
    if new_tokens <= 0:
        return 0.0
    kv = shape.kv_bytes_per_token(dtype_bytes)
    return shape.weight_bytes(dtype_bytes) + kv * (2 * new_tokens + cached_tokens)


def decode_step_bytes(shape: ModelShape, contexts: Sequence[int], shared_prefix: int = 0,
                      dtype_bytes: float = 2) -> float:
    """Memory traffic of one decode step for a batch of rows.

    Weights are read once for the batch. Row i reads its KV (contexts[i]
    tokens); `shared_prefix` tokens common to all rows are read once, not once
    per row (cascade / shared-prefix attention).
    """
    if not contexts:
        return 0.0
    kv = shape.kv_bytes_per_token(dtype_bytes)
    shared = min(shared_prefix, min(contexts))
    reads = shared + sum(c - shared for c in contexts) if shared else sum(contexts)
    return shape.weight_bytes(dtype_bytes) + kv * (reads + len(contexts))


def kinetics_cost(flops: float, bytes_moved: float, intensity: float) -> float:
    """Kinetics' effective FLOPs: compute plus intensity x memory traffic."""
    return flops + intensity * bytes_moved


@dataclass
class CallCost:
    """Cost of one request: a prompt and `n` samples of up to `gen_tokens` each."""

    prefill_tokens: int  # prompt tokens computed
    decode_tokens: int  # tokens generated (all samples)
    flops: float
    bytes: float
    kv_peak_bytes: float  # KV held at the end of generation
    decode_steps: int


def generation_cost(shape: ModelShape, prompt_tokens: int, n: int, gen_tokens: int, *,
                    share_prefix: bool = True, cached_tokens: int = 0,
                    dtype_bytes: float = 2) -> CallCost:
    """Cost of sampling `n` completions of `gen_tokens` tokens from one prompt.

    With `share_prefix` the prompt is prefilled once and its KV shared by the
    n samples (read once per step); without, each sample prefills and reads
    its own copy, as an engine without a prefix cache does. `cached_tokens`
    of the prompt are already in a prefix cache (computed by an earlier call).
    """
    cached = min(cached_tokens, prompt_tokens)
    new = prompt_tokens - cached
    copies = 1 if share_prefix else n
    flops = copies * prefill_flops(shape, new, cached)
    moved = copies * prefill_bytes(shape, new, cached, dtype_bytes)
    for step in range(gen_tokens):
        context = prompt_tokens + step
        flops += n * decode_flops(shape, context)
        moved += decode_step_bytes(shape, [context] * n,
                                   prompt_tokens if share_prefix else 0, dtype_bytes)
    kv = shape.kv_bytes_per_token(dtype_bytes)
    held = (prompt_tokens if share_prefix else n * prompt_tokens) + n * gen_tokens
    return CallCost(copies * new, n * gen_tokens, flops, moved, kv * held, gen_tokens)


# ------------------------------------------------------------------ seconds


def stage_seconds(shape: ModelShape, profile: EngineProfile, *,
                  prefills: Sequence[tuple[int, int]] = (), rows: int = 0, steps: int = 0,
                  shared_context: int = 0, row_context: int = 0) -> float:
    """Predicted wall time of one engine batch.

    `prefills` are (new, cached) token counts of each prompt prefilled, all in
    one pass; then `steps` decode steps for `rows` rows, each attending to
    `shared_context` tokens held once for all rows plus its own `row_context`
    and what it generated so far.
    """
    dtype = profile.dtype_bytes
    seconds = 0.0
    prefills = [(n, c) for n, c in prefills if n > 0]
    if prefills:
        flops = sum(prefill_flops(shape, n, c) for n, c in prefills)
        # Weights are read once for the whole pass.
        moved = prefill_bytes(shape, 1, 0, dtype) - shape.kv_bytes_per_token(dtype) * 2 + sum(
            shape.kv_bytes_per_token(dtype) * (2 * n + c) for n, c in prefills)
        seconds += profile.pass_seconds(flops, moved)
    if rows > 0 and steps > 0:
        mid = row_context + steps / 2  # a row's own context, averaged over the steps
        flops = steps * rows * decode_flops(shape, int(shared_context + mid))
        kv = shape.kv_bytes_per_token(dtype)
        moved = steps * (shape.weight_bytes(dtype) + kv * (shared_context + rows * (mid + 1)))
        seconds += profile.pass_seconds(flops, moved, passes=steps)
    return seconds


@dataclass(frozen=True)
class LatencyCoefficients:
    """A linear latency model for the allocator: seconds per prompt token
    computed, per forward pass, and per generated token (one row, one step)."""

    prefill_token_s: float
    pass_s: float
    decode_token_s: float


def latency_coefficients(shape: ModelShape, profile: EngineProfile, context: int) -> LatencyCoefficients:
    """Coefficients at a typical context length (tokens a row attends to)."""
    dtype = profile.dtype_bytes
    kv = shape.kv_bytes_per_token(dtype)
    attn = 4 * shape.num_layers * shape.num_heads * shape.head_dim
    prefill = (2 * shape.body_matmul_params + attn * context / 2) / profile.peak_flops \
        + 2 * kv / profile.bandwidth
    per_pass = shape.weight_bytes(dtype) / profile.bandwidth + profile.overhead_s
    decode = (2 * (shape.body_matmul_params + shape.embedding_params) + attn * context) \
        / profile.peak_flops + kv * (context + 1) / profile.bandwidth
    return LatencyCoefficients(prefill, per_pass, decode)


# ------------------------------------------------------------------ first-finish search


@dataclass(frozen=True)
class FirstFinish:
    """What generate(..., n, first=k) is expected to cost and keep."""

    generated: float  # tokens generated by all n samples until the engine stops them
    kept_length: float  # mean tokens of the k samples kept


def first_finish_tokens(n: int, k: int, expected: float, cap: int) -> FirstFinish:
    """Expected tokens of first-finish search: n samples decode in lockstep
    and the engine stops the rest once k have finished, so the i-th to finish
    is the i-th order statistic X_(i) of the n lengths. Lengths are taken as
    exponential (the prior's shape), with the mean that makes their mean cut
    at `cap` equal `expected` (what the length model predicts for one sample).
    Generated: the k first lengths, plus the k-th for each of the n - k
    stopped samples; each cut at `cap`. E[min(X_(i), cap)] is the integral
    over [0, cap] of P(X_(i) > x) = P(fewer than i of n done by x)."""
    k = max(1, min(k, n))
    if cap <= 0 or expected <= 0:
        return FirstFinish(0.0, 0.0)
    if expected >= cap * 0.999:  # every sample runs to its cap
        return FirstFinish(float(n * cap), float(cap))
    mean = _exponential_mean(expected, cap)
    upper = min(float(cap), 40 * mean)  # beyond, every sample has finished
    steps = min(4000, max(256, math.ceil(upper / (mean / n / 20))))
    dx = upper / steps
    order = [0.0] * k  # E[min(X_(i), cap)] for i = 1..k, by the trapezoid rule
    for j in range(steps + 1):
        f = 1.0 - math.exp(-j * dx / mean)
        weight = dx / 2 if j in (0, steps) else dx
        term, below = (1 - f) ** n, 0.0  # P(exactly m done), from m = 0
        for i in range(k):
            below += term
            order[i] += weight * below
            term = term * (n - i) / (i + 1) * f / (1 - f) if f < 1 else 0.0
    return FirstFinish(sum(order) + (n - k) * order[-1], sum(order) / k)


def _exponential_mean(expected: float, cap: int) -> float:
    """The mean mu of an exponential whose mean cut at `cap`,
    mu (1 - exp(-cap / mu)), equals `expected` (< cap); by bisection."""
    lo, hi = expected, expected
    while hi * (1 - math.exp(-cap / hi)) < expected:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        if mid * (1 - math.exp(-cap / mid)) < expected:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
