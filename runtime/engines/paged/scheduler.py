"""Continuous batching: which sequences run in the next forward pass, and on what memory.

Every step builds one mixed batch under a token budget: one token for each
decoding sequence, then chunks of prompts still being prefilled, then newly
admitted sequences in arrival order. A sequence is admitted only when the KV
pool can hold its prompt (after reusing what the radix cache already has);
otherwise it waits. When decoding sequences need a fresh block and none is
left, the most recently admitted sequence is preempted: it releases its blocks
and waits again, later recomputing (mostly from the radix cache) where it was.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from ttsc.runtime.engines.paged.attention import KEY_CHUNK
from ttsc.runtime.engines.paged.block_manager import BlockManager
from ttsc.runtime.engines.paged.radix import RadixCache
from ttsc.runtime.engines.paged.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    decode: list[Sequence]  # one new token each, in this order first
    prefill: list[tuple[Sequence, int]]  # (sequence, tokens to run this step)
    decode_groups: list[tuple[list[int], int]]  # (decode rows, leading blocks they share)
    copies: list[tuple[int, int]] = field(default_factory=list)  # CoW (src, dst) before the forward

    @property
    def num_tokens(self) -> int:
        return len(self.decode) + sum(n for _, n in self.prefill)

    @property
    def sequences(self) -> list[Sequence]:
        return self.decode + [s for s, _ in self.prefill]


@dataclass
class SchedulerStats:
    radix_hits_tokens: int = 0  # prompt tokens found in the radix cache at admission
    radix_miss_tokens: int = 0  # prompt tokens looked up and not found (then computed)
    prefill_tokens_computed: int = 0  # every token run by a non-decode row, recomputes included
    decode_tokens: int = 0
    cow_copies: int = 0
    dedup_blocks: int = 0  # full blocks replaced by an identical cached one
    preemptions: int = 0
    steps: int = 0
    peak_decode_rows: int = 0  # the most sequences one step decoded (batching across calls shows here)


class Scheduler:
    def __init__(self, blocks: BlockManager, radix: RadixCache, max_batch_tokens: int,
                 max_num_seqs: int, prefix_cache: bool = True):
        self.blocks = blocks
        self.radix = radix
        self.prefix_cache = prefix_cache  # off: no radix lookups or inserts (a baseline)
        self.block_size = blocks.block_size
        self.max_batch_tokens = max_batch_tokens
        self.max_num_seqs = max_num_seqs
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.stats = SchedulerStats()
        self.num_finished = 0  # sequences ended so far (finished or cancelled)
        self._release_after_step: list[int] = []  # CoW sources, held until copied

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ------------------------------------------------------------ schedule

    def schedule(self) -> ScheduledBatch:
        self.stats.steps += 1
        copies: list[tuple[int, int]] = []
        decode = self._schedule_decode(copies)
        decoding = {id(s) for s in decode}
        budget = self.max_batch_tokens - len(decode)
        prefill: list[tuple[Sequence, int]] = []
        for seq in self.running:
            if budget <= 0:
                break
            if id(seq) not in decoding and seq.num_uncomputed_tokens > 0:
                n = min(seq.num_uncomputed_tokens, budget)
                prefill.append((seq, n))
                budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not self._admit(seq, copies):
                break
            self.waiting.popleft()
            self.running.append(seq)
            n = min(seq.num_uncomputed_tokens, budget)
            prefill.append((seq, n))
            budget -= n
        decode, groups = self._decode_groups(decode)
        batch = ScheduledBatch(decode, prefill, groups, copies)
        if not batch.num_tokens:
            raise RuntimeError("scheduler made no progress (a request cannot fit the KV pool)")
        self.stats.decode_tokens += len(decode)
        self.stats.peak_decode_rows = max(self.stats.peak_decode_rows, len(decode))
        self.stats.prefill_tokens_computed += batch.num_tokens - len(decode)
        return batch

    def _schedule_decode(self, copies: list[tuple[int, int]]) -> list[Sequence]:
        """Decoding sequences, each with an exclusive block for its next KV slot."""
        queue = deque(s for s in self.running if s.is_decoding)
        scheduled: list[Sequence] = []
        done: set[int] = set()
        while queue:
            seq = queue.popleft()
            if seq.status != SequenceStatus.RUNNING:
                continue  # preempted while making room for an earlier one
            while not self._can_append(seq):
                victim = self._pick_victim(exclude=done)
                self._preempt(victim)
                if victim is seq:
                    break
            else:
                self._append_slot(seq, copies)
                scheduled.append(seq)
                done.add(id(seq))
        return scheduled

    def _pick_victim(self, exclude: set[int]) -> Sequence:
        for seq in reversed(self.running):
            if id(seq) not in exclude:
                return seq
        raise RuntimeError("no sequence to preempt")

    def _can_append(self, seq: Sequence) -> bool:
        return self.blocks.can_allocate(self._append_cost(seq))

    def _append_cost(self, seq: Sequence) -> int:
        pos = seq.num_tokens - 1  # slot of the token this step feeds
        index = pos // self.block_size
        if index == len(seq.block_table):
            return 1
        return 1 if self.blocks.ref_counts[seq.block_table[index]] > 1 else 0

    def _append_slot(self, seq: Sequence, copies: list[tuple[int, int]]) -> None:
        index = (seq.num_tokens - 1) // self.block_size
        if index == len(seq.block_table):
            seq.block_table.append(self.blocks.allocate())
            return
        block = seq.block_table[index]
        if self.blocks.ref_counts[block] > 1:  # copy on write: siblings keep the original
            new = self.blocks.allocate()
            copies.append((block, new))
            self.blocks.decref(block)
            seq.block_table[index] = new
            self.stats.cow_copies += 1

    # ----------------------------------------------------------- admission

    def _admit(self, seq: Sequence, copies: list[tuple[int, int]]) -> bool:
        """Reuse cached blocks, allocate the rest; False (nothing held) if it does not fit."""
        bs = self.block_size
        path, stored = self.radix.match(seq.token_ids) if self.prefix_cache else ([], 0)
        reuse = min(stored, seq.logits_start)  # tokens served from the cache
        num_shared = reuse // bs
        partial = reuse % bs  # a cached block used only in part is copied, not shared
        shared = [node.block_id for node in path[:num_shared]]
        cow_src = path[num_shared].block_id if partial else None
        held = shared + ([cow_src] if cow_src is not None else [])
        for b in held:
            self.blocks.incref(b)
        needed = -(-seq.num_tokens // bs) - num_shared
        reserve = seq.num_forks + 1 if self.running else 0
        if not self.blocks.can_allocate(needed + reserve):
            for b in reversed(held):
                self.blocks.decref(b)
            return False
        table = shared + [self.blocks.allocate() for _ in range(needed)]
        if cow_src is not None:
            copies.append((cow_src, table[num_shared]))
            self._release_after_step.append(cow_src)
            self.stats.cow_copies += 1
        seq.block_table = table
        seq.num_cached_tokens = reuse
        seq.tree_node = path[num_shared - 1] if num_shared else self.radix.root
        seq.status = SequenceStatus.RUNNING
        if not seq.was_admitted:
            seq.was_admitted = True
            seq.num_radix_hit_tokens = reuse
            seq.num_prompt_computed = seq.num_tokens - reuse
            self.stats.radix_hits_tokens += reuse
            self.stats.radix_miss_tokens += seq.num_tokens - reuse
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._release(seq)
        seq.scores.clear()  # a scoring prefill restarts from its first scored position
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.stats.preemptions += 1

    # ---------------------------------------------------------- after a step

    def commit(self, batch: ScheduledBatch) -> None:
        """The forward ran: count stored tokens, share newly full blocks via the radix tree."""
        for b in self._release_after_step:
            self.blocks.decref(b)
        self._release_after_step.clear()
        for seq in batch.decode:
            seq.num_cached_tokens += 1
            self._insert_full_blocks(seq)
        for seq, n in batch.prefill:
            seq.num_cached_tokens += n
            self._insert_full_blocks(seq)

    def _insert_full_blocks(self, seq: Sequence) -> None:
        if not self.prefix_cache:
            return
        bs = self.block_size
        node = seq.tree_node
        for i in range(node.depth, seq.num_cached_tokens // bs):
            own = seq.block_table[i]
            node = self.radix.insert(node, tuple(seq.token_ids[i * bs:(i + 1) * bs]), own)
            if node.block_id != own:  # someone stored this prefix first: use theirs
                self.blocks.incref(node.block_id)
                self.blocks.decref(own)
                seq.block_table[i] = node.block_id
                self.stats.dedup_blocks += 1
        seq.tree_node = node

    def fork(self, seq: Sequence, children: list[Sequence]) -> None:
        """`children` start as copies of `seq` right after its prompt: blocks shared, not copied."""
        for child in children:
            for b in seq.block_table:
                self.blocks.incref(b)
            child.block_table = list(seq.block_table)
            child.num_cached_tokens = seq.num_cached_tokens
            child.tree_node = seq.tree_node
            child.status = SequenceStatus.RUNNING
            child.was_admitted = True
            self.running.append(child)

    def finish(self, seq: Sequence) -> None:
        if seq.status == SequenceStatus.RUNNING:
            self.running.remove(seq)
        self._release(seq)
        seq.status = SequenceStatus.FINISHED
        self.num_finished += 1

    def cancel(self, seq: Sequence) -> None:
        """End `seq` before it finished, waiting or running (first-finish
        search stops the samples that can no longer be among the first k)."""
        if seq.status == SequenceStatus.WAITING and seq in self.waiting:
            self.waiting.remove(seq)
        self.finish(seq)

    def abort_all(self) -> list[Sequence]:
        """Drop every waiting and running sequence (after a failed step), releasing
        their blocks; the sequences, for the engine to fail."""
        seqs = list(self.running) + list(self.waiting)
        for seq in self.running:
            self._release(seq)
        for b in self._release_after_step:
            self.blocks.decref(b)
        self._release_after_step.clear()
        self.running.clear()
        self.waiting.clear()
        return seqs

    def _release(self, seq: Sequence) -> None:
        for b in reversed(seq.block_table):
            self.blocks.decref(b)
        seq.block_table = []
        seq.num_cached_tokens = 0
        seq.tree_node = None

    # ------------------------------------------------------- prefix groups

    def _decode_groups(self, decode: list[Sequence]
                       ) -> tuple[list[Sequence], list[tuple[list[int], int]]]:
        """Decode rows sharing leading blocks, for cascade attention.

        Each row's shared depth is its deepest block still referenced by another
        sequence; rows with the same depth and block there share the whole prefix.
        Rows come back reordered so each group is contiguous (groups first): with
        equal-sized groups attention then needs no gathers of queries at all.
        """
        refs = self.blocks.ref_counts
        # Prefixes are whole multiples of the attention's key chunk, so a row's
        # attention is the same bits in a group or alone (attention.py).
        align = math.lcm(self.block_size, KEY_CHUNK) // self.block_size
        by_key: dict[tuple[int, int], list[int]] = {}
        for row, seq in enumerate(decode):
            table = seq.block_table
            depth = len(table) - 1  # the last block is always private here
            while depth > 0 and refs[table[depth - 1]] == 1:
                depth -= 1
            depth = depth // align * align
            if depth:
                by_key.setdefault((depth, table[depth - 1]), []).append(row)
        found = []
        for (depth, _), rows in by_key.items():
            if len(rows) < 2:
                continue
            head = decode[rows[0]].block_table[:depth]
            same = [r for r in rows if decode[r].block_table[:depth] == head]
            if len(same) >= 2:
                found.append((same, depth))
        order = [r for rows, _ in found for r in rows]
        grouped = set(order)
        order += [r for r in range(len(decode)) if r not in grouped]
        groups, start = [], 0
        for rows, depth in found:
            groups.append((list(range(start, start + len(rows))), depth))
            start += len(rows)
        return [decode[r] for r in order], groups
