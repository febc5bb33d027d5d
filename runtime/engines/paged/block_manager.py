"""Paged KV blocks: a fixed pool, reference counts, exact bytes, a hard cap.

The pool holds `num_blocks = cap // block_bytes` blocks and nothing else can be
allocated, so the cap can never be exceeded: when no block is free the radix
cache gives back its least recently used unreferenced block, and when that is
not enough the scheduler makes requests wait.

Free blocks are reused last-freed first: a block freed a moment ago has its
pages mapped and its bytes likely still in cache, while a block never used
costs a page fault per 4 KiB on its first write (the pool is zero-filled by
the OS as it is touched, see runner.zeroed). A long-lived engine so keeps
working in the part of the pool it has touched.

A block is in one of three states:
  free     - on the free list, holds nothing;
  live     - ref_count > 0, held by one or more sequences (shared when > 1);
  cached   - ref_count == 0 but kept by the radix tree for later reuse.
"""

from __future__ import annotations

from typing import Callable


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, block_bytes: int):
        if num_blocks < 1:
            raise ValueError("the KV pool needs at least one block")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.block_bytes = block_bytes  # KV bytes of one block over all layers
        self.ref_counts = [0] * num_blocks
        self.is_cached = [False] * num_blocks  # owned by a radix-tree node
        self.free_ids: list[int] = list(range(num_blocks - 1, -1, -1))  # a stack: block 0 first
        self.num_live = 0
        self.num_cached_idle = 0  # cached blocks with ref_count == 0 (evictable)
        self.peak_live = 0
        self.peak_resident = 0  # live + cached: blocks holding KV data
        # Set by the radix cache: evict one unreferenced block, return its id or None.
        self.evict_one: Callable[[], int | None] = lambda: None
        self.on_idle: Callable[[int], None] = lambda block_id: None

    # ------------------------------------------------------------ capacity

    @property
    def num_free(self) -> int:
        return len(self.free_ids)

    @property
    def num_allocatable(self) -> int:
        """Blocks an allocation can get now: free ones plus evictable cached ones."""
        return len(self.free_ids) + self.num_cached_idle

    def can_allocate(self, num: int) -> bool:
        return num <= self.num_allocatable

    # ---------------------------------------------------------- allocation

    def allocate(self) -> int:
        """A block with ref_count 1; evicts the LRU cached block when none is free."""
        if not self.free_ids:
            evicted = self.evict_one()
            if evicted is None:
                raise MemoryError("KV pool exhausted (the scheduler should have checked)")
        block_id = self.free_ids.pop()
        self.ref_counts[block_id] = 1
        self.num_live += 1
        self._update_peaks()
        return block_id

    def incref(self, block_id: int) -> None:
        if self.ref_counts[block_id] == 0:
            if not self.is_cached[block_id]:
                raise ValueError(f"block {block_id} is free; it cannot be shared")
            self.num_cached_idle -= 1
            self.num_live += 1
            self._update_peaks()
        self.ref_counts[block_id] += 1

    def decref(self, block_id: int) -> None:
        count = self.ref_counts[block_id]
        if count <= 0:
            raise ValueError(f"block {block_id} released more often than held")
        self.ref_counts[block_id] = count - 1
        if count == 1:
            self.num_live -= 1
            if self.is_cached[block_id]:
                self.num_cached_idle += 1
                self.on_idle(block_id)
            else:
                self.free_ids.append(block_id)

    # ---------------------------------------------------- radix ownership

    def mark_cached(self, block_id: int) -> None:
        """The radix tree now keeps this (live) block after its last release."""
        self.is_cached[block_id] = True

    def release_cached(self, block_id: int) -> None:
        """The radix tree dropped an unreferenced block: it becomes free."""
        if self.ref_counts[block_id] != 0 or not self.is_cached[block_id]:
            raise ValueError(f"block {block_id} is not an idle cached block")
        self.is_cached[block_id] = False
        self.num_cached_idle -= 1
        self.free_ids.append(block_id)

    # ------------------------------------------------------------- bytes

    def _update_peaks(self) -> None:
        self.peak_live = max(self.peak_live, self.num_live)
        self.peak_resident = max(self.peak_resident, self.num_live + self.num_cached_idle)

    @property
    def cap_bytes(self) -> int:
        return self.num_blocks * self.block_bytes

    @property
    def live_bytes(self) -> int:
        return self.num_live * self.block_bytes

    @property
    def resident_bytes(self) -> int:
        return (self.num_live + self.num_cached_idle) * self.block_bytes

    def check_invariants(self) -> None:
        """Every block is in exactly one state and the counters agree (tests)."""
        free = set(self.free_ids)
        assert len(free) == len(self.free_ids), "a block is on the free list twice"
        live = sum(1 for c in self.ref_counts if c > 0)
        idle = sum(1 for i, c in enumerate(self.ref_counts) if c == 0 and self.is_cached[i])
        assert live == self.num_live, (live, self.num_live)
        assert idle == self.num_cached_idle, (idle, self.num_cached_idle)
        for i in free:
            assert self.ref_counts[i] == 0 and not self.is_cached[i], f"free block {i} in use"
        assert len(free) + live + idle == self.num_blocks, "a block is lost"
