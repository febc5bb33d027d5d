"""Shared-prefix (cascade) decode attention.

N sequences decode one token each. They all share a prompt prefix (the KV of
the N samples of one prompt) and each has its own suffix (what it generated).
Attention splits into two parts merged by log-sum-exp, as Hydragen and
FlashInfer's cascade attention do:

  prefix: the N x G queries of one KV head against the shared prefix KV form
          one matrix-matrix product, so the prefix is read once for the batch
          instead of N times;
  suffix: each sequence against its own (padded) suffix KV;
  merge:  out = (e^lse_p * o_p + e^lse_s * o_s) / (e^lse_p + e^lse_s).

Shapes (G = Hq / Hkv query heads per KV head, grouped-query attention):
  q [N, Hq, D], prefix_k/v [Lp, Hkv, D], suffix_k/v [N, Ls_max, Hkv, D],
  suffix_lens [N] (0 = empty suffix) -> out [N, Hq, D] in q's dtype.
A sequence with no key at all (Lp = 0 and an empty suffix) gets zeros.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ttsc.kernels.dispatch import next_power_of_2, triton_kernel, use_triton

try:
    import triton.language as tl
except ImportError:  # the torch reference works without Triton
    tl = None


def cascade_attention(q: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor,
                      suffix_k: torch.Tensor, suffix_v: torch.Tensor, suffix_lens: torch.Tensor,
                      scale: float | None = None, *, backend: str = "auto") -> torch.Tensor:
    """Decode attention of N queries over a shared prefix plus their own suffixes."""
    _check_shapes(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if use_triton(backend, q.device):
        return cascade_attention_triton(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens, scale)
    return cascade_attention_reference(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens, scale)


# ---------------------------------------------------------------- torch reference


def cascade_attention_reference(q: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor,
                                suffix_k: torch.Tensor, suffix_v: torch.Tensor,
                                suffix_lens: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Torch cascade: prefix as one batched matmul over all N queries, suffix per sequence."""
    _check_shapes(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    o_p, lse_p = prefix_attention_reference(q, prefix_k, prefix_v, scale)
    o_s, lse_s = suffix_attention_reference(q, suffix_k, suffix_v, suffix_lens, scale)
    out, _ = merge_attention_states(o_p, lse_p, o_s, lse_s)
    return out.to(q.dtype)


def prefix_attention_reference(q: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor,
                               scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of all N queries over the shared prefix: (out [N, Hq, D] fp32, lse [N, Hq])."""
    n, hq, d = q.shape
    lp, hkv, _ = prefix_k.shape
    g = hq // hkv
    # [Hkv, N*G, D]: every query that reads KV head h, stacked into one matrix.
    qh = q.float().reshape(n, hkv, g, d).permute(1, 0, 2, 3).reshape(hkv, n * g, d)
    scores = torch.bmm(qh, prefix_k.float().permute(1, 2, 0)) * scale  # [Hkv, N*G, Lp]
    lse = torch.logsumexp(scores, dim=-1)  # -inf when Lp == 0
    probs = torch.exp(scores - _finite_or_zero(lse)[..., None])
    out = torch.bmm(probs, prefix_v.float().permute(1, 0, 2))  # [Hkv, N*G, D]
    out = out.reshape(hkv, n, g, d).permute(1, 0, 2, 3).reshape(n, hq, d)
    return out, lse.reshape(hkv, n, g).permute(1, 0, 2).reshape(n, hq)


def suffix_attention_reference(q: torch.Tensor, suffix_k: torch.Tensor, suffix_v: torch.Tensor,
                               suffix_lens: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of each query over its own suffix: (out [N, Hq, D] fp32, lse [N, Hq])."""
    n, hq, d = q.shape
    _, ls, hkv, _ = suffix_k.shape
    g = hq // hkv
    qh = q.float().reshape(n, hkv, g, d)
    scores = torch.einsum("nhgd,nlhd->nhgl", qh, suffix_k.float()) * scale  # [N, Hkv, G, Ls]
    valid = torch.arange(ls, device=q.device)[None, :] < suffix_lens.to(q.device)[:, None]  # [N, Ls]
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # -inf for an empty suffix
    probs = torch.exp(scores - _finite_or_zero(lse)[..., None])
    out = torch.einsum("nhgl,nlhd->nhgd", probs, suffix_v.float())
    return out.reshape(n, hq, d), lse.reshape(n, hq)


def merge_attention_states(o_a: torch.Tensor, lse_a: torch.Tensor, o_b: torch.Tensor,
                           lse_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over the union of two key sets from each set's (out, lse)."""
    lse = torch.logaddexp(lse_a, lse_b)
    base = _finite_or_zero(lse)  # both sets empty: weights e^-inf = 0, out 0
    w_a = torch.exp(lse_a - base)[..., None]
    w_b = torch.exp(lse_b - base)[..., None]
    return o_a.float() * w_a + o_b.float() * w_b, lse


def attention_reference_per_sequence(q: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor,
                                     suffix_k: torch.Tensor, suffix_v: torch.Tensor,
                                     suffix_lens: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Ground truth: each sequence attends (SDPA) to its own concat(prefix, suffix)."""
    _check_shapes(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    n, hq, d = q.shape
    hkv = prefix_k.shape[1]
    out = torch.zeros_like(q)
    for i, length in enumerate(suffix_lens.long().tolist()):
        k = torch.cat([prefix_k, suffix_k[i, :length]]).transpose(0, 1)  # [Hkv, L, D]
        v = torch.cat([prefix_v, suffix_v[i, :length]]).transpose(0, 1)
        if k.shape[1] == 0:
            continue  # no key to attend to: zeros, as the cascade defines it
        # [Hq, 1, D] queries against [Hq, L, D] keys (each KV head repeated for its group).
        g = hq // hkv
        o = F.scaled_dot_product_attention(q[i].float()[:, None, :], k.float().repeat_interleave(g, 0),
                                           v.float().repeat_interleave(g, 0), scale=scale)
        out[i] = o[:, 0, :].to(q.dtype)
    return out


def _finite_or_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def _check_shapes(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens) -> None:
    if q.dim() != 3 or prefix_k.dim() != 3 or suffix_k.dim() != 4:
        raise ValueError("expected q [N, Hq, D], prefix_k [Lp, Hkv, D], suffix_k [N, Ls, Hkv, D]; got "
                         f"{tuple(q.shape)}, {tuple(prefix_k.shape)}, {tuple(suffix_k.shape)}")
    n, hq, d = q.shape
    lp, hkv, dk = prefix_k.shape
    if prefix_v.shape != prefix_k.shape or suffix_v.shape != suffix_k.shape:
        raise ValueError("keys and values must have the same shape")
    if dk != d or suffix_k.shape[0] != n or suffix_k.shape[2] != hkv or suffix_k.shape[3] != d:
        raise ValueError(f"shapes disagree: q {tuple(q.shape)}, prefix_k {tuple(prefix_k.shape)}, "
                         f"suffix_k {tuple(suffix_k.shape)}")
    if hkv == 0 or hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of KV heads ({hkv})")
    if suffix_lens.shape != (n,):
        raise ValueError(f"suffix_lens must have shape [{n}], got {tuple(suffix_lens.shape)}")


# ---------------------------------------------------------------- Triton

_LOG2E = 1.4426950408889634
# Each prefix split writes a [BLOCK_M, D] fp32 partial (32 KiB at 128 x 64) that
# the merge reads back; at 512+ keys (128+ KiB of fp16 K and V) that traffic
# stays a small fraction of the prefix read it pays for.
_MIN_KEYS_PER_SPLIT = 512


def cascade_attention_triton(q: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor,
                             suffix_k: torch.Tensor, suffix_v: torch.Tensor, suffix_lens: torch.Tensor,
                             scale: float) -> torch.Tensor:
    """Two launches: split prefix attention over all N*G rows, then suffix + merge per sequence."""
    n, hq, d = q.shape
    lp, hkv, _ = prefix_k.shape
    ls_max = suffix_k.shape[1]
    g = hq // hkv
    rows = n * g
    block_d = max(16, next_power_of_2(d))
    block_m = min(128 if d <= 64 else 64, max(16, next_power_of_2(rows)))
    block_n = 64 if d <= 64 else 32
    num_m_blocks = triton_cdiv(rows, block_m)
    num_splits, keys_per_split = _prefix_splits(lp, num_m_blocks * hkv, block_n, q.device)
    dot_precision = "ieee" if q.dtype == torch.float32 else "tf32"
    scale_log2 = scale * _LOG2E  # softmax in base 2: exp2 is the fast path on GPUs

    o_part = torch.empty((num_splits, n, hq, d), device=q.device, dtype=torch.float32)
    lse_part = torch.empty((num_splits, n, hq), device=q.device, dtype=torch.float32)
    if num_splits:
        _prefix_attention_kernel[(num_m_blocks, hkv, num_splits)](
            q, prefix_k, prefix_v, o_part, lse_part,
            *q.stride(), *prefix_k.stride(), *prefix_v.stride(),
            *o_part.stride(), *lse_part.stride(),
            rows, lp, keys_per_split, scale_log2,
            G=g, D=d, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
            DOT_PRECISION=dot_precision, num_warps=4 if block_m <= 64 else 8, num_stages=2)

    out = torch.empty_like(q)
    lens = suffix_lens.to(device=q.device, dtype=torch.int32).contiguous()
    block_s = 32 if ls_max <= 32 else 64
    _suffix_merge_kernel[(n, hkv)](
        q, suffix_k, suffix_v, lens, o_part, lse_part, out,
        *q.stride(), *suffix_k.stride(), *suffix_v.stride(),
        *o_part.stride(), *lse_part.stride(), *out.stride(),
        num_splits, scale_log2,
        G=g, D=d, BLOCK_G=max(16, next_power_of_2(g)), BLOCK_N=block_s, BLOCK_D=block_d,
        DOT_PRECISION=dot_precision, num_warps=4, num_stages=2)
    return out


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _prefix_splits(lp: int, programs_per_split: int, block_n: int, device: torch.device) -> tuple[int, int]:
    """Split the prefix so the grid fills the GPU (flash-decoding), keeping chunks large."""
    if lp == 0:
        return 0, 0
    target = 2 * _num_sms(device)
    splits = min(max(1, triton_cdiv(target, programs_per_split)), max(1, lp // _MIN_KEYS_PER_SPLIT))
    keys = triton_cdiv(triton_cdiv(lp, splits), block_n) * block_n
    return triton_cdiv(lp, keys), keys


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return 4  # interpreted on CPU: a few splits, so the split-merge path is exercised


@functools.cache
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@triton_kernel
def _prefix_attention_kernel(
        q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr,
        stride_qn, stride_qh, stride_qd,
        stride_kl, stride_kh, stride_kd,
        stride_vl, stride_vh, stride_vd,
        stride_os, stride_on, stride_oh, stride_od,
        stride_ls, stride_ln, stride_lh,
        rows, prefix_len, keys_per_split, scale_log2,
        G: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # One program: BLOCK_M query rows (sequence, head-in-group) of KV head `h`
    # against one chunk of the shared prefix. Rows are the N*G queries that read
    # this KV head, so the prefix tile feeds a real matrix product.
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    split = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < rows
    d_ok = offs_d < D
    seq = offs_m // G
    head = h * G + offs_m % G
    q = tl.load(q_ptr + seq[:, None] * stride_qn + head[:, None] * stride_qh + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    start = split * keys_per_split
    end = tl.minimum(start + keys_per_split, prefix_len)
    for key0 in range(start, end, BLOCK_N):
        offs_n = key0 + tl.arange(0, BLOCK_N)
        key_ok = offs_n < end
        kv_mask = key_ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + offs_n[:, None] * stride_kl + h * stride_kh + offs_d[None, :] * stride_kd,
                    mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + offs_n[:, None] * stride_vl + h * stride_vh + offs_d[None, :] * stride_vd,
                    mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
        s = tl.where(key_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    out = acc / l_i[:, None]
    lse = (m_i + tl.log2(l_i)) * 0.6931471805599453  # back to natural log
    tl.store(o_ptr + split * stride_os + seq[:, None] * stride_on + head[:, None] * stride_oh
             + offs_d[None, :] * stride_od, out, mask=row_ok[:, None] & d_ok[None, :])
    tl.store(lse_ptr + split * stride_ls + seq * stride_ln + head * stride_lh, lse, mask=row_ok)


@triton_kernel
def _suffix_merge_kernel(
        q_ptr, k_ptr, v_ptr, lens_ptr, o_part_ptr, lse_part_ptr, out_ptr,
        stride_qn, stride_qh, stride_qd,
        stride_kn, stride_kl, stride_kh, stride_kd,
        stride_vn, stride_vl, stride_vh, stride_vd,
        stride_ps, stride_pn, stride_ph, stride_pd,
        stride_ls, stride_ln, stride_lh,
        stride_on, stride_oh, stride_od,
        num_splits, scale_log2,
        G: tl.constexpr, D: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # One program: the G query heads of sequence `n` that share KV head `h`.
    # The online-softmax state starts from the prefix partials (a log-sum-exp
    # merge of the splits) and then runs over this sequence's own suffix.
    n = tl.program_id(0)
    h = tl.program_id(1)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    g_ok = offs_g < G
    d_ok = offs_d < D
    head = h * G + offs_g
    gd_mask = g_ok[:, None] & d_ok[None, :]

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for split in range(0, num_splits):
        lse = tl.load(lse_part_ptr + split * stride_ls + n * stride_ln + head * stride_lh,
                      mask=g_ok, other=0.0) * 1.4426950408889634
        o = tl.load(o_part_ptr + split * stride_ps + n * stride_pn + head[:, None] * stride_ph
                    + offs_d[None, :] * stride_pd, mask=gd_mask, other=0.0)
        m_new = tl.maximum(m_i, lse)
        alpha = tl.exp2(m_i - m_new)
        w = tl.exp2(lse - m_new)
        l_i = l_i * alpha + w
        acc = acc * alpha[:, None] + o * w[:, None]
        m_i = m_new

    q = tl.load(q_ptr + n * stride_qn + head[:, None] * stride_qh + offs_d[None, :] * stride_qd,
                mask=gd_mask, other=0.0)
    suffix_len = tl.load(lens_ptr + n)
    for key0 in range(0, suffix_len, BLOCK_N):
        offs_n = key0 + tl.arange(0, BLOCK_N)
        key_ok = offs_n < suffix_len
        kv_mask = key_ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + n * stride_kn + offs_n[:, None] * stride_kl + h * stride_kh
                    + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + n * stride_vn + offs_n[:, None] * stride_vl + h * stride_vh
                    + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
        s = tl.where(key_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # no key at all: zeros
    tl.store(out_ptr + n * stride_on + head[:, None] * stride_oh + offs_d[None, :] * stride_od,
             out.to(out_ptr.dtype.element_ty), mask=gd_mask)
