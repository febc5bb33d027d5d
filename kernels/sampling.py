"""Fused sampling: per-row temperature, top-k, top-p and seed in one kernel.

Semantics, shared exactly by the torch reference and the Triton kernel:

- `x = logits / temperature` (float32); a row with temperature <= 0 is greedy:
  the first index of the largest logit, and `x = logits`.
- top-k (0 < k < V) keeps the tokens whose `x` is at least the k-th largest
  (ties at the threshold are all kept); top-p (p < 1) then keeps the smallest
  set of the highest-`x` tokens whose probability mass, renormalized over what
  top-k kept, reaches p (again ties kept). top_k <= 0 or >= V and top_p >= 1
  are off; top_p <= 0 keeps only the most likely token(s).
- The draw is inverse-CDF over the kept tokens in vocabulary order with one
  uniform number derived from `seeds[b]` by a fixed integer hash, so row b's
  token depends only on (logits[b], settings[b], seeds[b]): batching never
  changes a result. Callers vary the seed per step (e.g. seed + position).
- The returned logprob is `log_softmax(x)[token]` over the full vocabulary,
  before top-k/top-p renormalization (the model's probability of the token at
  that temperature; raw log-softmax for greedy rows), as engines report it.

Thresholds are found without sorting: a search over the float's ordered bit
pattern counts (top-k) or sums (top-p) the tokens at or above 16 pivots per
streaming pass over the row, so a 32-bit key takes 8 passes.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ttsc.kernels.dispatch import next_power_of_2, triton_kernel, use_triton

try:
    import triton.language as tl
except ImportError:  # the torch reference works without Triton
    tl = None

PerRow = torch.Tensor | Sequence[float] | float


def sample(logits: torch.Tensor, temperature: PerRow, top_k: PerRow, top_p: PerRow, seeds: PerRow | None,
           *, uniforms: torch.Tensor | None = None,
           backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row: (token_ids [B] int64, logprobs [B] float32).

    `uniforms` [B] in [0, 1), when given, replaces the draws derived from
    `seeds` (for callers with their own counter-based random stream).
    """
    args = _prepare(logits, temperature, top_k, top_p, seeds, uniforms)
    if use_triton(backend, logits.device):
        return _sample_triton(*args)
    return _sample_torch(*args)


def sample_reference(logits: torch.Tensor, temperature: PerRow, top_k: PerRow, top_p: PerRow,
                     seeds: PerRow | None, *, uniforms: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference of `sample` (sorting-based thresholds, same draw)."""
    return _sample_torch(*_prepare(logits, temperature, top_k, top_p, seeds, uniforms))


def uniform_from_seeds(seeds: torch.Tensor) -> torch.Tensor:
    """One uniform float32 in [0, 1) per int64 seed, by a fixed integer hash (lowbias32)."""
    seeds = seeds.to(torch.int64)
    lo = seeds & 0xFFFFFFFF
    hi = (seeds >> 32) & 0xFFFFFFFF
    h = _hash32(_hash32(lo) ^ hi ^ 0x9E3779B9)
    return (h >> 8).to(torch.float32) * (1.0 / (1 << 24))


def _hash32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    # (x * c) mod 2^32 in int64 without overflow: split c into 16-bit halves.
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & 0xFFFFFFFF


def _prepare(logits, temperature, top_k, top_p, seeds, uniforms):
    if logits.dim() != 2 or logits.shape[1] == 0:
        raise ValueError(f"logits must be [B, V] with V > 0, got {tuple(logits.shape)}")
    b, dev = logits.shape[0], logits.device
    temperature = _per_row(temperature, b, torch.float32, dev, "temperature")
    top_k = _per_row(top_k, b, torch.int32, dev, "top_k")
    top_p = _per_row(top_p, b, torch.float32, dev, "top_p")
    if uniforms is None:
        if seeds is None:
            raise ValueError("sample needs seeds or uniforms")
        uniforms = uniform_from_seeds(_per_row(seeds, b, torch.int64, dev, "seeds"))
    else:
        uniforms = _per_row(uniforms, b, torch.float32, dev, "uniforms")
    return logits, temperature, top_k, top_p, uniforms


def _per_row(value: PerRow, b: int, dtype: torch.dtype, device: torch.device, name: str) -> torch.Tensor:
    t = torch.as_tensor(value, device=device).to(dtype)
    if t.dim() == 0:
        t = t.expand(b)
    if t.shape != (b,):
        raise ValueError(f"{name} must have one value per row ({b}), got shape {tuple(t.shape)}")
    return t.contiguous()


def _ordered_keys(x: torch.Tensor) -> torch.Tensor:
    """int64 keys ordered like the float32 values (the sign-magnitude bit trick)."""
    bits = x.view(torch.int32)
    return torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(torch.int64)


# ---------------------------------------------------------------- torch reference


def _sample_torch(logits, temperature, top_k, top_p, uniforms):
    b, v = logits.shape
    is_sampling = temperature > 0
    divisor = torch.where(is_sampling, temperature, torch.ones_like(temperature))
    x = logits.float() / divisor[:, None]
    m = _finite_or_zero(x.max(dim=1).values)
    probs = torch.exp(x - m[:, None])  # unnormalized, at most 1
    log_z = m + torch.log(probs.sum(dim=1))
    keys = _ordered_keys(x)

    sorted_keys, order = keys.sort(dim=1, descending=True)
    k_on = is_sampling & (top_k > 0) & (top_k < v)
    kth = sorted_keys.gather(1, (top_k.clamp(1, v) - 1).long()[:, None])[:, 0]
    threshold = torch.where(k_on, kth, sorted_keys[:, -1])

    p_on = is_sampling & (top_p < 1)
    sorted_probs = probs.gather(1, order) * (sorted_keys >= threshold[:, None])
    cum = sorted_probs.cumsum(dim=1)
    target = top_p * cum[:, -1]
    first = (cum < target[:, None]).sum(dim=1).clamp(max=v - 1)  # first index reaching the mass
    threshold = torch.where(p_on, torch.maximum(threshold, sorted_keys.gather(1, first[:, None])[:, 0]),
                            threshold)

    kept = keys >= threshold[:, None]
    kept_probs = probs * kept
    total = kept_probs.sum(dim=1)
    cdf = kept_probs.cumsum(dim=1)
    idx = torch.arange(v, device=logits.device)
    hits = kept & (cdf > (uniforms * total)[:, None])
    drawn = torch.where(hits, idx, v).min(dim=1).values
    greedy = torch.argmax(x, dim=1)
    last_kept = torch.where(kept_probs > 0, idx, -1).max(dim=1).values  # rounding left no hit
    drawn = torch.where(drawn < v, drawn, torch.where(last_kept >= 0, last_kept, greedy))
    tokens = torch.where(is_sampling, drawn, greedy)
    logprobs = x.gather(1, tokens[:, None])[:, 0] - log_z
    return tokens.to(torch.int64), logprobs


def _finite_or_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


# ---------------------------------------------------------------- Triton

_PIVOTS = 16  # keys tested per threshold-search pass: 32-bit keys take 8 passes, not 32


def _sample_triton(logits, temperature, top_k, top_p, uniforms):
    b, v = logits.shape
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    tokens = torch.empty(b, device=logits.device, dtype=torch.int64)
    logprobs = torch.empty(b, device=logits.device, dtype=torch.float32)
    block_v = min(4096, next_power_of_2(v))
    _sample_kernel[(b,)](logits, temperature, top_k, top_p, uniforms, tokens, logprobs,
                         logits.stride(0), v, BLOCK_V=block_v, SEARCH_BLOCK=min(512, block_v),
                         PIVOTS=_PIVOTS, num_warps=8 if block_v >= 2048 else 4)
    return tokens, logprobs


@triton_kernel
def _sample_kernel(logits_ptr, temp_ptr, top_k_ptr, top_p_ptr, uniform_ptr, token_ptr, logprob_ptr,
                   stride_b, V, BLOCK_V: tl.constexpr, SEARCH_BLOCK: tl.constexpr,
                   PIVOTS: tl.constexpr):
    # One program per row; every pass streams the row in tiles (the threshold
    # searches in smaller SEARCH_BLOCK tiles, as they hold SEARCH_BLOCK x PIVOTS).
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_b
    temperature = tl.load(temp_ptr + row)
    is_sampling = temperature > 0
    divisor = tl.where(is_sampling, temperature, 1.0)
    offs = tl.arange(0, BLOCK_V)
    search_offs = tl.arange(0, SEARCH_BLOCK)
    steps = (tl.arange(0, PIVOTS) + 1).to(tl.int64)

    # Pass 1: max (first argmax), min and the softmax normalizer.
    m = tl.full((), float("-inf"), tl.float32)
    x_min = tl.full((), float("inf"), tl.float32)
    s = tl.zeros((), tl.float32)
    best = tl.zeros((), tl.int32)
    for v0 in range(0, V, BLOCK_V):
        idx = v0 + offs
        ok = idx < V
        x = tl.load(base + idx, mask=ok, other=float("-inf")).to(tl.float32) / divisor
        tile_max = tl.max(x, 0)
        tile_arg = tl.min(tl.where(x == tile_max, idx, V), 0)
        best = tl.where(tile_max > m, tile_arg, best)
        m_new = tl.maximum(m, tile_max)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a fully masked tile
        s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(x - m_safe), 0)
        m = m_new
        x_min = tl.minimum(x_min, tl.min(tl.where(ok, x, float("inf")), 0))
    m_safe = tl.where(m == float("-inf"), 0.0, m)

    token = best
    if is_sampling:
        max_bits = m.to(tl.int32, bitcast=True)
        max_key = tl.where(max_bits >= 0, max_bits, max_bits ^ 0x7FFFFFFF).to(tl.int64)
        min_bits = x_min.to(tl.int32, bitcast=True)
        threshold = tl.where(min_bits >= 0, min_bits, min_bits ^ 0x7FFFFFFF).to(tl.int64)

        # top-k: the largest key with at least k tokens at or above it. Each
        # pass tests PIVOTS keys spread over [lo, hi], shrinking it PIVOTS+1-fold.
        k = tl.load(top_k_ptr + row)
        if (k > 0) & (k < V):
            lo = threshold
            hi = max_key
            while lo < hi:
                pivots = tl.minimum(lo + ((hi - lo + 1) * steps + PIVOTS) // (PIVOTS + 1), hi)
                counts = tl.zeros([PIVOTS], tl.int32)
                for v0 in range(0, V, SEARCH_BLOCK):
                    idx = v0 + search_offs
                    ok = idx < V
                    bits = (tl.load(base + idx, mask=ok, other=0.0).to(tl.float32) / divisor).to(
                        tl.int32, bitcast=True)
                    keys = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
                    above = (keys[:, None] >= pivots[None, :]) & ok[:, None]
                    counts += tl.sum(above.to(tl.int32), 0)
                take = counts >= k
                lo = tl.max(tl.where(take, pivots, lo), 0)
                hi = tl.min(tl.where(take, hi, pivots - 1), 0)
            threshold = lo

        # Mass of what top-k kept.
        mass = tl.zeros((), tl.float32)
        for v0 in range(0, V, BLOCK_V):
            idx = v0 + offs
            ok = idx < V
            x = tl.load(base + idx, mask=ok, other=float("-inf")).to(tl.float32) / divisor
            bits = x.to(tl.int32, bitcast=True)
            keys = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
            mass += tl.sum(tl.where(ok & (keys >= threshold), tl.exp(x - m_safe), 0.0), 0)

        # top-p: the largest key whose tokens at or above it hold p of that mass.
        p = tl.load(top_p_ptr + row)
        if p < 1:
            target = p * mass
            lo = threshold
            hi = max_key
            while lo < hi:
                pivots = tl.minimum(lo + ((hi - lo + 1) * steps + PIVOTS) // (PIVOTS + 1), hi)
                masses = tl.zeros([PIVOTS], tl.float32)
                for v0 in range(0, V, SEARCH_BLOCK):
                    idx = v0 + search_offs
                    ok = idx < V
                    x = tl.load(base + idx, mask=ok, other=float("-inf")).to(tl.float32) / divisor
                    bits = x.to(tl.int32, bitcast=True)
                    keys = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
                    probs = tl.where(ok, tl.exp(x - m_safe), 0.0)
                    masses += tl.sum(tl.where(keys[:, None] >= pivots[None, :], probs[:, None], 0.0), 0)
                take = masses >= target
                new_lo = tl.max(tl.where(take, pivots, lo), 0)
                # Masses fall as pivots rise, so the smallest taken one is new_lo's.
                mass = tl.where(new_lo > lo, tl.min(tl.where(take, masses, float("inf")), 0), mass)
                lo = new_lo
                hi = tl.min(tl.where(take, hi, pivots - 1), 0)
            threshold = lo

        # Inverse CDF over the kept tokens, in vocabulary order.
        goal = tl.load(uniform_ptr + row) * mass
        running = tl.zeros((), tl.float32)
        drawn = tl.full((), -1, tl.int32)
        last_kept = tl.full((), -1, tl.int32)
        for v0 in range(0, V, BLOCK_V):
            idx = v0 + offs
            ok = idx < V
            x = tl.load(base + idx, mask=ok, other=float("-inf")).to(tl.float32) / divisor
            bits = x.to(tl.int32, bitcast=True)
            keys = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
            kept = ok & (keys >= threshold)
            probs = tl.where(kept, tl.exp(x - m_safe), 0.0)
            cdf = running + tl.cumsum(probs, 0)
            first = tl.min(tl.where(kept & (cdf > goal), idx, V), 0)
            drawn = tl.where((drawn < 0) & (first < V), first, drawn)
            last_kept = tl.maximum(last_kept, tl.max(tl.where(probs > 0, idx, -1), 0))
            running += tl.sum(probs, 0)
        # Rounding can leave the goal just above the last partial sum: take the
        # last kept token then (and the argmax for a row without any mass).
        token = tl.where(drawn >= 0, drawn, tl.where(last_kept >= 0, last_kept, best))

    x_token = tl.load(base + token).to(tl.float32) / divisor
    tl.store(token_ptr + row, token.to(tl.int64))
    tl.store(logprob_ptr + row, x_token - (m + tl.log(s)))
