"""Attention over the paged KV pool for one forward pass of a mixed batch.

The pool is one tensor [L, 2, Hkv, NB, bs, D] (layer, K/V, KV head, block,
offset, head dim): per layer and head, a block's KV is contiguous, a token's
slot is `block * bs + offset`, and gathering blocks along dim 1 gives the
[Hkv, B, S, D] layout batched matrix products want without another copy.

Token rows of a batch: first one row per decoding sequence, then the new
tokens of prefilling sequences (chunked prefill), in order.

Decode is cascade attention (Hydragen / FlashInfer cascade): sequences whose
block tables start with the same shared blocks (the N samples of a prompt)
form a group; the group's queries attend to the shared prefix in one matrix
product, reading it once, each sequence attends to its own remaining blocks,
and the two parts merge by log-sum-exp. On CUDA the kernels package's cascade
dispatcher does the same per group. Prefill is padded SDPA with a
bottom-right causal mask over each sequence's gathered context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class DecodeGroups:
    """Decode rows that share leading blocks; built once per step, used by every layer."""

    group_blocks: torch.Tensor  # [NG, NBp] shared prefix blocks (padded with block 0)
    group_mask: torch.Tensor  # [Hkv*NG, 1, NBp*bs] 0 or -inf (padding keys)
    group_rows: torch.Tensor  # [NG, Gmax] decode row of each member (padding repeats row 0)
    row_slot: torch.Tensor  # [Bd] member index g*Gmax+j of each row (0 if in no group)
    in_group: torch.Tensor  # [1, Bd, 1] fp32: 1 for rows in a group, 0 for the others
    # The same, as lists, for the per-group kernel path.
    groups: list[tuple[list[int], list[int]]]  # (rows, prefix blocks)


@dataclass
class DecodeMeta:
    num_rows: int  # Bd
    own_blocks: torch.Tensor  # [Bd, NB2] each row's blocks after its group prefix (padded)
    own_lens: torch.Tensor  # [Bd] tokens in those blocks
    own_mask: torch.Tensor  # [Hkv*Bd, 1, NB2*bs] 0 or -inf
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


class PagedAttention:
    def __init__(self, kv_pool: torch.Tensor, slot_mapping: torch.Tensor, scale: float,
                 decode: DecodeMeta | None, prefill: PrefillMeta | None, use_kernel: bool = False):
        self.kv_pool = kv_pool  # [L, 2, Hkv, NB, bs, D]
        self.slot_mapping = slot_mapping  # [T] where each new token's K/V goes
        self.scale = scale
        self.decode = decode
        self.prefill = prefill
        self.use_kernel = use_kernel  # decode through ttsc.kernels' cascade dispatcher
        self._k_new: torch.Tensor | None = None
        self._v_new: torch.Tensor | None = None

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write K/V [T, Hkv, D] of the new tokens into their slots."""
        hkv, nb, bs, d = self.kv_pool.shape[2:]
        self.kv_pool[layer, 0].view(hkv, nb * bs, d).index_copy_(1, self.slot_mapping, k.transpose(0, 1))
        self.kv_pool[layer, 1].view(hkv, nb * bs, d).index_copy_(1, self.slot_mapping, v.transpose(0, 1))
        self._k_new, self._v_new = k, v

    def attend(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        """q [T, H, D] -> attention output [T, H, D]."""
        k_blocks = self.kv_pool[layer, 0]  # [Hkv, NB, bs, D]
        v_blocks = self.kv_pool[layer, 1]
        parts = []
        nd = self.decode.num_rows if self.decode else 0
        if self.decode:
            qd = q[:nd]
            if self.use_kernel:
                parts.append(self._decode_kernel(qd, k_blocks, v_blocks))
            else:
                parts.append(self._decode(qd, k_blocks, v_blocks))
        if self.prefill:
            parts.append(self._prefill(q[nd:], k_blocks, v_blocks))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    # -------------------------------------------------------------- decode

    def _decode(self, q: torch.Tensor, k_blocks: torch.Tensor, v_blocks: torch.Tensor) -> torch.Tensor:
        meta = self.decode
        bd, h, d = q.shape
        hkv = k_blocks.shape[0]
        rep = h // hkv
        # Work in [Hkv, rows, rep, D]: the rep query heads reading one KV head sit together.
        qt = q.view(bd, hkv, rep, d).transpose(0, 1)
        # Own blocks: each row's queries against that row's keys.
        o2, lse2 = _attend(qt.reshape(hkv * bd, rep, d), _gather(k_blocks, meta.own_blocks),
                           _gather(v_blocks, meta.own_blocks), meta.own_mask, self.scale)
        o2 = o2.view(hkv, bd, rep, d)
        g = meta.groups
        if g is not None:
            # Shared prefixes: all Gmax*rep queries of a group per KV head in one product.
            ng, gmax = g.group_rows.shape
            qg = qt.index_select(1, g.group_rows.flatten()).view(hkv * ng, gmax * rep, d)
            o1, lse1 = _attend(qg, _gather(k_blocks, g.group_blocks), _gather(v_blocks, g.group_blocks),
                               g.group_mask, self.scale)
            o1 = o1.view(hkv, ng * gmax, rep, d).index_select(1, g.row_slot)  # [Hkv, Bd, rep, D]
            lse1 = lse1.view(hkv, ng * gmax, rep).index_select(1, g.row_slot)
            # Log-sum-exp merge: weight of the prefix part e^lse1 / (e^lse1 + e^lse2).
            w1 = torch.sigmoid(lse1 - lse2.view(hkv, bd, rep)).mul_(g.in_group)
            o2 = torch.lerp(o2, o1, w1.unsqueeze(-1).to(o2.dtype))
        return o2.transpose(0, 1).reshape(bd, h, d).to(q.dtype)

    def _decode_kernel(self, q: torch.Tensor, k_blocks: torch.Tensor, v_blocks: torch.Tensor) -> torch.Tensor:
        from ttsc.kernels.cascade_attention import cascade_attention

        meta = self.decode
        hkv, _, bs, d = k_blocks.shape
        out = torch.empty_like(q)
        own_k = _gather(k_blocks, meta.own_blocks)  # [Hkv*Bd, S, D]
        own_v = _gather(v_blocks, meta.own_blocks)
        bd = q.shape[0]
        own_k = own_k.view(hkv, bd, -1, d).permute(1, 2, 0, 3)  # [Bd, S, Hkv, D]
        own_v = own_v.view(hkv, bd, -1, d).permute(1, 2, 0, 3)
        groups = meta.groups.groups if meta.groups else []
        grouped = {r for rows, _ in groups for r in rows}
        singles = [r for r in range(bd) if r not in grouped]
        empty = k_blocks.new_empty(0, hkv, d)
        calls = [(rows, blocks) for rows, blocks in groups] + ([(singles, [])] if singles else [])
        for rows, blocks in calls:
            idx = torch.tensor(rows, device=q.device)
            if blocks:
                b = torch.tensor(blocks, device=q.device)
                pk = k_blocks.index_select(1, b).reshape(hkv, -1, d).transpose(0, 1)  # [Lp, Hkv, D]
                pv = v_blocks.index_select(1, b).reshape(hkv, -1, d).transpose(0, 1)
            else:
                pk = pv = empty
            out[idx] = cascade_attention(q[idx], pk, pv, own_k[idx], own_v[idx],
                                         meta.own_lens[idx], self.scale)
        return out

    # ------------------------------------------------------------- prefill

    def _prefill(self, q: torch.Tensor, k_blocks: torch.Tensor, v_blocks: torch.Tensor) -> torch.Tensor:
        meta = self.prefill
        t, h, d = q.shape
        hkv = k_blocks.shape[0]
        if meta.fresh_single:
            nd = self.decode.num_rows if self.decode else 0
            k = self._k_new[nd:].transpose(0, 1).unsqueeze(0)  # [1, Hkv, T, D]
            v = self._v_new[nd:].transpose(0, 1).unsqueeze(0)
            o = F.scaled_dot_product_attention(q.transpose(0, 1).unsqueeze(0), k, v, is_causal=True,
                                               scale=self.scale, enable_gqa=True)
            return o[0].transpose(0, 1)
        bp = meta.blocks.shape[0]
        k = _gather(k_blocks, meta.blocks).view(hkv, bp, -1, d)[:, :, :meta.ctx_len]
        v = _gather(v_blocks, meta.blocks).view(hkv, bp, -1, d)[:, :, :meta.ctx_len]
        k, v = k.transpose(0, 1), v.transpose(0, 1)  # [Bp, Hkv, Kmax, D]
        if meta.q_dest is None:  # one sequence: no padding of queries
            qp = q.transpose(0, 1).unsqueeze(0)  # [1, H, T, D]
        else:
            qp = q.new_zeros(bp * meta.max_q, h, d).index_copy_(0, meta.q_dest, q)
            qp = qp.view(bp, meta.max_q, h, d).transpose(1, 2)  # [Bp, H, Qmax, D]
        o = F.scaled_dot_product_attention(qp, k, v, attn_mask=meta.mask, scale=self.scale,
                                           enable_gqa=True)  # [Bp, H, Qmax, D]
        o = o.transpose(1, 2).reshape(bp * meta.max_q, h, d)
        return o if meta.q_dest is None else o[meta.q_dest]


def _gather(blocks: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Blocks [Hkv, NB, bs, D] at ids [R, n] -> [Hkv*R, n*bs, D]."""
    hkv, _, bs, d = blocks.shape
    r, n = ids.shape
    return blocks.index_select(1, ids.flatten()).view(hkv * r, n * bs, d)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
            scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched attention and its log-sum-exp: q [N, M, D], k/v [N, S, D], mask [N, 1, S] -> ([N, M, D], [N, M]).

    On CPU the fused flash kernel (fp32 accumulation, any input dtype); elsewhere
    plain matrix products in fp32.
    """
    if q.device.type == "cpu":
        out, lse = _flash_cpu(q[:, None], k[:, None], v[:, None],
                              attn_mask=mask[:, None].to(q.dtype), scale=scale)
        return out[:, 0], lse[:, 0]
    scores = torch.baddbmm(mask, q.float(), k.float().transpose(1, 2), alpha=scale)  # [N, M, S]
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse.unsqueeze(-1))
    return torch.bmm(probs, v.float()), lse


_flash_cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
