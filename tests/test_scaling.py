"""Test-time scaling on the real embedded model: a majority vote over 16
samples beats a single sample on single-digit addition."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_vote_at_16_beats_single_sample_on_addition():
    from ttsc.api import make_engines
    from ttsc.compiler.pipeline import compile_file
    from ttsc.runtime.eval import evaluate, load_dataset

    plan = compile_file(ROOT / "examples/self_consistency.tts").plan
    assert plan.region.nodes[plan.region.output].op == "output"
    rows = load_dataset(ROOT / "examples/data/addition.jsonl", plan.params, limit=30)
    summary = evaluate(plan, make_engines(plan), rows, scorer="number", seed=0, batch_size=16)
    assert summary.items == 30
    print(f"single sample {summary.sample_accuracy:.3f}, vote@16 {summary.accuracy:.3f}")
    assert summary.accuracy - summary.sample_accuracy >= 0.15
