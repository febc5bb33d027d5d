"""Token predictions in the runtime's headline terms, once the graph is final.

Per input, as the runtime counts them: tokens computed (prompt tokens the
engine computes: a prefix shared within an input once, and one shared by
every input once per run where the engine caches prefixes; plus generated),
tokens requested (the prompt once per sample, plus generated) and generated
tokens, with every sample at its expected length (`prefix.predict.
expected_lengths`: calibrated, or the prior length model) rather than at
max_tokens. The basis goes to the plan's facts and `--explain`, so a
prediction from priors says why a run may differ.
"""

from __future__ import annotations

from ttsc.compiler.ir import Program
from ttsc.compiler.passes.manager import PassResult
from ttsc.compiler.prefix.layout import caches_prefixes
from ttsc.compiler.prefix.predict import analyze, expected_lengths


def predict_tokens(program: Program) -> PassResult:
    made, basis = expected_lengths(program)
    expected = analyze(program, made=made)
    if not expected.stages:
        return PassResult(False, [])
    prompt = sum(s.prefill_with - s.cross_input_tokens if caches_prefixes(program, s.model)
                 else s.prefill_without for s in expected.stages)
    t = expected.totals()
    facts = {"predicted_tokens_per_input": prompt + t["generated"],
             "predicted_tokens_requested_per_input": t["without"] + t["generated"],
             "predicted_generated_tokens_per_input": t["generated"],
             "predicted_lengths": basis}
    program.meta.setdefault("plan_facts", {}).update(facts)
    notes = [f"tokens per input: {facts['predicted_tokens_per_input']} computed (prompt tokens the "
             f"engine runs, plus generated), {facts['predicted_tokens_requested_per_input']} "
             f"requested (the prompt once per sample, plus generated), {t['generated']} generated",
             f"lengths from {basis}"]
    return PassResult(False, notes)
