"""Generated aggregate kernels: extract -> vote / weighted vote -> argmax.

The compiler's kernel pass describes an aggregate chain by an `AggregateSpec`,
renders Triton source from it (`render_source`), and `compile_aggregate`
writes that source to `<cache>/<content-hash>.py`, imports it and returns a
`GeneratedKernel`. Calling the kernel runs the generated Triton code where
Triton is usable (CUDA) and the torch reference `vote_reference` elsewhere.

Inputs are integer answer ids per row (the compiler maps each input's
extracted answer strings to ids; -1 = no answer) and optional weights. The
result is the winning answer id per row: the id with the largest count (or
total weight); ties go to the answer whose first occurrence comes first in
sample order (when ids are numbered in order of first appearance, as the
compiler does, that is also the smallest id). -1 wins only when a row has no
answer at all. Weights must be finite.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch

from ttsc.kernels.aggregate_codegen import AggregateSpec, write_source
from ttsc.kernels.dispatch import next_power_of_2, triton_importable, use_triton

class GeneratedKernel:
    """A vote kernel generated for one spec; call it like the reference."""

    def __init__(self, spec: AggregateSpec, source_path: Path, content_hash: str, module: ModuleType | None):
        self.spec = spec
        self.source_path = source_path
        self.hash = content_hash
        self._module = module  # None where Triton is not installed: the reference runs

    def __call__(self, answer_ids: torch.Tensor, weights: torch.Tensor | None = None, *,
                 backend: str = "auto") -> torch.Tensor:
        """Winning answer id per row [B] int64 (-1 when a row has no answer)."""
        _check(answer_ids, weights)
        if self.spec.weighted != (weights is not None):
            raise ValueError(f"kernel for {self.spec.chain} called "
                             f"{'without' if self.spec.weighted else 'with'} weights")
        if self.spec.num_samples is not None and answer_ids.shape[1] != self.spec.num_samples:
            raise ValueError(f"kernel built for {self.spec.num_samples} samples per row, "
                             f"got {answer_ids.shape[1]}")
        if self._module is not None and use_triton(backend, answer_ids.device):
            return self._launch(answer_ids, weights)
        return vote_reference(answer_ids, weights)

    def describe(self) -> str:
        """One line for `ttsc compile --explain`."""
        where = "Triton on CUDA, torch reference elsewhere" if self._module else "torch reference (no Triton)"
        return f"kernel {self.hash[:12]} ({self.spec.chain}; {where}): {self.source_path}"

    def _launch(self, answer_ids: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        b, n = answer_ids.shape
        winners = torch.empty(b, device=answer_ids.device, dtype=torch.int64)
        if b == 0:
            return winners
        if n == 0:
            return winners.fill_(-1)
        ids = answer_ids.to(torch.int64).contiguous()
        w = ids if weights is None else weights.to(device=ids.device, dtype=torch.float32).contiguous()
        self._module.vote_kernel[(b,)](ids, w, winners, ids.stride(0), w.stride(0), n,
                                       BLOCK_N=max(2, next_power_of_2(n)), num_warps=1 if n <= 256 else 4)
        return winners


def vote_reference(answer_ids: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Torch reference of the vote: winning answer id per row [B] int64."""
    _check(answer_ids, weights)
    ids = answer_ids.to(torch.int64)
    b, n = ids.shape
    if n == 0:
        return torch.full((b,), -1, dtype=torch.int64, device=ids.device)
    w = torch.ones(ids.shape, device=ids.device) if weights is None else weights.to(ids.device).float()
    totals = torch.zeros(ids.shape, device=ids.device)
    for j in range(n):  # sample order, as the kernel sums
        totals += torch.where(ids == ids[:, j:j + 1], w[:, j:j + 1], 0.0)
    valid = ids >= 0
    totals = totals.masked_fill(~valid, float("-inf"))
    best = totals.max(dim=1, keepdim=True).values
    positions = torch.arange(n, device=ids.device).expand(b, n)
    first = torch.where(valid & (totals == best), positions, n).min(dim=1).values
    winner = ids.gather(1, first.clamp(max=n - 1)[:, None])[:, 0]
    return torch.where(first < n, winner, torch.full_like(winner, -1))


def _check(answer_ids: torch.Tensor, weights: torch.Tensor | None) -> None:
    if answer_ids.dim() != 2:
        raise ValueError(f"answer_ids must be [B, N], got {tuple(answer_ids.shape)}")
    if answer_ids.dtype.is_floating_point or answer_ids.dtype == torch.bool:
        raise ValueError(f"answer_ids must be integers, got {answer_ids.dtype}")
    if weights is not None and weights.shape != answer_ids.shape:
        raise ValueError(f"weights {tuple(weights.shape)} must match answer_ids {tuple(answer_ids.shape)}")


# ---------------------------------------------------------------- source cache

_loaded: dict[Path, GeneratedKernel] = {}


def compile_aggregate(spec: AggregateSpec, cache_dir: Path | None = None) -> GeneratedKernel:
    """Render, cache by content hash and import the vote kernel for `spec`."""
    path, content_hash = write_source(spec, cache_dir)
    if path in _loaded:
        return _loaded[path]
    module = _import_source(path, content_hash) if triton_importable() else None
    kernel = GeneratedKernel(spec, path, content_hash, module)
    _loaded[path] = kernel
    return kernel


def _import_source(path: Path, content_hash: str) -> ModuleType:
    name = f"ttsc_generated_{content_hash[:32]}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # Triton reads the kernel's source through its module
    module_spec.loader.exec_module(module)
    return module
