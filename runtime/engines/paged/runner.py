"""Runs the model over the paged KV pool: builds the batch tensors, runs one forward.

The KV pool is allocated once at the cap, [L, NB, bs, 2, Hkv, D], and written
by index.
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass

import torch

from ttsc.runtime.engines.paged.attention import DecodeGroups, DecodeMeta, PagedAttention, PrefillMeta
from ttsc.runtime.engines.paged.model import LlamaModel
from ttsc.runtime.engines.paged.scheduler import ScheduledBatch
from ttsc.runtime.engines.paged.sequence import Sequence, SequenceKind


def kv_block_bytes(model: LlamaModel, block_size: int) -> int:
    """Exact bytes of one KV block over all layers (K and V)."""
    cfg = model.cfg
    elem = torch.empty((), dtype=model.dtype).element_size()
    return cfg.num_layers * 2 * cfg.num_kv_heads * block_size * cfg.head_dim * elem


def zeroed(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zeroed tensor. On CPU, anonymous memory the OS zero-fills page by page as
    it is first written: a 1 GiB pool then costs nothing to create (torch.zeros
    writes every byte, about 0.4 s) and only what is used counts as resident."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    numel = math.prod(shape)
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    buffer = mmap.mmap(-1, max(nbytes, 1))  # the tensor keeps the mapping alive
    return torch.frombuffer(buffer, dtype=dtype, count=numel).view(shape)


@dataclass
class LogitRow:
    seq: Sequence
    position: int  # the logits predict token position + 1


class ModelRunner:
    def __init__(self, model: LlamaModel, num_blocks: int, block_size: int, use_kernel: bool = False):
        cfg = model.cfg
        self.model = model
        self.block_size = block_size
        self.device = model.device
        self.use_kernel = use_kernel  # Triton on CUDA; the model's `cpu_ops` say whether C++ on CPU
        # Zeroed, not empty: padded key slots are read with weight 0, and 0 * NaN
        # from uninitialized memory would still poison the output.
        self.kv_pool = zeroed((cfg.num_layers, num_blocks, block_size, 2, cfg.num_kv_heads, cfg.head_dim),
                              model.dtype, model.device)
        self.layers = list(self.kv_pool.unbind(0))  # per-layer views, made once
        self.scale = cfg.head_dim ** -0.5

    @torch.inference_mode()
    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        if not copies:
            return
        src = torch.tensor([s for s, _ in copies], device=self.device)
        dst = torch.tensor([d for _, d in copies], device=self.device)
        layers, nb = self.kv_pool.shape[:2]
        pool = self.kv_pool.view(layers, nb, -1)  # every layer's block at once
        pool.index_copy_(1, dst, pool.index_select(1, src))

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> tuple[torch.Tensor, list[LogitRow], torch.Tensor]:
        """Logits [R, V] (model dtype) for the rows that need them, which rows
        those are, and fp32 logits [S, V] of the score rows among them, in order."""
        self.copy_blocks(batch.copies)
        input_ids, positions, slots, hidden_rows, rows = self._flatten(batch)
        attn = PagedAttention(self.layers, self._tensor(slots), self.scale,
                              self._decode_meta(batch), self._prefill_meta(batch),
                              use_kernel=self.use_kernel, cpu_ops=self.model.cpu_ops)
        hidden = self.model.forward(self._tensor(input_ids), self._tensor(positions), attn)
        vocab = self.model.cfg.vocab_size
        if not rows:
            return hidden.new_empty(0, vocab), rows, hidden.new_empty(0, vocab, dtype=torch.float32)
        picked = hidden[self._tensor(hidden_rows)]
        scored = [i for i, r in enumerate(rows) if r.seq.kind == SequenceKind.SCORE]
        exact = (self.model.logits_fp32(picked[self._tensor(scored)]) if scored
                 else hidden.new_empty(0, vocab, dtype=torch.float32))
        return self.model.logits(picked), rows, exact

    def _tensor(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)

    def _flatten(self, batch: ScheduledBatch):
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        hidden_rows: list[int] = []
        rows: list[LogitRow] = []
        for seq in batch.decode:
            pos = seq.num_tokens - 1
            hidden_rows.append(len(input_ids))
            rows.append(LogitRow(seq, pos))
            input_ids.append(seq.token_ids[pos])
            positions.append(pos)
            slots.append(seq.block_table[pos // bs] * bs + pos % bs)
        for seq, n in batch.prefill:
            start = seq.num_cached_tokens
            table = seq.block_table
            first_logit = seq.logits_start
            last_logit = (seq.score_start + len(seq.score_targets) - 1
                          if seq.kind == SequenceKind.SCORE else seq.num_tokens - 1)
            for pos in range(start, start + n):
                if first_logit <= pos <= last_logit:
                    hidden_rows.append(len(input_ids))
                    rows.append(LogitRow(seq, pos))
                input_ids.append(seq.token_ids[pos])
                positions.append(pos)
                slots.append(table[pos // bs] * bs + pos % bs)
        return input_ids, positions, slots, hidden_rows, rows

    # ------------------------------------------------------------ metadata

    def _decode_meta(self, batch: ScheduledBatch) -> DecodeMeta | None:
        decode = batch.decode
        if not decode:
            return None
        bs = self.block_size
        shared_depth = [0] * len(decode)
        for rows, depth in batch.decode_groups:
            for r in rows:
                shared_depth[r] = depth
        own = [seq.block_table[shared_depth[i]:] for i, seq in enumerate(decode)]
        own_lens = [seq.num_tokens - shared_depth[i] * bs for i, seq in enumerate(decode)]
        own_blocks = self._padded(own)
        own_lens_t = self._tensor(own_lens)
        own_mask = self._key_mask(own_lens_t, own_blocks.shape[1] * bs)
        groups = None
        if batch.decode_groups:
            members = [rows for rows, _ in batch.decode_groups]
            prefixes = [decode[rows[0]].block_table[:depth] for rows, depth in batch.decode_groups]
            gmax = max(len(m) for m in members)
            group_rows = self._padded(members, pad=0, width=gmax).flatten()
            row_slot = [0] * len(decode)
            in_group = [0.0] * len(decode)
            for g, rows in enumerate(members):
                for j, r in enumerate(rows):
                    row_slot[r] = g * gmax + j
                    in_group[r] = 1.0
            group_blocks = self._padded(prefixes)
            group_lens = self._tensor([len(p) * bs for p in prefixes])
            groups = DecodeGroups(
                group_blocks=group_blocks,
                group_mask=self._key_mask(group_lens, group_blocks.shape[1] * bs),
                group_rows=group_rows, row_slot=self._tensor(row_slot),
                in_group=torch.tensor(in_group, device=self.device).view(-1, 1, 1),
                num_groups=len(members), max_members=gmax,
                uniform=all(len(m) == gmax for m in members) and gmax * len(members) == len(decode),
                members=self._padded(members, pad=-1, width=gmax), group_lens=group_lens,
                groups=list(zip(members, prefixes)))
        return DecodeMeta(len(decode), own_blocks, own_lens_t, own_mask, groups)

    def _prefill_meta(self, batch: ScheduledBatch) -> PrefillMeta | None:
        if not batch.prefill:
            return None
        bs = self.block_size
        starts = [seq.num_cached_tokens for seq, _ in batch.prefill]
        q_lens = [n for _, n in batch.prefill]
        ctx_lens = [s + n for s, n in zip(starts, q_lens)]
        tables = [seq.block_table[:-(-c // bs)] for (seq, _), c in zip(batch.prefill, ctx_lens)]
        blocks = self._padded(tables)
        num_rows = sum(q_lens)
        if self.model.cpu_ops is not None:  # the kernel reads each token's keys from the pool
            return PrefillMeta(num_rows, blocks, None, None, max(q_lens), max(ctx_lens), False,
                               self._tensor(starts), self._tensor(q_lens))
        if len(q_lens) == 1:
            fresh = starts[0] == 0
            mask = None
            if not fresh:  # bottom-right aligned causal mask over the cached context
                q_pos = torch.arange(starts[0], ctx_lens[0], device=self.device)
                mask = (torch.arange(ctx_lens[0], device=self.device)[None, :] <= q_pos[:, None])
                mask = mask[None, None]
            return PrefillMeta(num_rows, blocks, mask, None, q_lens[0], ctx_lens[0], fresh)
        max_q, max_ctx = max(q_lens), max(ctx_lens)
        q_dest = [b * max_q + i for b, n in enumerate(q_lens) for i in range(n)]
        start_t = self._tensor(starts)[:, None, None]
        q_idx = torch.arange(max_q, device=self.device)[None, :, None]
        k_idx = torch.arange(max_ctx, device=self.device)[None, None, :]
        # key k is visible to query i of sequence b iff k <= start_b + i; padding
        # queries see key 0 only, so no softmax row is empty.
        valid_q = q_idx < self._tensor(q_lens)[:, None, None]
        mask = (k_idx <= start_t + q_idx) & valid_q | (k_idx == 0)
        return PrefillMeta(num_rows, blocks, mask[:, None], self._tensor(q_dest), max_q, max_ctx, False)

    def _padded(self, lists: list[list[int]], pad: int = 0, width: int | None = None) -> torch.Tensor:
        width = max(1, max(len(x) for x in lists)) if width is None else width
        return self._tensor([x + [pad] * (width - len(x)) for x in lists])

    def _key_mask(self, lens: torch.Tensor, width: int) -> torch.Tensor:
        """[R, 1, 1, width] additive mask: 0 for the first lens[r] keys, -inf after."""
        keys = torch.arange(width, device=self.device)[None, :]
        # The CPU flash kernel wants the mask in the query dtype; matmuls elsewhere use fp32.
        dtype = self.model.dtype if self.device.type == "cpu" else torch.float32
        mask = torch.zeros(lens.shape[0], width, device=self.device, dtype=dtype)
        mask.masked_fill_(keys >= lens[:, None], float("-inf"))
        return mask[:, None, None, :]
