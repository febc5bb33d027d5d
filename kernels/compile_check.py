"""Compile every Triton kernel for a CUDA architecture without a GPU.

The interpreter runs kernels as Python and forgives what the compiler does not
(types that differ across an `if`, unsupported constructs); this check runs the
real compiler down to a cubin (Triton ships its own ptxas) for the launch
configurations ttsc uses, so a CPU-only machine still catches such errors.

    python -P -m ttsc.kernels.compile_check [--arch 90]

Must run in a process where Triton was imported without TRITON_INTERPRET=1.
"""

from __future__ import annotations

import argparse
import inspect
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ttsc.kernels.aggregate import AggregateSpec, compile_aggregate
from ttsc.kernels.cascade_attention import _prefix_attention_kernel, _suffix_merge_kernel
from ttsc.kernels.dispatch import TritonKernel, interpreter_forced
from ttsc.kernels.sampling import _sample_kernel
from ttsc.kernels.verifier_scoring import _choice_logprobs_kernel


@dataclass(frozen=True)
class CompileCase:
    name: str
    kernel: TritonKernel
    pointer_types: dict[str, str]  # argument -> "*fp16", ...; other arguments are i32 unless "fp32" given
    constants: dict[str, Any]
    num_warps: int = 4


def cases() -> list[CompileCase]:
    attn_ptrs = {"q_ptr": "*fp16", "k_ptr": "*fp16", "v_ptr": "*fp16", "scale_log2": "fp32"}
    out = [
        CompileCase("cascade prefix fp16", _prefix_attention_kernel,
                    {**attn_ptrs, "o_ptr": "*fp32", "lse_ptr": "*fp32"},
                    dict(G=4, D=64, BLOCK_M=128, BLOCK_N=64, BLOCK_D=64, DOT_PRECISION="tf32"), 8),
        CompileCase("cascade prefix fp32 gqa3", _prefix_attention_kernel,
                    {"q_ptr": "*fp32", "k_ptr": "*fp32", "v_ptr": "*fp32", "scale_log2": "fp32",
                     "o_ptr": "*fp32", "lse_ptr": "*fp32"},
                    dict(G=3, D=128, BLOCK_M=64, BLOCK_N=32, BLOCK_D=128, DOT_PRECISION="ieee"), 4),
        CompileCase("cascade suffix+merge fp16", _suffix_merge_kernel,
                    {**attn_ptrs, "lens_ptr": "*i32", "o_part_ptr": "*fp32", "lse_part_ptr": "*fp32",
                     "out_ptr": "*fp16"},
                    dict(G=4, D=64, BLOCK_G=16, BLOCK_N=64, BLOCK_D=64, DOT_PRECISION="tf32")),
        CompileCase("sample bf16", _sample_kernel,
                    {"logits_ptr": "*bf16", "temp_ptr": "*fp32", "top_k_ptr": "*i32", "top_p_ptr": "*fp32",
                     "uniform_ptr": "*fp32", "token_ptr": "*i64", "logprob_ptr": "*fp32"},
                    dict(BLOCK_V=4096, SEARCH_BLOCK=512, PIVOTS=16), 8),
        CompileCase("choice_logprobs fp32", _choice_logprobs_kernel,
                    {"logits_ptr": "*fp32", "ids_ptr": "*i64", "out_ptr": "*fp32"},
                    dict(BLOCK_V=4096, BLOCK_C=2), 8),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for spec in (AggregateSpec(False, None), AggregateSpec(True, 16)):
            generated = compile_aggregate(spec, Path(tmp))
            generated._module.vote_kernel.compiled  # reads the source before the directory goes
            out.append(CompileCase(f"vote {spec.chain} n={spec.num_samples}", generated._module.vote_kernel,
                                   {"ids_ptr": "*i64", "weights_ptr": "*fp32", "winner_ptr": "*i64"},
                                   dict(BLOCK_N=32), 1))
    return out


def compile_case(case: CompileCase, arch: int) -> Any:
    """Compile one case to a cubin for sm_<arch>; raises triton's CompilationError on failure."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {}
    for name in inspect.signature(case.kernel.fn).parameters:
        if name in case.constants:
            signature[name] = "constexpr"
        else:
            signature[name] = case.pointer_types.get(name, "i32")
    source = ASTSource(case.kernel.compiled, signature, case.constants)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": case.num_warps, "num_stages": 2})


def main() -> None:
    parser = argparse.ArgumentParser(description="compile ttsc's Triton kernels without a GPU")
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 80, 90")
    args = parser.parse_args()
    if interpreter_forced():
        raise SystemExit("compile_check compiles kernels: unset TRITON_INTERPRET and run it again")
    failed = 0
    for case in cases():
        try:
            compiled = compile_case(case, args.arch)
            print(f"ok      {case.name}  (shared memory {compiled.metadata.shared} B)")
        except Exception as e:  # report every kernel, then fail
            failed += 1
            print(f"FAILED  {case.name}: {type(e).__name__}: {e}")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
