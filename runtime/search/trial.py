"""One configuration of a space: compile it, evaluate it, say what it scored
and cost.

A configuration compiles with its knobs fixed; `auto` knobs left are solved
by the allocator against the budget. One the cost model says cannot keep the
budget does not run (it is over budget before any call). One that runs is
evaluated on the data like `ttsc eval` does, its per-item lines written to
its own file, every call through the search's engines and call cache.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ttsc.common.errors import BudgetInfeasible, UserError
from ttsc.compiler.pipeline import compile_program, load_program
from ttsc.compiler.plan import Plan
from ttsc.runtime.engines.setup import apply_model_overrides
from ttsc.runtime.eval import EvalSummary, evaluate, load_results, run_signature
from ttsc.runtime.search.engines import EnginePool
from ttsc.runtime.search.space import Space


class OverBudget(Exception):
    """The cost model says this configuration cannot keep the budget; `over`
    is by how much, as a fraction of the token budget (1.0 when unknown)."""

    def __init__(self, reason: str, over: float):
        super().__init__(reason)
        self.reason = reason
        self.over = over


@dataclass
class Scores:
    """What one evaluation measured (the objectives and what the table shows)."""

    items: int
    correct: int
    accuracy: float
    accuracy_ci: tuple[float, float]
    tokens_per_input: float  # computed (prompt computed + generated), the headline
    requested_per_input: float
    generated_per_input: float
    predicted_latency_s: float | None  # the cost model's, per input alone
    cache_hits: int
    cache_misses: int
    seconds: float
    pass_at: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["accuracy_ci"] = list(self.accuracy_ci)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Scores":
        return Scores(**{**d, "accuracy_ci": tuple(d["accuracy_ci"])})


def scores_of(summary: EvalSummary, plan: Plan) -> Scores:
    return Scores(summary.items, summary.correct, summary.accuracy, summary.accuracy_ci,
                  summary.tokens_per_input, summary.requested_per_input, summary.generated_per_input,
                  plan.facts.get("predicted_latency_s"), summary.usage.cache_hits,
                  summary.usage.cache_misses, summary.seconds,
                  {str(k): v for k, v in summary.pass_at.items()})


@dataclass
class Evaluator:
    """Compiles and evaluates configurations of one space on one data set."""

    space: Space
    pool: EnginePool
    scorer: str = "number"
    answer_field: str = "answer"
    seed: int = 0
    batch_size: int = 8
    models: dict[str, str] = field(default_factory=dict)  # --model overrides

    def compile(self, assignment: dict[str, Any]) -> Plan:
        """The plan of one configuration; OverBudget when the allocator finds
        no way to keep the budget with these knobs."""
        program, _ = load_program(self.space.source, self.space.file, self.space.strategy)
        program.budget = self.space.budget
        try:
            plan, _ = compile_program(program, assignment)
        except BudgetInfeasible as exc:
            limit = ((self.space.budget or {}).get("tokens") or {}).get("value")
            smallest = exc.smallest.get("tokens")
            over = (smallest - limit) / limit if limit and smallest else 1.0
            raise OverBudget(exc.diagnostics[0].message, over) from None
        apply_model_overrides(plan, self.models)
        return plan

    def compile_source(self, source: str, file: str) -> Plan:
        """The plan of a concrete program (greedy decoding, a written winner)."""
        program, _ = load_program(source, file)
        plan, _ = compile_program(program)
        apply_model_overrides(plan, self.models)
        return plan

    def evaluate(self, plan: Plan, rows: Sequence[dict[str, Any]], out: Path,
                 on_item: Callable[[int, int], None] | None = None) -> Scores:
        """Run `plan` on `rows`, per-item lines to `out` (a rerun of the same
        plan resumes it; another plan's file is set aside as FILE.old)."""
        try:
            load_results(out, run_signature(plan, self.seed))
            force = False
        except UserError:  # another plan's file, or a damaged one: kept as FILE.old
            force = True
        summary = evaluate(plan, self.pool.engines_for(plan), rows, scorer=self.scorer,
                           answer_field=self.answer_field, seed=self.seed,
                           batch_size=self.batch_size, out=out, force=force, on_item=on_item)
        return scores_of(summary, plan)
