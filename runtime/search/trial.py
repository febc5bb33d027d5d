"""One configuration of a space: compile it, evaluate it, say what it scored
and cost.

A configuration compiles with its knobs fixed; `auto` knobs left are solved
by the allocator against the budget. One the cost model says cannot keep the
budget does not run (it is over budget before any call). One that runs is
evaluated on the data like `ttsc eval` does, its per-item lines written to
its own file, every call through the search's engines and call cache.

With `--ray` the evaluations run on Ray actors (`remote`), and the files
stay with the driver: `job` reads what a results file already holds and
sends only the rest, `finish` appends what came back and adds it all up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

from ttsc.common.errors import BudgetInfeasible, UserError
from ttsc.common.specs import override_models
from ttsc.compiler.pipeline import Program, compile_program, load_program
from ttsc.compiler.plan import Plan
from ttsc.runtime.data import ResultsWriter
from ttsc.runtime.engines.base import Usage
from ttsc.runtime.engines.setup import capabilities_of
from ttsc.runtime.eval import (EvalSummary, Resumed, evaluate, load_results, resume, run_signature,
                               summarize)
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
class EvalJob:
    """One evaluation to run on a worker: `plan` on `rows`, the rows still
    missing from `out` (each carrying its id, so the worker's lines have the
    same keys); `tag` is the caller's (a trial number)."""

    plan: Plan
    rows: list[dict[str, Any]]
    out: Path
    all_rows: Sequence[dict[str, Any]]
    resumed: Resumed
    tag: Any = None


class Remote(Protocol):
    """Where `--ray` evaluations run: results in any order, as they arrive."""

    def run(self, jobs: Iterable[EvalJob]) -> Iterator[tuple[EvalJob, EvalSummary]]: ...


@dataclass
class Evaluator:
    """Compiles and evaluates configurations of one space on one data set,
    on `pool` (this process) or on `remote` (Ray workers)."""

    space: Space
    pool: EnginePool | None
    scorer: str = "number"
    answer_field: str = "answer"
    seed: int = 0
    batch_size: int = 8
    models: dict[str, str] = field(default_factory=dict)  # --model overrides
    engine: str = "auto"  # --engine: the ops are checked against its capabilities
    remote: Remote | None = None

    def compile(self, assignment: dict[str, Any]) -> Plan:
        """The plan of one configuration; OverBudget when the allocator finds
        no way to keep the budget with these knobs."""
        program = self._load(self.space.source, self.space.file, self.space.strategy)
        program.budget = self.space.budget
        try:
            plan, _ = compile_program(program, assignment, capabilities_of(self.engine))
        except BudgetInfeasible as exc:
            limit = ((self.space.budget or {}).get("tokens") or {}).get("value")
            smallest = exc.smallest.get("tokens")
            over = (smallest - limit) / limit if limit and smallest else 1.0
            raise OverBudget(exc.diagnostics[0].message, over) from None
        return plan

    def compile_source(self, source: str, file: str) -> Plan:
        """The plan of a concrete program (greedy decoding, a written winner)."""
        plan, _ = compile_program(self._load(source, file), None, capabilities_of(self.engine))
        return plan

    def _load(self, source: str, file: str, strategy: str | None = None) -> Program:
        program, _ = load_program(source, file, strategy)
        program.models = override_models(program.models, self.models)
        return program

    def evaluate(self, plan: Plan, rows: Sequence[dict[str, Any]], out: Path,
                 on_item: Callable[[int, int], None] | None = None) -> Scores:
        """Run `plan` on `rows`, per-item lines to `out` (a rerun of the same
        plan resumes it; another plan's file is set aside as FILE.old)."""
        if self.remote is not None:
            job = self.job(plan, rows, out)
            if on_item:
                on_item(len(job.resumed.results), len(rows))
            summary = [s for _, s in self.remote.run([job])][0] if job.rows else None
            scores = self.finish(job, summary)
            if on_item:
                on_item(len(rows), len(rows))
            return scores
        assert self.pool is not None, "an Evaluator evaluates on its pool or its remote"
        summary = evaluate(plan, self.pool.engines_for(plan), rows, scorer=self.scorer,
                           answer_field=self.answer_field, seed=self.seed,
                           batch_size=self.batch_size, out=out, force=self._force(plan, out),
                           on_item=on_item)
        return scores_of(summary, plan)

    def job(self, plan: Plan, rows: Sequence[dict[str, Any]], out: Path, tag: Any = None) -> EvalJob:
        """What a worker must run of `plan` on `rows` (`out` resumed as `evaluate` does)."""
        state = resume(rows, out, run_signature(plan, self.seed), self._force(plan, out))
        todo = [{**rows[i], "id": state.ids[i]} for i in state.todo]
        return EvalJob(plan, todo, out, rows, state, tag)

    def finish(self, job: EvalJob, summary: EvalSummary | None) -> Scores:
        """The scores of a job, with the lines its worker sent (None: it had
        nothing to run) appended to its file."""
        results = dict(job.resumed.results)
        if summary is not None and summary.per_item:
            writer = ResultsWriter(job.out)
            try:
                for item in summary.per_item:
                    writer.write(item)
                    results[item["id"]] = item
            finally:
                writer.close()
        done = summarize(job.all_rows, results, summary.run_items if summary else 0,
                         summary.seconds if summary else 0.0, summary.usage if summary else Usage())
        return scores_of(done, job.plan)

    def _force(self, plan: Plan, out: Path) -> bool:
        """Whether `out` holds another plan's (or damaged) lines, to set aside."""
        try:
            load_results(out, run_signature(plan, self.seed))
            return False
        except UserError:  # another plan's file, or a damaged one: kept as FILE.old
            return True
