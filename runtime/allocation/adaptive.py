"""`ttsc eval` with `n=auto` under a token budget for the whole data set.

The compiler leaves such an `n` to the runtime (compiler/passes/adaptive.py:
the generate starts at n=1 and carries the budget in its `adaptive` fact).
Here the data set runs in rounds (rounds.py): every input draws one sample;
then, each round, CP-SAT plans every open input's final total from the vote
state its samples show, using the table `ttsc calibrate` fitted on a dev set,
within the tokens left; inputs planned at "no more" are finished and written
at once, the others draw up to their next checkpoint.

Each round re-runs an input's plan with a larger n through the call cache
(an in-memory one with `--no-cache`): sample i keeps its seed, so the samples
already drawn come back from the cache and only the new ones are computed.
The tokens an input spent are its run's usage (recorded usage for the
replayed samples), so the budget counts what computing the samples costs,
each prompt computed once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ttsc.common.errors import UserError
from ttsc.compiler.plan import Plan, PlanNode
from ttsc.compiler.utility import Calibration, calibration_path, load_calibration
from ttsc.runtime.allocation.rounds import Rounds, Sample, VoteValues
from ttsc.runtime.cache import MEMORY, CachedEngine, CallCache
from ttsc.runtime.engines.base import Engine, Usage
from ttsc.runtime.eval import EvalSummary, Ledger
from ttsc.runtime.executor import Executor, InputResult


@dataclass
class AdaptiveTarget:
    """The generate whose n is allocated across the data set, and the budget."""

    node: PlanNode
    budget: float


def adaptive_target(plan: Plan) -> AdaptiveTarget | None:
    for node in plan.region.nodes.values():
        facts = node.facts.get("adaptive")
        if facts:
            return AdaptiveTarget(node, float(facts["budget_tokens"]))
    return None


def vote_table(plan: Plan, target: AdaptiveTarget, calibration: str | Path | None = None
               ) -> tuple[VoteValues, Calibration]:
    """The calibrated vote-state table for the target generate: a UserError when
    there is none, or when it was fitted for another model, prompt or settings."""
    from ttsc.runtime.calibrate import calibrated_for

    where = Path(calibration) if calibration else calibration_path(plan.file)
    cal = _read(where) if calibration else load_calibration(plan.file)
    if cal is None:
        raise UserError(f"no calibration for {plan.file}: `n=auto` under a total token budget "
                        "spends it by a vote-state table fitted on a dev set",
                        hint=f"make one with: ttsc calibrate {plan.file} --data DEV.jsonl --samples 32")
    name = target.node.attrs["model"]
    model = cal.models.get(name)
    if model is None or not model.vote_values:
        raise UserError(f"the calibration {where} has no vote-state table for model `{name}`",
                        hint=f"run again: ttsc calibrate {plan.file} --data DEV.jsonl --samples 32")
    want = calibrated_for(plan, target.node)
    got = {k: cal.pilot.get(k) for k in want}
    for key, label in (("spec", "model"), ("prompt", "prompt"), ("temperature", "temperature"),
                       ("max_tokens", "max_tokens")):
        if got[key] != want[key]:
            shown = (lambda v: repr((v or {}).get("user", v)) if key == "prompt" else v)  # noqa: E731
            raise UserError(f"the calibration {where} was fitted for {label} {shown(got[key])}, but "
                            f"the strategy's generate uses {label} {shown(want[key])}",
                            hint=f"calibrate this strategy: ttsc calibrate {plan.file} --data DEV.jsonl")
    return VoteValues.from_json(model.vote_values), cal


def _read(path: Path) -> Calibration | None:
    if not path.is_file():
        raise UserError(f"calibration file {path} not found")
    try:
        return Calibration.from_json(path.read_text())
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"{path} is not a calibration file written by `ttsc calibrate` ({e})") from None


def check_budget(target: AdaptiveTarget, cal: Calibration, inputs: int, spent: float = 0.0) -> None:
    """A UserError when the budget cannot pay for one sample per input, the
    least any allocation draws, by the calibration's figures."""
    per_input = (cal.pilot.get("prompt_tokens") or 0) + (cal.pilot.get("generated_per_sample") or 0)
    need = per_input * inputs
    if per_input and target.budget - spent < need:
        raise UserError(f"a budget of {target.budget:,.0f} tokens cannot pay for one sample of each of "
                        f"{inputs} inputs: by the calibration one costs about {per_input:,.0f} tokens "
                        f"(prompt and one completion), {need + spent:,.0f} in all",
                        hint=f"raise the budget to at least {need + spent:,.0f} tokens "
                             "(--budget-tokens), or evaluate fewer inputs (--limit)")


def evaluate_adaptive(plan: Plan, engines: dict[str, Engine], rows: Sequence[dict[str, Any]],
                      target: AdaptiveTarget, values: VoteValues, *, scorer: str = "number",
                      answer_field: str = "answer", seed: int = 0, batch_size: int = 8,
                      out: str | Path | None = None, force: bool = False,
                      on_item: Callable[[int, int], None] | None = None,
                      log: Callable[[str], None] | None = None,
                      data: str | None = None) -> EvalSummary:
    """Evaluate `plan`, allocating `target`'s n across `rows` within its budget."""
    with Ledger(plan, rows, scorer=scorer, answer_field=answer_field, seed=seed, out=out,
                force=force, on_item=on_item, data=data) as ledger:
        todo = ledger.todo
        spent_before = sum(r["tokens"]["computed"] for r in ledger.results.values())
        executor = Executor(plan, _cached(plan, engines), seed=seed)
        rounds = Rounds(values, len(todo))
        current: list[InputResult | None] = [None] * len(todo)
        written: set[int] = set()

        def spent() -> float:
            return spent_before + sum(r.total_usage.tokens_computed for r in current if r is not None)

        def draw(draws: list[tuple[int, int]]) -> None:
            inputs = [ledger.inputs[j] for j, _ in draws]
            settings = [{target.node.id: {"n": rounds.total(j)}} for j, _ in draws]
            run = executor.run(inputs, concurrency=batch_size, settings=settings)
            for (j, count), result in zip(draws, run.results):
                previous = current[j].total_usage if current[j] is not None else Usage()
                fresh = result.total_usage
                # This round's own calls: what the cache answered and what it computed.
                ledger.usage = ledger.usage + Usage(
                    cache_hits=fresh.cache_hits - previous.cache_hits,
                    cache_misses=fresh.cache_misses - previous.cache_misses)
                current[j] = result
                rounds.add(j, [Sample(c_answer, c.tokens, c.mean_logprob or 0.0) for c, c_answer in
                               zip(result.samples[-count:], result.sample_answers[-count:])])

        def finish(keep_open: set[int]) -> None:
            for j, result in enumerate(current):
                if result is not None and j not in written and j not in keep_open:
                    ledger.record(j, result, count_usage=False, n=len(result.samples))
                    written.add(j)
            ledger.progress()

        draws = rounds.first()
        number = 0
        while draws:
            draw(draws)
            number += 1
            draws = rounds.next(target.budget - spent())
            finish({j for j, _ in draws})
            if log:
                state = f"{len(draws)} inputs draw more" if draws else "done"
                log(f"round {number}: {spent():,.0f} of {target.budget:,.0f} tokens spent, "
                    f"{len(written)} of {len(todo)} inputs finished; {state}")
    return ledger.summary(target.budget)


def _cached(plan: Plan, engines: dict[str, Engine]) -> dict[str, Engine]:
    """The engines behind a call cache: rounds re-run inputs with a larger n and
    must get their earlier samples back, not new ones."""
    if all(isinstance(e, CachedEngine) for e in engines.values()):
        return engines
    from ttsc.runtime.engines.setup import cache_identity

    memory = CallCache(MEMORY)
    wrapped: dict[int, Engine] = {}
    out = {}
    for name, engine in engines.items():
        if id(engine) not in wrapped:
            wrapped[id(engine)] = (engine if isinstance(engine, CachedEngine) else
                                   CachedEngine(engine, memory, cache_identity(plan.models[name], engine)))
        out[name] = wrapped[id(engine)]
    return out
