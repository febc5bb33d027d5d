"""Evaluate a compiled strategy over a JSONL data set.

Inputs run in batches through the executor (one engine call per LLM stage for
the whole batch). Each finished item is appended to the results file at once,
so an interrupted run loses nothing done, and a rerun with the same results
file skips what is there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ttsc.compiler.plan import Plan
from ttsc.common.errors import UserError
from ttsc.runtime.data import ResultsWriter, check_fields, load_done, load_jsonl, row_id
from ttsc.runtime.engines.base import Engine
from ttsc.runtime.executor import Executor
from ttsc.runtime.scorers import get_scorer


@dataclass
class EvalSummary:
    items: int
    correct: int
    sample_accuracy: float | None  # mean share of correct single samples, when the output is a vote
    tokens: int  # prompt + generated tokens over the items run now
    generated_tokens: int
    run_items: int  # items computed in this run (the rest were resumed)
    seconds: float
    per_item: list[dict[str, Any]] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.correct / self.items if self.items else 0.0

    @property
    def tokens_per_input(self) -> float:
        return self.tokens / self.run_items if self.run_items else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"items": self.items, "accuracy": self.accuracy, "sample_accuracy": self.sample_accuracy,
                "tokens_per_input": self.tokens_per_input, "seconds": self.seconds,
                "run_items": self.run_items}


def load_dataset(path: str | Path, params: list[str], answer_field: str = "answer",
                 limit: int | None = None) -> list[dict[str, Any]]:
    rows = load_jsonl(path)
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise UserError(f"{path}: no data rows")
    check_fields(rows, path, [*params, answer_field])
    return list(rows)


def evaluate(plan: Plan, engines: dict[str, Engine], rows: list[dict[str, Any]], *,
             scorer: str = "number", answer_field: str = "answer", seed: int = 0,
             batch_size: int = 8, out: str | Path | None = None,
             on_item: Callable[[int, int], None] | None = None) -> EvalSummary:
    """Run `plan` on every row, score against `answer_field`, write per-item lines."""
    score = get_scorer(scorer)
    start = time.perf_counter()
    done = load_done(out) if out is not None and Path(out).exists() else {}
    ids = [row_id(r, i) for i, r in enumerate(rows)]
    todo = [i for i, k in enumerate(ids) if k not in done]
    results: dict[str, dict[str, Any]] = {k: v for k, v in done.items() if k in set(ids)}
    writer = ResultsWriter(out) if out is not None else None
    executor = Executor(plan, engines, seed=seed)
    tokens = generated = 0
    if on_item:
        on_item(len(results), len(rows))
    try:
        for b in range(0, len(todo), batch_size):
            chunk = todo[b:b + batch_size]
            run = executor.run([{p: rows[i][p] for p in plan.params} for i in chunk])
            usage = run.total_usage
            tokens += usage.prompt_tokens + usage.generated_tokens
            generated += usage.generated_tokens
            for j, i in enumerate(chunk):
                gold = str(rows[i][answer_field])
                pred = run.outputs[j]
                item: dict[str, Any] = {"id": ids[i], "prediction": pred, "answer": gold,
                                        "correct": bool(score(pred, gold))}
                if run.sample_answers is not None:
                    samples = run.sample_answers[j]
                    item["samples"] = samples
                    item["sample_correct"] = sum(bool(score(a, gold)) for a in samples)
                results[ids[i]] = item
                if writer:
                    writer.write(item)
            if on_item:
                on_item(len(results), len(rows))
    finally:
        if writer:
            writer.close()
    per_item = [results[k] for k in ids if k in results]
    with_samples = [r for r in per_item if r.get("samples")]
    sample_acc = (sum(r["sample_correct"] / len(r["samples"]) for r in with_samples) / len(with_samples)
                  if with_samples else None)
    return EvalSummary(len(per_item), sum(r["correct"] for r in per_item), sample_acc, tokens,
                       generated, len(todo), time.perf_counter() - start, per_item)
