"""The token-level prefix trie: what a radix prefix cache computes, and the
longest-prefix-first order in which to send requests."""

from __future__ import annotations

from typing import Sequence


class PrefixTrie:
    """Token-level trie: counts the tokens a radix prefix cache computes."""

    def __init__(self) -> None:
        self.root: dict[int, dict] = {}
        self.size = 0

    def insert(self, seq: Sequence[int]) -> int:
        """Insert one sequence; returns the tokens not already present."""
        node, new = self.root, 0
        for t in seq:
            child = node.get(t)
            if child is None:
                child = node[t] = {}
                new += 1
            node = child
        self.size += new
        return new

    def common(self, seq: Sequence[int]) -> int:
        node, depth = self.root, 0
        for t in seq:
            if t not in node:
                break
            node, depth = node[t], depth + 1
        return depth


def longest_prefix_first(seqs: Sequence[Sequence[int]]) -> list[int]:
    """Indices of `seqs` in trie DFS order: requests with the longest common
    prefix become adjacent (lexicographic order of token ids is exactly that)."""
    return sorted(range(len(seqs)), key=lambda i: tuple(seqs[i]))


class StandInIds:
    """Stand-in token ids for hole text (negative, so never a real token):
    the j-th token of the run named `key` always gets the same id."""

    def __init__(self) -> None:
        self._runs: dict[tuple, list[int]] = {}
        self._count = 0

    def run(self, key: tuple, length: int) -> list[int]:
        ids = self._runs.setdefault(key, [])
        while len(ids) < length:
            self._count += 1
            ids.append(-self._count)
        return ids[:length]
