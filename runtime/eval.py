"""Evaluate a compiled strategy over a JSONL data set.

Inputs run through the executor each at its own pace, `batch_size` of them in
flight at once. Each finished item is appended to the results file at once,
with what it cost and what produced it (plan hash, strategy, model specs,
seed), so an interrupted run loses nothing done and a rerun skips what is
there; a results file written by another strategy, plan, model or seed is an
error, not a silent resume.

Accuracy comes with a 95% bootstrap interval over items; where the output is
a vote over kept samples, coverage too (pass@k, the unbiased estimator).

Token figures (per item and in the summary), from each call's own usage:
- tokens computed: prompt tokens the engines computed plus generated tokens,
  the headline (a prompt shared by 16 samples counts once);
- tokens requested: the prompt once per sample, plus generated tokens;
- generated tokens.
Calls answered from the call cache count with the usage recorded when they
were computed, so a rerun prints the same figures; the cache line says what
was really computed this time.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ttsc.common.errors import UserError
from ttsc.compiler.plan import Plan
from ttsc.runtime.data import (ResultsWriter, Rows, check_fields, check_unique_ids, load_data,
                               load_done, row_id)
from ttsc.runtime.engines.base import Engine, Usage
from ttsc.runtime.executor import Executor, InputResult
from ttsc.runtime.metrics import bootstrap_ci, coverage
from ttsc.runtime.scorers import DEFAULT_SCORER, Scorer, get_scorer, gold_of


@dataclass
class EvalSummary:
    items: int
    correct: int
    sample_accuracy: float | None  # mean share of correct single samples, when the output is a vote
    run_items: int  # items computed in this run (the rest were resumed)
    seconds: float
    per_item: list[dict[str, Any]] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)  # this run's engine calls (cache counts included)
    budget: float | None = None  # a data-set token budget, when the run allocated one

    @property
    def accuracy(self) -> float:
        return self.correct / self.items if self.items else 0.0

    @property
    def accuracy_ci(self) -> tuple[float, float]:
        """95% percentile-bootstrap interval of the accuracy, over items."""
        return bootstrap_ci([float(r["correct"]) for r in self.per_item])

    @property
    def pass_at(self) -> dict[int, float]:
        """Coverage: pass@k (unbiased estimator) for the k every item's kept
        samples allow; empty when the output keeps no samples."""
        kept = [r for r in self.per_item if r.get("samples")]
        if not kept or len(kept) < len(self.per_item):
            return {}
        return coverage([(len(r["samples"]), r["sample_correct"]) for r in kept])

    def _per_item(self, key: str) -> float:
        known = [r["tokens"][key] for r in self.per_item if "tokens" in r]
        return sum(known) / len(known) if known else 0.0

    @property
    def tokens_per_input(self) -> float:
        """Tokens computed per item (prompt computed + generated): the headline."""
        return self._per_item("computed")

    @property
    def requested_per_input(self) -> float:
        return self._per_item("requested")

    @property
    def generated_per_input(self) -> float:
        return self._per_item("generated")

    @property
    def tokens(self) -> int:
        """Tokens computed over every item."""
        return sum(r["tokens"]["computed"] for r in self.per_item if "tokens" in r)

    def as_dict(self) -> dict[str, Any]:
        out = {"items": self.items, "accuracy": self.accuracy, "accuracy_ci": list(self.accuracy_ci),
               "sample_accuracy": self.sample_accuracy,
               "pass_at_k": {str(k): v for k, v in self.pass_at.items()},
               "tokens_per_input": self.tokens_per_input,
               "requested_tokens_per_input": self.requested_per_input,
               "generated_tokens_per_input": self.generated_per_input,
               "tokens": self.tokens, "seconds": self.seconds, "run_items": self.run_items,
               "cache_hits": self.usage.cache_hits, "cache_misses": self.usage.cache_misses}
        if self.budget is not None:
            out["budget_tokens"] = self.budget
        return out


# ------------------------------------------------------------------ data


def load_dataset(path: str | Path, params: Sequence[str], answer_field: str = "answer",
                 limit: int | None = None) -> Rows:
    """The rows of a data set (a JSONL file or a `reasoning-gym:` spec),
    checked: required fields, unique ids."""
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1 (got {limit})")
    rows = load_data(path)
    if limit is not None:
        rows = rows.head(limit)
    if not rows:
        raise UserError(f"{path}: no data rows")
    check_fields(rows, path, [*params, answer_field])
    check_unique_ids(rows, path)
    return rows


def scorer_for(rows: Sequence[dict[str, Any]], explicit: str | None = None) -> str:
    """The scorer to use: --scorer when given, else the one the data selects
    (reasoning-gym data: its tasks' own), else the default."""
    return explicit or getattr(rows, "scorer", None) or DEFAULT_SCORER


# ------------------------------------------------------------------ provenance


def run_signature(plan: Plan, seed: int, data: str | None = None) -> dict[str, Any]:
    """What produced a results file: another plan, model or seed gives other
    answers. `data` is the spec of generated data (`Rows.source`): other
    options generate other items under the same ids. A file's path is not
    recorded (a file may move)."""
    computed = {k: v for k, v in plan.to_dict().items() if k not in ("file", "passes", "facts")}
    digest = hashlib.sha256(json.dumps(computed, sort_keys=True, default=str).encode()).hexdigest()
    signature = {"plan": digest[:16], "strategy": plan.strategy, "models": dict(plan.models),
                 "seed": seed}
    if data is not None:
        signature["data"] = data
    return signature


def _produced_by(signature: dict[str, Any]) -> str:
    text = (f"strategy `{signature.get('strategy')}`, plan {signature.get('plan')}, "
            f"models {signature.get('models')}, seed {signature.get('seed')}")
    return text + (f", data {signature['data']}" if signature.get("data") else "")


def load_results(out: str | Path, signature: dict[str, Any], force: bool = False
                 ) -> dict[str, dict[str, Any]]:
    """Finished items of a results file written by this same run; with `force`,
    an existing file is set aside (FILE.old) and the run starts over."""
    path = Path(out)
    if not path.exists():
        return {}
    if force:
        os.replace(path, path.with_name(path.name + ".old"))
        return {}
    done = load_done(path)
    for record in done.values():
        if record.get("produced_by") != signature:
            theirs = record.get("produced_by")
            what = (_produced_by(theirs) if isinstance(theirs, dict)
                    else "an unknown run (no record of what produced it)")
            raise UserError(
                f"{path}: these results were produced by {what}; this run is "
                f"{_produced_by(signature)}",
                hint="use another --out file, or --force to start over (the old file is kept as "
                     f"{path.name}.old)")
    return done


# ------------------------------------------------------------------ running


@dataclass
class Resumed:
    """Where an evaluation stands: each row's id, the rows still to run (by
    index), and the finished items read back from the results file."""

    ids: list[str]
    todo: list[int]
    results: dict[str, dict[str, Any]]


def resume(rows: Sequence[dict[str, Any]], out: str | Path | None, signature: dict[str, Any],
           force: bool = False) -> Resumed:
    done = load_results(out, signature, force) if out is not None else {}
    ids = [row_id(r, i) for i, r in enumerate(rows)]
    wanted = set(ids)
    return Resumed(ids, [i for i, k in enumerate(ids) if k not in done],
                   {k: v for k, v in done.items() if k in wanted})


def item_record(item_id: str, row: dict[str, Any], result: InputResult, score: Scorer,
                answer_field: str, signature: dict[str, Any]) -> dict[str, Any]:
    """One results line: the prediction, its score, the samples, what it cost."""
    gold = gold_of(row, answer_field)
    pred = result.output
    usage = result.total_usage
    item: dict[str, Any] = {"id": item_id, "prediction": pred, "answer": str(gold),
                            "correct": bool(score(pred, gold))}
    if result.sample_answers is not None:
        item["samples"] = result.sample_answers
        item["sample_correct"] = sum(bool(score(a, gold)) for a in result.sample_answers)
    item["tokens"] = {"computed": usage.tokens_computed,
                      "requested": usage.prompt_tokens + usage.generated_tokens,
                      "generated": usage.generated_tokens}
    item["seconds"] = round(result.seconds, 3)
    item["produced_by"] = signature
    return item


def summarize(rows: Sequence[dict[str, Any]], results: dict[str, dict[str, Any]], run_items: int,
              seconds: float, usage: Usage, budget: float | None = None) -> EvalSummary:
    ids = [row_id(r, i) for i, r in enumerate(rows)]
    per_item = [results[k] for k in ids if k in results]
    with_samples = [r for r in per_item if r.get("samples")]
    sample_acc = (sum(r["sample_correct"] / len(r["samples"]) for r in with_samples) / len(with_samples)
                  if with_samples else None)
    return EvalSummary(len(per_item), sum(r["correct"] for r in per_item), sample_acc, run_items,
                       seconds, per_item, usage, budget)


class Ledger:
    """The books of an evaluation while its items finish, in any order: the
    rows still to run (after resuming from the results file), each finished
    item's line (appended to the file at once), the usage, the progress
    calls. `evaluate`, the Ray driver and adaptive rounds keep theirs here.
    A context manager: leaving it closes the results file."""

    def __init__(self, plan: Plan, rows: Sequence[dict[str, Any]], *, scorer: str = DEFAULT_SCORER,
                 answer_field: str = "answer", seed: int = 0, out: str | Path | None = None,
                 force: bool = False, on_item: Callable[[int, int], None] | None = None,
                 data: str | None = None):
        self.rows, self.answer_field, self.on_item = rows, answer_field, on_item
        self.score = get_scorer(scorer)
        self.signature = run_signature(plan, seed, data)
        self.start = time.perf_counter()
        state = resume(rows, out, self.signature, force)
        self.ids, self.todo, self.results = state.ids, state.todo, state.results
        # The inputs still to run, in the order of `todo`.
        self.inputs = [{p: rows[i][p] for p in plan.params} for i in self.todo]
        self.usage = Usage()
        self.writer = ResultsWriter(out) if out is not None and self.todo else None
        self.progress()

    def record(self, j: int, result: InputResult, count_usage: bool = True,
               **extra: Any) -> None:
        """Input `todo[j]` finished with `result`: its line, kept and written."""
        i = self.todo[j]
        item = item_record(self.ids[i], self.rows[i], result, self.score, self.answer_field,
                           self.signature)
        item.update(extra)
        self.results[self.ids[i]] = item
        if count_usage:
            self.usage = self.usage + result.total_usage
        if self.writer:
            self.writer.write(item)

    def progress(self) -> None:
        if self.on_item:
            self.on_item(len(self.results), len(self.rows))

    def summary(self, budget: float | None = None) -> EvalSummary:
        return summarize(self.rows, self.results, len(self.todo), time.perf_counter() - self.start,
                         self.usage, budget)

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.writer:
            self.writer.close()


def evaluate(plan: Plan, engines: dict[str, Engine], rows: Sequence[dict[str, Any]], *,
             scorer: str = DEFAULT_SCORER, answer_field: str = "answer", seed: int = 0,
             batch_size: int = 8, out: str | Path | None = None, force: bool = False,
             on_item: Callable[[int, int], None] | None = None,
             data: str | None = None) -> EvalSummary:
    """Run `plan` on every row, score against `answer_field`, write per-item lines.
    `batch_size` inputs are in flight at once; `data`, the spec of generated
    rows, is recorded in each line (see `run_signature`)."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1 (got {batch_size})")
    with Ledger(plan, rows, scorer=scorer, answer_field=answer_field, seed=seed, out=out,
                force=force, on_item=on_item, data=data) as ledger:

        def finished(j: int, result: InputResult) -> None:
            ledger.record(j, result)
            ledger.progress()

        Executor(plan, engines, seed=seed).run(ledger.inputs, concurrency=batch_size,
                                               on_result=finished)
    return ledger.summary()
