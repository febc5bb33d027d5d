"""C++ kernels for the paged engine's decode step on CPU, with torch references.

At decode batch 64 a small model's matrix products take about as long as
everything around them: the old attention copied every row's KV blocks into a
padded tensor per layer before reading them, and RMSNorm, RoPE and SiLU were
chains of five or six eager ops each. `cpu_ops.cpp` holds these kernels:

    decode_attention(q, blocks, own_tables, own_lens, group_rows, group_tables,
                     group_lens, scale) -> out
        cascade decode attention read in place from the paged pool: each row
        attends to its own blocks and, if it is in a group, to the group's
        shared prefix, which is read once per KV head for up to 8 members at
        a time. bf16 on a CPU with AVX512-BF16: each 16-key chunk is
        transposed once and scored with vdpbf16ps (exact bf16 products, fp32
        sums), softmax and values in fp32 for 4 queries at a time; fp32 (and
        CPUs without it) keep the fp32 path. Either way a query's arithmetic
        is fixed: the same bits in any batch, group or query block
    rms_norm(x, w, eps, dtype, add=None)
        fp32 rows -> normalized and scaled, in dtype; with `add`, first the
        residual update x += add, in place (this and the next two run a
        decode step's rows on the calling thread: on a shared machine a
        parallel region's wake-up costs more than these passes)
    silu_mul(gate_up)                 [T, 2I] -> silu(gate) * up
    rope_store(qkv, positions, cos, sin, pool_layer, slots, H, Hkv)
        RoPE on q and k in place, then each token's K|V into its pool slot
    sample(logits, inv_temp, uniforms, greedy) -> (tokens, logprobs)
        per row, the inverse CDF of softmax(logits * inv_temp) at a uniform,
        or the argmax for greedy rows; the log-probability of the token
    sample_top(logits, inv_temp, top_k, top_p, uniforms) -> (tokens, logprobs)
        top-k / top-p rows: streaming passes (max, softmax sum, one
        selection: a heap of the k likeliest, or the weights' binary
        exponent bins that hold the nucleus); only the candidates are sorted

    prefill_attention(q, blocks, tables, starts, q_lens, scale) -> out
        causal attention of each new prompt token over its sequence's blocks,
        with the same 16-key chunks as decode: a token's attention does not
        depend on how its prompt was cut into prefill chunks, on what the
        prefix cache held, or on the other sequences of the step

They are compiled on first use with the compiler torch's C++ extensions use
(`-O3 -march=native`, OpenMP through ATen's parallel_for) into
$TTSC_CACHE_DIR/kernels/cpu_ops-KEY (default ~/.cache/ttsc/kernels), and
loaded from there afterwards. KEY hashes the source's content, the CPU (model
and flags, as -march=native depends on them), the torch version and the
compiler flags, and the build compiles a copy of the source kept in that
folder: every install of the same code on one machine shares one build, and a
changed source gets a new one instead of rebuilding another install's.
A build takes about 40 s and says so on stderr; two processes building at
once take turns. (TTSC_CACHE_DIR=off: a temporary folder, built again by each
process.) When no compiler is found, or `TTSC_CPU_KERNELS=0`, `load()` returns
None and the engine keeps its torch path. Each kernel's reference below is the
torch code the engine runs without them; tests compare the two.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import shutil
import sys
import time
import warnings
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

from ttsc.common import paths

SOURCE = Path(__file__).with_name("cpu_ops.cpp")
HEAD_DIMS = (16, 32, 64, 128, 256)  # the attention kernels are compiled for these
CFLAGS = ("-O3", "-march=native", "-fopenmp")
LDFLAGS = ("-fopenmp",)
BUILD_SECONDS = 40  # what a first build takes on a 2-core machine, said before it starts


def enabled() -> bool:
    return os.environ.get("TTSC_CPU_KERNELS", "1").strip().lower() not in ("0", "off", "false", "no")


@functools.cache
def load() -> ModuleType | None:
    """The compiled kernels, building them if needed; None where they cannot be built."""
    if not enabled():
        return None
    try:
        return _load_or_build(SOURCE)
    except Exception as exc:  # no compiler, no ninja, a toolchain error: the torch path still works
        warnings.warn(f"ttsc: CPU kernels unavailable, using the torch path ({exc.__class__.__name__}: "
                      f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else ''})", stacklevel=2)
        return None


def build_key(source: Path = SOURCE) -> str:
    """What a build depends on: the source's content, the CPU, torch and the flags."""
    text = "|".join([hashlib.sha256(source.read_bytes()).hexdigest(), platform.machine(), _cpu_flags(),
                     torch.__version__, " ".join(CFLAGS + LDFLAGS)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_dir(source: Path = SOURCE) -> Path:
    """The folder holding the build of `source` for this machine (not created here)."""
    return paths.room("kernels") / f"cpu_ops-{build_key(source)}"


def _load_or_build(source: Path) -> ModuleType:
    key = build_key(source)
    folder = build_dir(source)
    name = f"ttsc_cpu_ops_{key}"  # one extension name per build: never another build's module
    built = folder / f"{name}.so"
    if not built.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "build.lock", "w") as lock:  # torch itself uses `lock`
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it right now
            if not built.is_file():
                sys.modules[name] = _build(source, folder, name)
    return _import_extension(name, built)


def _build(source: Path, folder: Path, name: str) -> ModuleType:
    # The build compiles a copy kept next to it: build.ninja then names the same
    # file whichever install asked, so installs never rebuild each other's.
    copy = folder / f"{name}.cpp"
    shutil.copyfile(source, copy)
    print(f"ttsc: building the C++ CPU kernels (once per machine and version, about "
          f"{BUILD_SECONDS} s) in {folder}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    from torch.utils import cpp_extension

    module = cpp_extension.load(name=name, sources=[str(copy)], build_directory=str(folder),
                                extra_cflags=list(CFLAGS), extra_ldflags=list(LDFLAGS), verbose=False)
    print(f"ttsc: CPU kernels built in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return module


def _import_extension(name: str, path: Path) -> ModuleType:
    """Import a built extension straight from its file (no ninja run, no version check)."""
    if name in sys.modules:
        return sys.modules[name]
    loader = importlib.machinery.ExtensionFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, str(path), loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    sys.modules[name] = module
    return module


def _cpu_flags() -> str:
    """Builds use -march=native: the CPU's model name and flag set."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "model name")):
                flags += line
                if line.startswith("flags"):
                    break
    except OSError:
        pass
    return flags


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


def sample_top_reference(logits: torch.Tensor, inv_temp: torch.Tensor, top_k: torch.Tensor,
                         top_p: torch.Tensor, uniforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k, then top-p over the renormalized top-k, then the inverse CDF at u;
    ranked by logit, ties by token id; log-probabilities before truncation."""
    tokens, logprobs = [], []
    v = logits.shape[1]
    for r in range(logits.shape[0]):
        probs = torch.softmax(logits[r].float() * inv_temp[r], dim=-1)
        order = sorted(range(v), key=lambda j: (-float(logits[r, j]), j))
        ranked = probs[order]
        k = int(top_k[r]) if 0 < int(top_k[r]) < v else v
        ranked = ranked[:k]
        mass = ranked.sum() if k < v else torch.tensor(1.0)
        keep = (ranked.cumsum(0) - ranked) < float(top_p[r]) * mass
        keep[0] = True
        kept = ranked * keep
        cdf = kept.cumsum(0)
        pick = int(torch.searchsorted(cdf, (uniforms[r] * cdf[-1]).reshape(1), right=True).clamp(max=k - 1))
        tokens.append(order[pick])
        logprobs.append(float(probs[order[pick]].log()))
    return torch.tensor(tokens), torch.tensor(logprobs)
