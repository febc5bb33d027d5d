"""C++ kernels for the paged engine's decode step on CPU, with torch references.

At decode batch 64 a small model's matrix products take about as long as
everything around them: the old attention copied every row's KV blocks into a
padded tensor per layer before reading them, and RMSNorm, RoPE and SiLU were
chains of five or six eager ops each. `cpu_ops.cpp` holds five kernels:

    decode_attention(q, blocks, own_tables, own_lens, group_rows, group_tables,
                     group_lens, scale) -> out
        cascade decode attention read in place from the paged pool: each row
        attends to its own blocks and, if it is in a group, to the group's
        shared prefix, which is read once for up to 4 members at a time
    rms_norm(x, w, eps, dtype, add=None)
        fp32 rows -> normalized and scaled, in dtype; with `add`, first the
        residual update x += add, in place
    silu_mul(gate_up)                 [T, 2I] -> silu(gate) * up
    rope_store(qkv, positions, cos, sin, pool_layer, slots, H, Hkv)
        RoPE on q and k in place, then each token's K|V into its pool slot
    sample(logits, inv_temp, uniforms, greedy) -> (tokens, logprobs)
        per row, the inverse CDF of softmax(logits * inv_temp) at a uniform,
        or the argmax for greedy rows; the log-probability of the token

They are compiled on first use with the compiler torch's C++ extensions use
(`-O3 -march=native`, OpenMP through ATen's parallel_for) into
$TTSC_CACHE_DIR/kernels (default ~/.cache/ttsc/kernels), one build per CPU
type, and loaded from there afterwards (TTSC_CACHE_DIR=off: a temporary
folder, built again by each process). When no compiler is found, or
`TTSC_CPU_KERNELS=0`, `load()` returns None and the engine keeps its torch
path. Each kernel's reference below is the torch code the engine runs without
them; tests compare the two.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import warnings
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

from ttsc.common import paths

SOURCE = Path(__file__).with_name("cpu_ops.cpp")
HEAD_DIMS = (16, 32, 64, 128, 256)  # decode_attention is compiled for these


def enabled() -> bool:
    return os.environ.get("TTSC_CPU_KERNELS", "1").strip().lower() not in ("0", "off", "false", "no")


@functools.cache
def load() -> ModuleType | None:
    """The compiled kernels, building them if needed; None where they cannot be built."""
    if not enabled():
        return None
    from torch.utils import cpp_extension

    build = paths.room("kernels") / f"cpu_ops-{_cpu_key()}"
    build.mkdir(parents=True, exist_ok=True)
    try:
        return cpp_extension.load(
            name="ttsc_cpu_ops", sources=[str(SOURCE)], build_directory=str(build),
            extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"],
            verbose=False)
    except Exception as exc:  # no compiler, no ninja, a toolchain error: the torch path still works
        warnings.warn(f"ttsc: CPU kernels unavailable, using the torch path ({exc.__class__.__name__}: "
                      f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else ''})", stacklevel=2)
        return None


def _cpu_key() -> str:
    """Builds use -march=native: one per CPU model, flag set and torch version."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "model name")):
                flags += line
                if line.startswith("flags"):
                    break
    except OSError:
        pass
    text = f"{platform.machine()}|{flags}|{torch.__version__}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# ------------------------------------------------------------- references


def decode_attention_reference(q: torch.Tensor, blocks: torch.Tensor, own_tables: torch.Tensor,
                               own_lens: torch.Tensor, group_rows: torch.Tensor,
                               group_tables: torch.Tensor, group_lens: torch.Tensor,
                               scale: float) -> torch.Tensor:
    """Row r attends to its group's prefix (if any) then its own tokens; plain softmax in fp32.

    q [R, H, D], blocks [NB, bs, 2, Hkv, D], own_tables [R, n], own_lens [R],
    group_rows [NG, Gmax] (-1 pads), group_tables [NG, m], group_lens [NG].
    """
    r_count, h, d = q.shape
    _, bs, _, hkv, _ = blocks.shape
    tokens = blocks.reshape(-1, 2, hkv, d).float()  # slot = block * bs + offset

    def slots(table: torch.Tensor, length: int) -> torch.Tensor:
        pos = torch.arange(int(length))
        return table[pos // bs] * bs + pos % bs

    prefix = {int(row): g for g, members in enumerate(group_rows) for row in members if row >= 0}
    out = torch.zeros(r_count, h, d)
    for r in range(r_count):
        own = slots(own_tables[r], own_lens[r])
        g = prefix.get(r)
        keys = own if g is None else torch.cat([slots(group_tables[g], group_lens[g]), own])
        if keys.numel() == 0:
            continue
        kv = tokens[keys].repeat_interleave(h // hkv, dim=2)  # [S, 2, H, D]
        scores = torch.einsum("hd,shd->hs", q[r].float() * scale, kv[:, 0])
        out[r] = torch.einsum("hs,shd->hd", torch.softmax(scores, dim=-1), kv[:, 1])
    return out.to(q.dtype)


def rms_norm_reference(x: torch.Tensor, w: torch.Tensor, eps: float, dtype: torch.dtype,
                       add: torch.Tensor | None = None) -> torch.Tensor:
    if add is not None:
        x.add_(add)
    return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w).to(dtype)


def silu_mul_reference(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.float().chunk(2, dim=-1)
    return (F.silu(gate) * up).to(gate_up.dtype)


def rope_store_reference(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
                         sin: torch.Tensor, pool_layer: torch.Tensor, slots: torch.Tensor,
                         heads: int, hkv: int) -> None:
    t = qkv.shape[0]
    d = 2 * cos.shape[1]
    qk = qkv[:, :(heads + hkv) * d].view(t, heads + hkv, d // 2, 2).float()
    c, s = cos[positions][:, None], sin[positions][:, None]  # [T, 1, D/2]
    a, b = qk[..., 0], qk[..., 1]
    rotated = torch.stack([a * c - b * s, a * s + b * c], dim=-1).flatten(-2)
    qkv[:, :(heads + hkv) * d] = rotated.flatten(1).to(qkv.dtype)
    flat = pool_layer.view(-1, 2 * hkv * d)
    flat.index_copy_(0, slots, qkv[:, heads * d:])


def sample_reference(logits: torch.Tensor, inv_temp: torch.Tensor, uniforms: torch.Tensor,
                     greedy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scaled = logits.float() * torch.where(greedy, torch.ones_like(inv_temp), inv_temp)[:, None]
    probs = torch.softmax(scaled, dim=-1)
    cdf = probs.cumsum(-1)
    drawn = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None], right=True)[:, 0]
    tokens = torch.where(greedy, scaled.argmax(-1), drawn.clamp(max=logits.shape[1] - 1))
    return tokens, probs.gather(1, tokens[:, None])[:, 0].log()
