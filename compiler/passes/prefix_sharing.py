"""Prefix sharing: lay prompts out shared part first, and predict what a
prefix cache saves.

The pass rewrites per-candidate prompts question-first (`prefix.rewrite`),
then predicts, from the per-input prefix trie of the whole plan
(`prefix.predict`), the prefill tokens with and without sharing, the KV peak
and the latency (every sample at max_tokens: upper bounds), which go to the
plan's facts; each LLM stage's longest-prefix-first order goes to its nodes'
`prefix_rank`. The headline token predictions are `predict_tokens`'.
"""

from __future__ import annotations

from typing import Any

from ttsc.compiler import model_facts
from ttsc.compiler.ir import Program
from ttsc.compiler.passes.manager import PassResult
from ttsc.compiler.prefix.predict import analyze, kv_peak
from ttsc.compiler.prefix.rewrite import rewrite_layouts


def prefix_sharing(program: Program) -> PassResult:
    changed_notes = rewrite_layouts(program)
    analysis = analyze(program)
    t = analysis.totals()
    notes = list(changed_notes)
    facts: dict[str, Any] = {}
    if analysis.stages:
        saved = t["without"] - t["with"]
        facts = {
            "prefill_tokens_per_input": {"with_sharing": t["with"], "without_sharing": t["without"]},
            "prefill_tokens_saved": saved,
            "prefill_shared_across_inputs": t["cross_input"],
            "tokens_at_most_per_input": t["with"] + t["generated"],
            "kv_peak_bytes": kv_peak(analysis),
            "predicted_latency_s": round(t["seconds"], 3),
            "token_counts": "exact" if analysis.exact else "estimated",
        }
        ratio = t["without"] / t["with"] if t["with"] else 1.0
        analysis_notes = [f"prefill tokens per input: {t['with']} with a prefix cache, "
                          f"{t['without']} without ({ratio:.1f}x); {t['cross_input']} more "
                          "shared by every input of a batch"]
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
