"""Device-dependent defaults: the compute dtype and the KV memory cap."""

from __future__ import annotations

import functools
import os

import torch

from ttsc.common.cpu import cpu_flags
from ttsc.common.errors import UserError

_CPU_KV_DEFAULT = 1 << 30


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
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
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


@functools.cache
def cpu_has_native_bf16() -> bool:
    """bf16 pays on CPUs with AMX or AVX512-BF16 (measured ~2x over fp32 for this
    engine's matmuls). Read from the CPU's flags, not timed, so that the choice
    (and so the sampled tokens) never depends on how busy the machine is."""
    return bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})


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
