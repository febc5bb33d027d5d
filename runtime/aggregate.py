"""Running generated vote kernels on a batch of inputs.

Answers are strings per input; the kernel wants integer ids. Ids are given in
order of first appearance within each input, so the kernel's tie-break (first
seen wins) matches `ttsc.runtime.ops.vote` exactly.
"""

from __future__ import annotations

from typing import Any

import torch

from ttsc.kernels.aggregate import compile_aggregate
from ttsc.kernels.aggregate_codegen import AggregateSpec


def answer_ids(answers: list[list[str | None]]) -> tuple[torch.Tensor, list[list[str]]]:
    """[B, N] ids (-1 for no answer or padding) and each row's id -> answer table."""
    width = max((len(a) for a in answers), default=0)
    ids = torch.full((len(answers), max(width, 1)), -1, dtype=torch.int64)
    tables: list[list[str]] = []
    for b, row in enumerate(answers):
        table: dict[str, int] = {}
        for j, a in enumerate(row):
            if a is not None:
                ids[b, j] = table.setdefault(a, len(table))
        tables.append(list(table))
    return ids, tables


def run_vote_kernel(info: dict[str, Any], answers: list[list[str | None]],
                    weights: list[list[float]] | None) -> list[str]:
    ids, tables = answer_ids(answers)
    num_samples = info.get("num_samples")
    if num_samples is not None and ids.shape[1] != num_samples:
        num_samples = None  # padded batch of another width: use the runtime-width kernel
    kernel = compile_aggregate(AggregateSpec(weighted=weights is not None, num_samples=num_samples))
    w = None
    if weights is not None:
        w = torch.zeros(ids.shape, dtype=torch.float32)
        for b, row in enumerate(weights):
            w[b, :len(row)] = torch.tensor(row, dtype=torch.float32)
    winners = kernel(ids, w)
    return [tables[b][int(k)] if int(k) >= 0 else "" for b, k in enumerate(winners)]
