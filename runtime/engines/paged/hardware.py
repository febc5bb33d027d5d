"""Device-dependent defaults: the compute dtype and the KV memory cap."""

from __future__ import annotations

import functools
import os
import time

import torch

from ttsc.dsl.errors import UserError
from ttsc.runtime.engines.paged.model import Linear, ModelConfig

_CPU_KV_DEFAULT = 1 << 30


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device, cfg: ModelConfig) -> torch.dtype:
    """The compute dtype: as asked, else half precision on CUDA, bf16 on CPUs where it pays."""
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if isinstance(dtype, str):
        if dtype not in names:
            raise UserError(f"unknown dtype `{dtype}`", hint="use float32, bfloat16 or float16")
        return names[dtype]
    if dtype is not None:
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_bf16_is_faster(cfg.hidden_size, cfg.intermediate_size) \
        else torch.float32


@functools.cache
def cpu_bf16_is_faster(hidden: int, intermediate: int, batch: int = 64) -> bool:
    """Time one MLP-shaped product as the engine would run it, fp32 vs bf16 (AMX/AVX512-BF16 pay)."""
    def seconds(dtype: torch.dtype) -> float:
        x = torch.randn(batch, hidden).to(dtype)
        linear = Linear(torch.randn(2 * intermediate, hidden).to(dtype))
        with torch.inference_mode():
            for _ in range(3):
                linear(x)
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                for _ in range(10):
                    linear(x)
                best = min(best, time.perf_counter() - t0)
        return best

    return seconds(torch.bfloat16) * 1.25 < seconds(torch.float32)


def default_kv_bytes(device: torch.device) -> int:
    """An eighth of RAM (at most 1 GiB) on CPU; 40% of free GPU memory on CUDA."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.4)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return _CPU_KV_DEFAULT
    return min(_CPU_KV_DEFAULT, ram // 8)
