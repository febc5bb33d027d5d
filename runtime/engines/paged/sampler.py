"""Per-row sampling: temperature, top-k, top-p, greedy, and seeded randomness.

Randomness is counter-based: draw k of the stream seeded s is `uniform(s, k)`,
a SplitMix64 hash. A sample therefore depends only on its seed and on how many
tokens it has generated, never on which other rows share the batch, and no
per-row generator object has to be advanced inside the hot loop.

Each row draws one uniform number and inverts the CDF of its (truncated)
distribution. Reported log-probabilities are log-softmax after temperature
(before top-k/top-p truncation); greedy rows report the raw distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_MASK64 = (1 << 64) - 1
_TOP_P_CANDIDATES = 1024  # top-p first looks at this many tokens; falls back to a full sort


def uniform(seed: int, counter: int) -> float:
    """Draw `counter` of the stream `seed`: a float in [0, 1) with 24 random bits."""
    x = (seed * 0x9E3779B97F4A7C15 + (counter + 1) * 0xD1B54A32D192ED03) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    x ^= x >> 31
    return (x >> 40) / float(1 << 24)  # exactly representable in fp32, < 1


@dataclass(frozen=True)
class RowSettings:
    temperature: float  # 0 = greedy
    top_k: int  # 0 = off
    top_p: float  # 1 = off
    seed: int
    counter: int  # how many tokens this row's sequence generated so far


def sample(logits: torch.Tensor, rows: list[RowSettings]) -> tuple[list[int], list[float]]:
    """logits [R, V] (any float dtype) -> (token id per row, its log-probability)."""
    r, v = logits.shape
    if r == 0:
        return [], []
    dev = logits.device
    inv_t = [1.0 / s.temperature if s.temperature > 0 else 1.0 for s in rows]
    if any(x != 1.0 for x in inv_t):
        # bf16 * fp32 promotes: one pass that upcasts and scales.
        scaled = logits * torch.tensor(inv_t, dtype=torch.float32, device=dev)[:, None]
    else:
        scaled = logits.float()  # on CPU faster than softmax(dtype=float32)
    # Few passes over [R, V]: softmax in fp32, then sums of 256-token chunks for the CDF.
    weights = torch.softmax(scaled, dim=-1)
    chunk_sums = _chunk_sums(weights)  # [R, V/C]
    tokens = torch.empty(r, dtype=torch.long, device=dev)
    greedy_rows, plain_rows, cut_rows = [], [], []
    for i, s in enumerate(rows):
        if s.temperature <= 0:
            greedy_rows.append(i)
        elif (0 < s.top_k < v) or s.top_p < 1.0:
            cut_rows.append(i)
        else:
            plain_rows.append(i)
    if greedy_rows:
        idx = _rows(greedy_rows, r, dev)
        tokens[idx] = logits[idx].argmax(dim=-1)
    if plain_rows:
        idx = _rows(plain_rows, r, dev)
        u = _uniforms([rows[i] for i in plain_rows], dev)
        tokens[idx] = _inverse_cdf_chunked(weights[idx], chunk_sums[idx], u)
    # Rows that truncate go in batches of one candidate width each: a row's draw
    # then never depends on the settings of the rows sampled with it.
    by_width: dict[int, list[int]] = {}
    for i in cut_rows:
        by_width.setdefault(_candidate_width(rows[i], v), []).append(i)
    for width, members in by_width.items():
        idx = _rows(members, r, dev)
        tokens[idx] = _sample_truncated(weights[idx], [rows[i] for i in members], width)
    # log of the fp32 probability: exact to ~1e-7 wherever a token can be drawn at all.
    logprobs = weights.gather(1, tokens[:, None])[:, 0].log()
    return tokens.tolist(), logprobs.tolist()


def _rows(rows: list[int], total: int, device: torch.device) -> torch.Tensor | slice:
    """Index for a subset of rows; a plain slice (no copy) when it is all of them."""
    if len(rows) == total:
        return slice(None)
    return torch.tensor(rows, device=device)


_CHUNK = 256


def _chunk_sums(weights: torch.Tensor) -> torch.Tensor:
    r, v = weights.shape
    pad = -v % _CHUNK
    if pad:
        weights = torch.nn.functional.pad(weights, (0, pad))
    return weights.view(r, -1, _CHUNK).sum(-1)


def _inverse_cdf_chunked(weights: torch.Tensor, chunk_sums: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse CDF in two levels, which chunk then where in it: no cumsum over the vocabulary."""
    v = weights.shape[1]
    chunk = _inverse_cdf(chunk_sums, u)  # [R], never an empty chunk
    mass_before = (chunk_sums.cumsum(-1) - chunk_sums).gather(1, chunk[:, None])[:, 0]
    rest = u * chunk_sums.sum(-1) - mass_before  # how far into the chosen chunk u falls
    cols = chunk[:, None] * _CHUNK + torch.arange(_CHUNK, device=weights.device)[None, :]
    inside = weights.gather(1, cols.clamp(max=v - 1)) * (cols < v)  # [R, C]
    within = (rest / inside.sum(-1)).clamp_(0.0, 1.0 - 2 ** -24)
    return chunk * _CHUNK + _inverse_cdf(inside, within)


def _uniforms(rows: list[RowSettings], device: torch.device) -> torch.Tensor:
    return torch.tensor([uniform(s.seed, s.counter) for s in rows], dtype=torch.float32, device=device)


def _inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index drawn from each row of unnormalized `probs` [R, N] with uniforms u [R]."""
    cdf = probs.cumsum(dim=-1)
    x = (u * cdf[:, -1])[:, None]
    idx = torch.searchsorted(cdf, x, right=True)[:, 0].clamp_(max=probs.shape[1] - 1)
    # Rounding can land on a zero-probability tail entry: take the row's last positive one.
    bad = probs.gather(1, idx[:, None])[:, 0] <= 0
    if bool(bad.any()):
        last_pos = (probs > 0).cumsum(-1).argmax(-1)
        idx = torch.where(bad, last_pos, idx)
    return idx


def _candidate_width(row: RowSettings, v: int) -> int:
    """How many of a row's likeliest tokens its truncation looks at first."""
    if 0 < row.top_k < v:
        return row.top_k
    return min(v, _TOP_P_CANDIDATES)  # top-p alone: falls back to a full sort when short


def _sample_truncated(probs: torch.Tensor, rows: list[RowSettings], width: int) -> torch.Tensor:
    """Top-k then top-p (on the renormalized top-k), as transformers' warpers order them.

    `probs` [R, V] may be unnormalized. Every row looks at its `width` likeliest
    tokens first. Sums along a row are cumulative sums (sequential): a sum
    over a padded row would pair its terms differently for another width.
    """
    probs = probs / probs.sum(-1, keepdim=True)
    r, v = probs.shape
    dev = probs.device
    ks = [s.top_k if 0 < s.top_k < v else v for s in rows]
    ps = torch.tensor([s.top_p for s in rows], dtype=torch.float32, device=dev)
    vals, ids = _top(probs, width)
    k_t = torch.tensor(ks, device=dev)
    keep_k = torch.arange(vals.shape[1], device=dev)[None, :] < k_t[:, None]
    vals = vals * keep_k
    # Without top-k the mass to cover is the whole distribution; when the first
    # `width` candidates do not reach top_p, redo those rows with a full sort.
    no_k = k_t >= v
    kept = vals.cumsum(-1)[:, -1]
    mass = torch.where(no_k, torch.ones_like(ps), kept)
    short = no_k & (ps < 1.0) & (kept < ps * mass) & (vals.shape[1] < v)
    if bool(short.any()):
        vals_full, ids_full = _top(probs, v)
        pad = v - vals.shape[1]
        vals = torch.nn.functional.pad(vals, (0, pad))
        ids = torch.nn.functional.pad(ids, (0, pad))
        vals[short] = vals_full[short]
        ids[short] = ids_full[short]
    cum_before = vals.cumsum(-1) - vals
    keep_p = cum_before < (ps * mass)[:, None]
    keep_p[:, 0] = True
    vals = vals * keep_p
    choice = _inverse_cdf(vals, _uniforms(rows, dev))
    return ids.gather(1, choice[:, None])[:, 0]


def _top(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    if k >= probs.shape[1]:
        return probs.sort(dim=-1, descending=True)
    return probs.topk(k, dim=-1)
