"""A radix tree over token ids, one full KV block per edge, with LRU eviction.

A path from the root spells a token prefix block by block; each node holds the
id of a KV block computed for exactly that prefix. Any request whose tokens
start with a stored path reuses those blocks instead of recomputing them: the
N samples of one prompt, verifier calls sharing a question, `extend` calls
continuing earlier candidates, the same call in the next loop iteration.

Invariant (kept by `insert`, which deduplicates): a sequence holds a reference
on every node of its path, so a referenced node's ancestors are referenced too.
Unreferenced nodes therefore form whole subtrees and all of them can be evicted,
leaves first, least recently used first.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Sequence

from ttsc.runtime.engines.paged.block_manager import BlockManager


class RadixNode:
    __slots__ = ("key", "block_id", "parent", "children", "last_access", "depth")

    def __init__(self, key: tuple[int, ...], block_id: int, parent: "RadixNode | None", depth: int):
        self.key = key  # the block's token ids
        self.block_id = block_id  # -1 for the root
        self.parent = parent
        self.children: dict[tuple[int, ...], RadixNode] = {}
        self.last_access = 0
        self.depth = depth  # number of blocks from the root to here, inclusive


class RadixCache:
    def __init__(self, blocks: BlockManager):
        self.blocks = blocks
        self.block_size = blocks.block_size
        self.root = RadixNode((), -1, None, 0)
        self.node_of_block: dict[int, RadixNode] = {}
        self._clock = itertools.count(1)
        self._heap: list[tuple[int, int, RadixNode]] = []  # (last_access, tie, node)
        self._tie = itertools.count()
        self.num_evicted = 0
        blocks.evict_one = self.evict_one
        blocks.on_idle = self._on_idle

    # -------------------------------------------------------------- lookup

    def match(self, token_ids: Sequence[int]) -> tuple[list[RadixNode], int]:
        """The longest stored prefix of `token_ids`: its nodes and its length in tokens.

        Whole blocks first; then, where no stored block matches whole, the child
        sharing the longest head with the next tokens (the last node, used in
        part: the caller copies it rather than sharing it). That tail is what a
        repeated prompt usually differs in: its last, partly filled block was
        stored completed by the first call's generated tokens.
        """
        bs = self.block_size
        path: list[RadixNode] = []
        node = self.root
        now = next(self._clock)
        for i in range(len(token_ids) // bs + 1):
            want = tuple(token_ids[i * bs:(i + 1) * bs])
            child = node.children.get(want) if len(want) == bs else None
            if child is None:
                best, best_len = None, 0
                for key, candidate in node.children.items():
                    same = _common_head(key, want)
                    if same > best_len or (same == best_len and best is not None
                                           and candidate.last_access > best.last_access):
                        best, best_len = candidate, same
                if best is None or best_len == 0:
                    return path, len(path) * bs
                self._touch(best, now)
                return path + [best], len(path) * bs + best_len
            self._touch(child, now)
            path.append(child)
            node = child
        return path, len(path) * bs

    def insert(self, parent: RadixNode, key: tuple[int, ...], block_id: int) -> RadixNode:
        """Store a full block under `parent`; returns the node now holding `key`.

        If an equal node exists the caller must switch to its block (and release
        its own): that keeps one copy per prefix and the invariant above.
        """
        assert len(key) == self.block_size
        existing = parent.children.get(key)
        now = next(self._clock)
        if existing is not None:
            self._touch(existing, now)
            return existing
        node = RadixNode(key, block_id, parent, parent.depth + 1)
        node.last_access = now
        parent.children[key] = node
        self.node_of_block[block_id] = node
        self.blocks.mark_cached(block_id)
        return node

    # ------------------------------------------------------------ eviction

    def _on_idle(self, block_id: int) -> None:
        node = self.node_of_block[block_id]
        node.last_access = next(self._clock)
        if not node.children:
            self._push(node)

    def _touch(self, node: RadixNode, now: int) -> None:
        node.last_access = now
        if not node.children and self.blocks.ref_counts[node.block_id] == 0:
            self._push(node)  # its old heap entry is stale now

    def _push(self, node: RadixNode) -> None:
        heapq.heappush(self._heap, (node.last_access, next(self._tie), node))

    def evict_one(self) -> int | None:
        """Free the least recently used unreferenced leaf; its block id, or None."""
        refs = self.blocks.ref_counts
        while self._heap:
            stamp, _, node = heapq.heappop(self._heap)
            stale = (node.parent is None or node.children or refs[node.block_id] != 0
                     or stamp != node.last_access)
            if stale:
                continue
            parent = node.parent
            del parent.children[node.key]
            node.parent = None
            del self.node_of_block[node.block_id]
            self.blocks.release_cached(node.block_id)
            self.num_evicted += 1
            if parent is not self.root and not parent.children and refs[parent.block_id] == 0:
                self._push(parent)
            return node.block_id
        return None

    def clear(self) -> int:
        """Free every block no sequence holds (what `evict_one` would free,
        all of it); blocks in use stay. Returns how many were freed."""
        freed = 0
        while self.evict_one() is not None:
            freed += 1
        return freed

    @property
    def num_nodes(self) -> int:
        return len(self.node_of_block)

    def check_invariants(self) -> None:
        """Referenced nodes have referenced ancestors; every node is indexed (tests)."""
        refs = self.blocks.ref_counts
        stack = [self.root]
        seen = 0
        while stack:
            node = stack.pop()
            for child in node.children.values():
                seen += 1
                assert self.node_of_block.get(child.block_id) is child
                assert self.blocks.is_cached[child.block_id]
                if refs[child.block_id] > 0 and node is not self.root:
                    assert refs[node.block_id] > 0, "a referenced node has an idle parent"
                stack.append(child)
        assert seen == len(self.node_of_block)


def _common_head(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
