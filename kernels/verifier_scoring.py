"""Verifier scoring: log-probabilities of a few token ids per row.

A verifier reads P(Yes) from the next-token distribution: it needs
`log_softmax(logits)[ids]` for two or three ids out of a vocabulary of tens of
thousands. The kernel streams each row once with an online log-sum-exp (running
max and rescaled sum) and gathers the few logits; no softmax is materialized.
"""

from __future__ import annotations

import torch

from ttsc.kernels.dispatch import next_power_of_2, triton_kernel, use_triton

try:
    import triton.language as tl
except ImportError:  # the torch reference works without Triton
    tl = None


def choice_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """log_softmax(logits [B, V]) at token_ids [B, C] -> [B, C] float32."""
    _check(logits, token_ids)
    if use_triton(backend, logits.device):
        return _choice_logprobs_triton(logits, token_ids.to(logits.device))
    return choice_logprobs_reference(logits, token_ids)


def choice_logprobs_reference(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Torch reference: logits at the ids minus the row's log-sum-exp."""
    _check(logits, token_ids)
    x = logits.float()
    return x.gather(1, token_ids.to(logits.device).long()) - torch.logsumexp(x, dim=1, keepdim=True)


def _check(logits: torch.Tensor, token_ids: torch.Tensor) -> None:
    if logits.dim() != 2 or token_ids.dim() != 2 or token_ids.shape[0] != logits.shape[0]:
        raise ValueError(f"expected logits [B, V] and token_ids [B, C], got {tuple(logits.shape)} "
                         f"and {tuple(token_ids.shape)}")
    if token_ids.numel() and (int(token_ids.min()) < 0 or int(token_ids.max()) >= logits.shape[1]):
        raise ValueError(f"token ids must lie in [0, {logits.shape[1]})")


def _choice_logprobs_triton(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    b, v = logits.shape
    c = token_ids.shape[1]
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    ids = token_ids.to(torch.int64).contiguous()
    out = torch.empty((b, c), device=logits.device, dtype=torch.float32)
    if b == 0 or c == 0:
        return out
    block_v = min(4096, next_power_of_2(v))
    _choice_logprobs_kernel[(b,)](logits, ids, out, logits.stride(0), ids.stride(0), out.stride(0), v, c,
                                  BLOCK_V=block_v, BLOCK_C=max(2, next_power_of_2(c)),
                                  num_warps=8 if block_v >= 2048 else 4)
    return out


@triton_kernel
def _choice_logprobs_kernel(logits_ptr, ids_ptr, out_ptr, stride_lb, stride_ib, stride_ob, V, C,
                            BLOCK_V: tl.constexpr, BLOCK_C: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_lb
    offs = tl.arange(0, BLOCK_V)
    m = tl.full((), float("-inf"), tl.float32)
    s = tl.zeros((), tl.float32)
    for v0 in range(0, V, BLOCK_V):
        x = tl.load(base + v0 + offs, mask=v0 + offs < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, 0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a fully masked tile so far
        s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(x - m_safe), 0)
        m = m_new
    lse = m + tl.log(s)

    offs_c = tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    ids = tl.load(ids_ptr + row * stride_ib + offs_c, mask=c_ok, other=0)
    chosen = tl.load(base + ids, mask=c_ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_ob + offs_c, chosen - lse, mask=c_ok)
