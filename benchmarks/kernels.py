"""Kernel benchmark: cascade decode attention vs per-sequence attention (SDPA).

Measured side by side in one run on a CUDA GPU:
- the device's copy bandwidth (device-to-device copy of a 1 GiB tensor);
- decode attention for N sequences sharing a prefix (N in {16, 64}, prefix in
  {1k, 2k, 4k}, a 128-token suffix each; fp16, Llama-3.2-1B heads: 32 query
  heads, 8 KV heads, head_dim 64): the cascade kernel against SDPA over each
  sequence's own KV (what attention without prefix sharing reads), with the
  achieved bandwidth of both as a fraction of the copy bandwidth;
- fused sampling and verifier scoring against their torch references.
Timings are medians of triton.testing.do_bench, which flushes the L2 cache
before every run, so a 4 MiB prefix is read from memory each time.

On a machine without a CUDA GPU it says so and exits 0. The last line printed
is one JSON object of figures.

    python -P benchmarks/kernels.py [--suffix 128]
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from ttsc.kernels.cascade_attention import cascade_attention
from ttsc.kernels.dispatch import triton_importable
from ttsc.kernels.sampling import sample
from ttsc.kernels.verifier_scoring import choice_logprobs

HQ, HKV, HEAD_DIM = 32, 8, 64  # Llama-3.2-1B attention shape
NUM_SEQS = (16, 64)
PREFIXES = (1024, 2048, 4096)
VOCAB = 49152  # SmolLM2's vocabulary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suffix", type=int, default=128, help="tokens each sequence generated so far")
    args = parser.parse_args()
    if not torch.cuda.is_available() or not triton_importable():
        missing = "no CUDA GPU was found" if not torch.cuda.is_available() else "Triton is not installed"
        print(f"{missing}: this benchmark measures cascade decode attention against per-sequence SDPA "
              f"(N in {list(NUM_SEQS)}, prefix in {list(PREFIXES)}, fp16, {HQ} q / {HKV} kv heads, "
              f"head_dim {HEAD_DIM}) and its bandwidth as a fraction of the device's copy bandwidth "
              "on a CUDA GPU; nothing to measure here.")
        print(json.dumps({"gpu": None, "reason": missing}))
        return

    from triton.testing import do_bench

    torch.manual_seed(0)
    copy_gbs = copy_bandwidth(do_bench)
    print(f"device: {torch.cuda.get_device_name()}  copy bandwidth: {copy_gbs:.0f} GB/s")
    print(f"{'N':>4} {'prefix':>7} {'suffix':>6} {'cascade us':>11} {'sdpa us':>9} {'speedup':>8} "
          f"{'cascade bw':>11} {'sdpa bw':>8} {'max err':>8}")
    cases = []
    for n in NUM_SEQS:
        for lp in PREFIXES:
            case = attention_case(do_bench, n, lp, args.suffix, copy_gbs)
            cases.append(case)
            print(f"{n:>4} {lp:>7} {args.suffix:>6} {case['cascade_us']:>11.1f} {case['sdpa_us']:>9.1f} "
                  f"{case['speedup']:>7.2f}x {case['cascade_bw_fraction']:>10.0%} "
                  f"{case['sdpa_bw_fraction']:>7.0%} {case['max_abs_err']:>8.1e}")
    others = [sampling_case(do_bench), verifier_case(do_bench)]
    for o in others:
        print(f"{o['kernel']:<18} B={o['rows']} V={VOCAB}: triton {o['triton_us']:.1f} us, "
              f"torch {o['torch_us']:.1f} us, {o['speedup']:.2f}x")

    def pick(n: int, lp: int) -> dict:
        return next(c for c in cases if c["n"] == n and c["prefix"] == lp)

    print(json.dumps({
        "gpu": torch.cuda.get_device_name(),
        "copy_bandwidth_gbs": round(copy_gbs, 1),
        "suffix": args.suffix,
        "speedup_n64_prefix2k": pick(64, 2048)["speedup"],
        "bw_fraction_n64_prefix2k": pick(64, 2048)["cascade_bw_fraction"],
        "best_bw_fraction": max(c["cascade_bw_fraction"] for c in cases),
        "attention": cases,
        "other_kernels": others,
    }))


def copy_bandwidth(do_bench) -> float:
    """GB/s of a device-to-device copy (bytes read + bytes written)."""
    src = torch.empty(1 << 29, dtype=torch.float16, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), return_mode="median")
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


def attention_case(do_bench, n: int, lp: int, ls: int, copy_gbs: float) -> dict:
    dev, dt = "cuda", torch.float16
    q = torch.randn(n, HQ, HEAD_DIM, device=dev, dtype=dt)
    pk, pv = (torch.randn(lp, HKV, HEAD_DIM, device=dev, dtype=dt) for _ in range(2))
    sk, sv = (torch.randn(n, ls, HKV, HEAD_DIM, device=dev, dtype=dt) for _ in range(2))
    lens = torch.full((n,), ls, device=dev, dtype=torch.int32)

    # Baseline: every sequence owns its full KV [N, Hkv, Lp+Ls, D], as without
    # prefix sharing. The G query heads of a KV head are SDPA's query length,
    # so GQA needs no KV duplication and SDPA can pick its flash kernel.
    full_k = torch.cat([pk.expand(n, -1, -1, -1), sk], dim=1).transpose(1, 2).contiguous()
    full_v = torch.cat([pv.expand(n, -1, -1, -1), sv], dim=1).transpose(1, 2).contiguous()
    q_sdpa = q.view(n, HKV, HQ // HKV, HEAD_DIM)

    def per_sequence() -> torch.Tensor:
        return F.scaled_dot_product_attention(q_sdpa, full_k, full_v).reshape(n, HQ, HEAD_DIM)

    def cascade() -> torch.Tensor:
        return cascade_attention(q, pk, pv, sk, sv, lens, backend="triton")

    err = (cascade().float() - per_sequence().float()).abs().max().item()
    cascade_ms = do_bench(cascade, return_mode="median")
    sdpa_ms = do_bench(per_sequence, return_mode="median")
    kv_token_bytes = 2 * HKV * HEAD_DIM * 2  # K and V, fp16
    io_bytes = 2 * n * HQ * HEAD_DIM * 2  # q in, out
    cascade_bytes = (lp + n * ls) * kv_token_bytes + io_bytes
    sdpa_bytes = n * (lp + ls) * kv_token_bytes + io_bytes
    return {
        "n": n, "prefix": lp, "suffix": ls,
        "cascade_us": cascade_ms * 1e3, "sdpa_us": sdpa_ms * 1e3,
        "speedup": round(sdpa_ms / cascade_ms, 3),
        "cascade_bw_fraction": round(cascade_bytes / (cascade_ms * 1e-3) / 1e9 / copy_gbs, 4),
        "sdpa_bw_fraction": round(sdpa_bytes / (sdpa_ms * 1e-3) / 1e9 / copy_gbs, 4),
        "max_abs_err": err,
    }


def sampling_case(do_bench, rows: int = 64) -> dict:
    logits = torch.randn(rows, VOCAB, device="cuda") * 4
    temperature = torch.full((rows,), 0.8, device="cuda")
    top_k = torch.full((rows,), 50, device="cuda", dtype=torch.int32)
    top_p = torch.full((rows,), 0.95, device="cuda")
    seeds = torch.arange(rows, device="cuda")
    t = do_bench(lambda: sample(logits, temperature, top_k, top_p, seeds, backend="triton"),
                 return_mode="median")
    r = do_bench(lambda: sample(logits, temperature, top_k, top_p, seeds, backend="torch"),
                 return_mode="median")
    return {"kernel": "sample", "rows": rows, "triton_us": t * 1e3, "torch_us": r * 1e3,
            "speedup": round(r / t, 3)}


def verifier_case(do_bench, rows: int = 64) -> dict:
    logits = torch.randn(rows, VOCAB, device="cuda", dtype=torch.bfloat16)
    ids = torch.randint(0, VOCAB, (rows, 2), device="cuda")
    t = do_bench(lambda: choice_logprobs(logits, ids, backend="triton"), return_mode="median")
    r = do_bench(lambda: choice_logprobs(logits, ids, backend="torch"), return_mode="median")
    return {"kernel": "choice_logprobs", "rows": rows, "triton_us": t * 1e3, "torch_us": r * 1e3,
            "speedup": round(r / t, 3)}


if __name__ == "__main__":
    main()
