"""Kernels: Triton on CUDA, a torch reference of the same function elsewhere.

Every entry point takes `backend="auto" | "triton" | "torch"`; "auto" runs
Triton on CUDA tensors when Triton is installed, the torch reference otherwise.
Import from the module that holds each kernel (this package imports nothing,
so the compiler can generate kernel source without loading torch):

    ttsc.kernels.cascade_attention   shared-prefix decode attention (+ reference)
    ttsc.kernels.sampling            fused per-row temperature / top-k / top-p sampling
    ttsc.kernels.verifier_scoring    log-probabilities of a few tokens, online LSE
    ttsc.kernels.aggregate_codegen   Triton source for vote chains (no torch)
    ttsc.kernels.aggregate           loads and runs generated vote kernels
    ttsc.kernels.dispatch            Triton-or-reference choice
"""
