"""Prefix sharing: lay prompts out shared part first, and predict what a
prefix cache saves.

The pass rewrites per-candidate prompts question-first (`prefix.rewrite`),
then predicts, from the per-input prefix trie of the whole plan
(`prefix.predict`), the prefill tokens with and without sharing, the KV peak
and the latency (every sample at max_tokens: upper bounds), and the tokens
computed, requested and generated per input with samples at their expected
lengths (the runtime's headline figures), which go to the plan's facts; each
LLM stage's longest-prefix-first order goes to its nodes' `prefix_rank`.
"""

from __future__ import annotations

from typing import Any

from ttsc.compiler import model_facts
from ttsc.compiler.ir import Program
from ttsc.compiler.passes.manager import PassResult
from ttsc.compiler.prefix.layout import caches_prefixes
from ttsc.compiler.prefix.predict import analyze, expected_lengths, kv_peak
from ttsc.compiler.prefix.rewrite import rewrite_layouts


def predicted_tokens(program: Program) -> dict[str, Any]:
    """Per input, as the runtime counts them: tokens computed (prompt tokens
    computed, a prefix shared within an input once and one shared by every
    input once per run where the engine caches prefixes, plus generated),
    tokens requested (the prompt once per sample, plus generated) and
    generated tokens, with samples at their expected lengths."""
    made, basis = expected_lengths(program)
    expected = analyze(program, made=made)
    prompt = sum(s.prefill_with - s.cross_input_tokens if caches_prefixes(program, s.model)
                 else s.prefill_without for s in expected.stages)
    t = expected.totals()
    return {"predicted_tokens_per_input": prompt + t["generated"],
            "predicted_tokens_requested_per_input": t["without"] + t["generated"],
            "predicted_generated_tokens_per_input": t["generated"],
            "predicted_lengths": basis}


def prefix_sharing(program: Program) -> PassResult:
    changed_notes = rewrite_layouts(program)
    analysis = analyze(program)
    t = analysis.totals()
    notes = list(changed_notes)
    facts: dict[str, Any] = {}
    if analysis.stages:
        saved = t["without"] - t["with"]
        tokens = predicted_tokens(program)
        facts = {
            "prefill_tokens_per_input": {"with_sharing": t["with"], "without_sharing": t["without"]},
            "prefill_tokens_saved": saved,
            "prefill_shared_across_inputs": t["cross_input"],
            **tokens,
            "tokens_at_most_per_input": t["with"] + t["generated"],
            "kv_peak_bytes": kv_peak(analysis),
            "predicted_latency_s": round(t["seconds"], 3),
            "token_counts": "exact" if analysis.exact else "estimated",
        }
        ratio = t["without"] / t["with"] if t["with"] else 1.0
        analysis_notes = [f"prefill tokens per input: {t['with']} with a prefix cache, "
                          f"{t['without']} without ({ratio:.1f}x); {t['cross_input']} more "
                          "shared by every input of a batch",
                          f"predicted tokens per input: {tokens['predicted_tokens_per_input']} computed "
                          f"(prompt tokens the engine runs, plus generated), "
                          f"{tokens['predicted_tokens_requested_per_input']} requested (the prompt "
                          f"once per sample, plus generated), "
                          f"{tokens['predicted_generated_tokens_per_input']} generated; at most "
                          f"{t['with'] + t['generated']} with every sample at max_tokens",
                          f"lengths from {tokens['predicted_lengths']}"]
        for s in analysis.stages:
            if len(s.order) > 1:
                analysis_notes.append(f"{s.name}: longest-prefix-first order {', '.join(s.order)}")
        analysis_notes += [f"token counts {h}" for h in analysis.how]
        unknown = sorted({s.model for s in analysis.stages
                          if model_facts.model_shape(s.model).source == "default"})
        if unknown:
            analysis_notes.append("no config known for " + ", ".join(unknown) + ": KV bytes and "
                                  "latency assume a Llama-3-8B-shaped model")
        # The pass runs in a fixpoint loop: report the analysis once, not every round.
        if program.meta.get("prefix_notes") != analysis_notes:
            program.meta["prefix_notes"] = analysis_notes
            notes += analysis_notes
        # Per LLM batch, for `--emit json`: prefill with and without a prefix
        # cache, and the longest-prefix-first order of its nodes' requests.
        facts["prefix_stages"] = [
            {"stage": s.name, "model": s.model, "nodes": s.nodes, "rounds": s.rounds,
             "prefill_with_sharing": s.prefill_with, "prefill_without_sharing": s.prefill_without,
             "generated_at_most": s.generated, "order": s.order,
             "predicted_seconds": round(s.seconds, 4)} for s in analysis.stages]
    program.meta.setdefault("plan_facts", {}).update(facts)
    return PassResult(bool(changed_notes), notes)
