"""Kernels: Triton on CUDA, a torch reference of the same function elsewhere.

Every entry point takes `backend="auto" | "triton" | "torch"`; "auto" runs
Triton on CUDA tensors when Triton is installed, the torch reference otherwise.
"""

from ttsc.kernels.aggregate import (AggregateSpec, GeneratedKernel, compile_aggregate, render_source,
                                    vote_reference)
from ttsc.kernels.cascade_attention import (attention_reference_per_sequence, cascade_attention,
                                            cascade_attention_reference, merge_attention_states)
from ttsc.kernels.dispatch import interpreter_ready, triton_usable
from ttsc.kernels.sampling import sample, sample_reference, uniform_from_seeds
from ttsc.kernels.verifier_scoring import choice_logprobs, choice_logprobs_reference

__all__ = [
    "AggregateSpec", "GeneratedKernel", "compile_aggregate", "render_source", "vote_reference",
    "attention_reference_per_sequence", "cascade_attention", "cascade_attention_reference",
    "merge_attention_states", "interpreter_ready", "triton_usable",
    "sample", "sample_reference", "uniform_from_seeds",
    "choice_logprobs", "choice_logprobs_reference",
]
