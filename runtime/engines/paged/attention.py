"""Attention over the paged KV pool for one forward pass of a mixed batch.

The pool is one tensor [L, NB, bs, 2, Hkv, D] (layer, block, offset, K/V, KV
head, head dim). Per layer a block is one contiguous chunk holding both K and
V, so gathering a sequence's blocks is one plain row copy and storing a token
is one indexed row write at slot `block * bs + offset`; the gathered keys and
values are handed to attention as [B, Hkv, S, D] views without another copy.

Token rows of a batch: first one row per decoding sequence, then the new
tokens of prefilling sequences (chunked prefill), in order.

Decode is cascade attention (Hydragen / FlashInfer cascade): sequences whose
block tables start with the same shared blocks (the N samples of a prompt)
form a group; the group's queries attend to the shared prefix in one matrix
product, reading it once, each sequence attends to its own remaining blocks,
and the two parts merge by log-sum-exp. On CUDA the kernels package's cascade
dispatcher does the same per group. Prefill is SDPA with a bottom-right
causal mask over each sequence's gathered context.

With the C++ CPU kernels (kernels/cpu_ops.py) both read the pool in place,
16 keys at a time from position 0: a group's prefix pass hands each member's
online-softmax state on to its own keys instead of merging two softmaxes,
groups share whole multiples of 16 tokens (`KEY_CHUNK`; the scheduler rounds
them), and prefill runs each token over its keys in the same chunks. A
token's attention is then the same bits whatever else the step holds: which
rows share a group, how a prompt was cut into chunks, what the prefix cache
held (see the batch-invariance notes in engine.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

KEY_CHUNK = 16  # keys the CPU kernels score at a time; group prefixes are multiples of it


@dataclass
class DecodeGroups:
    """Decode rows that share leading blocks; built once per step, used by every layer."""

    group_blocks: torch.Tensor  # [NG, NBp] shared prefix blocks (padded with block 0)
    group_mask: torch.Tensor  # [NG, 1, 1, NBp*bs] additive: 0, or -inf on padding keys
    group_rows: torch.Tensor  # [NG*Gmax] decode row of each member (padding repeats row 0)
    row_slot: torch.Tensor  # [Bd] member index g*Gmax+j of each row (0 if in no group)
    in_group: torch.Tensor  # [Bd, 1, 1] fp32: 1 for rows in a group, 0 for the others
    num_groups: int
    max_members: int  # Gmax
    uniform: bool  # every row is in a group, all groups have Gmax rows, in row order
    members: torch.Tensor  # [NG, Gmax] decode rows of each group, -1 pads (the CPU kernel's form)
    group_lens: torch.Tensor  # [NG] tokens in each shared prefix
    # The same, as lists, for the per-group kernel path.
    groups: list[tuple[list[int], list[int]]]  # (rows, prefix blocks)


@dataclass
class DecodeMeta:
    num_rows: int  # Bd
    own_blocks: torch.Tensor  # [Bd, NB2] each row's blocks after its group prefix (padded)
    own_lens: torch.Tensor  # [Bd] tokens in those blocks
    own_mask: torch.Tensor  # [Bd, 1, 1, NB2*bs] additive: 0, or -inf past the row's length
    groups: DecodeGroups | None


@dataclass
class PrefillMeta:
    num_rows: int  # tokens
    blocks: torch.Tensor  # [Bp, NBmax] each sequence's blocks (padded)
    mask: torch.Tensor | None  # [Bp, 1, Qmax, Kmax] True = may attend; None: single causal
    q_dest: torch.Tensor | None  # [rows] index of each token in the padded [Bp*Qmax] layout
    max_q: int
    ctx_len: int  # Kmax (tokens of context, padded)
    fresh_single: bool  # one sequence, nothing cached: causal SDPA on the new K/V
    starts: torch.Tensor | None = None  # [Bp] position of each sequence's first new token (CPU kernel)
    q_lens: torch.Tensor | None = None  # [Bp] new tokens of each sequence (CPU kernel)


class PagedAttention:
    def __init__(self, layers: list[torch.Tensor], slot_mapping: torch.Tensor, scale: float,
                 decode: DecodeMeta | None, prefill: PrefillMeta | None, use_kernel: bool = False,
                 cpu_ops: Any = None):
        self.layers = layers  # per layer, the pool's [NB, bs, 2, Hkv, D] (views made once)
        self.slot_mapping = slot_mapping  # [T] where each new token's K/V goes
        self.scale = scale
        self.decode = decode
        self.prefill = prefill
        self.use_kernel = use_kernel  # decode through ttsc.kernels' cascade dispatcher
        self.cpu_ops = cpu_ops  # ttsc.kernels.cpu_ops: decode reads the pool in place
        self._kv_new: torch.Tensor | None = None

    def store(self, layer: int, kv: torch.Tensor) -> None:
        """Write K|V [T, 2, Hkv, D] of the new tokens into their slots, in one indexed copy."""
        self.layer_slots(layer).index_copy_(0, self.slot_mapping, kv)
        self.stored(kv)

    def layer_slots(self, layer: int) -> torch.Tensor:
        """One layer of the pool as [NB*bs, 2, Hkv, D] token slots (a view)."""
        return self.layers[layer].flatten(0, 1)

    def stored(self, kv: torch.Tensor) -> None:
        """Note the new tokens' K|V, written to the pool by the caller (prefill reads it)."""
        self._kv_new = kv

    def attend(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        """q [T, H, D] -> attention output [T, H, D]."""
        blocks = self.layers[layer]  # [NB, bs, 2, Hkv, D]
        parts = []
        nd = self.decode.num_rows if self.decode else 0
        if self.decode:
            decode = self._decode_kernel if self.use_kernel else self._decode
            parts.append(decode(q[:nd], blocks))
        if self.prefill:
            parts.append(self._prefill(q[nd:], blocks))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    # -------------------------------------------------------------- decode

    def _decode(self, q: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        meta = self.decode
        bd, h, d = q.shape
        hkv = blocks.shape[3]
        rep = h // hkv
        if self.cpu_ops is not None:  # one kernel reads the pool in place, prefix and own blocks
            g = meta.groups
            if g is None:
                return self.cpu_ops.decode_attention(q, blocks, meta.own_blocks, meta.own_lens,
                                                     _NO_GROUPS, _NO_GROUPS, _NO_GROUPS[:, 0], self.scale)
            return self.cpu_ops.decode_attention(q, blocks, meta.own_blocks, meta.own_lens, g.members,
                                                 g.group_blocks, g.group_lens, self.scale)
        qh = q.view(bd, hkv, rep, d)  # the rep query heads reading one KV head sit together
        # Own blocks: each row's queries against that row's keys.
        o2, lse2 = _attend(qh, *_gather(blocks, meta.own_blocks), meta.own_mask,
                           self.scale)  # [Bd, Hkv, rep, D], [Bd, Hkv, rep]
        g = meta.groups
        if g is not None:
            # Shared prefixes: all Gmax*rep queries of a group per KV head in one product.
            ng, gmax = g.num_groups, g.max_members
            qg = qh if g.uniform else qh.index_select(0, g.group_rows)
            qg = qg.view(ng, gmax, hkv, rep, d).transpose(1, 2).reshape(ng, hkv, gmax * rep, d)
            o1, lse1 = _attend(qg, *_gather(blocks, g.group_blocks), g.group_mask,
                               self.scale)  # [NG, Hkv, Gmax*rep, D], [NG, Hkv, Gmax*rep]
            o1 = o1.view(ng, hkv, gmax, rep, d).transpose(1, 2).reshape(ng * gmax, hkv, rep, d)
            lse1 = lse1.view(ng, hkv, gmax, rep).transpose(1, 2).reshape(ng * gmax, hkv, rep)
            # Log-sum-exp merge: the prefix part weighs e^lse1 / (e^lse1 + e^lse2).
            if g.uniform:
                w1 = torch.sigmoid(lse1 - lse2)
            else:
                o1 = o1.index_select(0, g.row_slot)  # [Bd, Hkv, rep, D]
                w1 = torch.sigmoid(lse1.index_select(0, g.row_slot) - lse2).mul_(g.in_group)
            o2 = torch.lerp(o2, o1.to(o2.dtype), w1.unsqueeze(-1).to(o2.dtype))
        return o2.reshape(bd, h, d).to(q.dtype)

    def _decode_kernel(self, q: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        from ttsc.kernels.cascade_attention import cascade_attention

        meta = self.decode
        bd = q.shape[0]
        _, bs, _, hkv, d = blocks.shape
        own = blocks.index_select(0, meta.own_blocks.flatten()).view(bd, -1, 2, hkv, d)
        own_k, own_v = own[:, :, 0], own[:, :, 1]  # [Bd, S, Hkv, D]
        out = torch.empty_like(q)
        groups = meta.groups.groups if meta.groups else []
        grouped = {r for rows, _ in groups for r in rows}
        singles = [r for r in range(bd) if r not in grouped]
        calls = groups + ([(singles, [])] if singles else [])
        for rows, blocks_ in calls:
            idx = torch.tensor(rows, device=q.device)
            prefix = blocks.index_select(0, torch.tensor(blocks_, dtype=torch.long, device=q.device))
            prefix = prefix.view(-1, 2, hkv, d)
            pk, pv = prefix[:, 0], prefix[:, 1]  # [Lp, Hkv, D], Lp may be 0
            out[idx] = cascade_attention(q[idx], pk, pv, own_k[idx], own_v[idx],
                                         meta.own_lens[idx], self.scale)
        return out

    # ------------------------------------------------------------- prefill

    def _prefill(self, q: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        meta = self.prefill
        if self.cpu_ops is not None:  # each token over its keys in the pool, batch-invariant
            return self.cpu_ops.prefill_attention(q, blocks, meta.blocks, meta.starts, meta.q_lens,
                                                  self.scale)
        t, h, d = q.shape
        if meta.fresh_single:
            nd = self.decode.num_rows if self.decode else 0
            k = self._kv_new[nd:, 0].transpose(0, 1).unsqueeze(0)  # [1, Hkv, T, D]
            v = self._kv_new[nd:, 1].transpose(0, 1).unsqueeze(0)
            o = F.scaled_dot_product_attention(q.transpose(0, 1).unsqueeze(0), k, v, is_causal=True,
                                               scale=self.scale, enable_gqa=True)
            return o[0].transpose(0, 1)
        bp = meta.blocks.shape[0]
        k, v = _gather(blocks, meta.blocks)
        k, v = k[:, :, :meta.ctx_len], v[:, :, :meta.ctx_len]  # [Bp, Hkv, Kmax, D]
        if meta.q_dest is None:  # one sequence: no padding of queries
            qp = q.transpose(0, 1).unsqueeze(0)  # [1, H, T, D]
        else:
            qp = q.new_zeros(bp * meta.max_q, h, d).index_copy_(0, meta.q_dest, q)
            qp = qp.view(bp, meta.max_q, h, d).transpose(1, 2)  # [Bp, H, Qmax, D]
        o = F.scaled_dot_product_attention(qp, k, v, attn_mask=meta.mask, scale=self.scale,
                                           enable_gqa=True)  # [Bp, H, Qmax, D]
        o = o.transpose(1, 2).reshape(bp * meta.max_q, h, d)
        return o if meta.q_dest is None else o[meta.q_dest]


def _gather(blocks: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks [NB, bs, 2, Hkv, D] at ids [R, n] -> K, V [R, Hkv, n*bs, D] (views of one copy)."""
    _, bs, _, hkv, d = blocks.shape
    r, n = ids.shape
    kv = blocks.index_select(0, ids.flatten()).view(r, n * bs, 2, hkv, d)
    return kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
            scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention with its log-sum-exp: q [B, Hkv, M, D], k/v [B, Hkv, S, D], mask [B, 1, 1, S].

    Returns ([B, Hkv, M, D], [B, Hkv, M] fp32). On CPU the fused flash kernel
    (fp32 accumulation, any input dtype, strided keys); elsewhere fp32 products.
    """
    if q.device.type == "cpu":
        return _flash_cpu(q, k, v, attn_mask=mask, scale=scale)
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)).mul_(scale).add_(mask)
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse.unsqueeze(-1))
    return torch.matmul(probs, v.float()), lse


_NO_GROUPS = torch.zeros(0, 1, dtype=torch.long)
_flash_cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
