"""The compile pipeline: source -> AST -> IR -> passes -> Plan.

The lists below are the passes in the order they run; `--explain` prints
what each of them changed. `compile_program(program, assignment,
capabilities)` is the seam search and serve use: fix some knobs, say what the
engines can do, get a Plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ttsc.common.specs import override_models
from ttsc.compiler.build import Built, build
from ttsc.compiler.passes.adaptive import defer_total_budget
from ttsc.compiler.passes.allocate import allocate
from ttsc.compiler.passes.capabilities import check_capabilities
from ttsc.compiler.ir import CapabilitiesGiven, Program
from ttsc.compiler.passes.cse import cse
from ttsc.compiler.passes.defaults import select_defaults
from ttsc.compiler.passes.dce import dce
from ttsc.compiler.passes.fold import fold_constants
from ttsc.compiler.passes.inline import inline
from ttsc.compiler.passes.kernels import generate_kernels
from ttsc.compiler.passes.manager import Pass, PassRecord, run_passes, summarize
from ttsc.compiler.passes.merge_samples import merge_samples
from ttsc.compiler.passes.predict_tokens import predict_tokens
from ttsc.compiler.passes.prefix_sharing import prefix_sharing
from ttsc.compiler.passes.seed_keys import seed_keys
from ttsc.compiler.plan import Plan
from ttsc.compiler.space import assign_knobs, decided_values, space_dimensions
from ttsc.compiler.lower import lower
from ttsc.common.errors import Diagnostic, TTSError, UserError, did_you_mean, error
from ttsc.dsl.parser import parse

# Cleanup passes run to a fixpoint: each can expose work for another.
PASSES: list[Pass] = [inline]
# A data-set budget is left to the runtime; budget allocation fixes knobs
# next; defaults fix what no budget decides.
DECIDE: list[Pass] = [defer_total_budget, allocate, select_defaults]
# Once every model is decided: can each engine serve the ops sent to it?
CHECK: list[Pass] = [check_capabilities]
# dce runs before merge_samples, so a branch a decided choice dropped is not
# merged into the one it kept; prefix_sharing lays prompts out and predicts
# costs once the graph is final.
CLEANUP: list[Pass] = [fold_constants, dce, cse, merge_samples, prefix_sharing]
# Once, on the final graph: the headline token predictions, kernel generation,
# the structural names the executor seeds calls by.
FINAL: list[Pass] = [predict_tokens, generate_kernels, seed_keys]


@dataclass
class Compiled:
    plan: Plan
    program: Program
    report: list[PassRecord]
    warnings: list[Diagnostic] = field(default_factory=list)


def check_source(source: str, file: str = "<string>") -> list[Diagnostic]:
    """Every diagnostic of a file (errors and warnings), without raising."""
    try:
        built = build(parse(source, file))
    except TTSError as exc:
        return exc.diagnostics
    return built.diagnostics.items


def pick_strategy(built: Built, name: str | None) -> str:
    strategies = list(built.info.strategies)
    if not strategies:
        raise TTSError([error("this file defines no strategy", None,
                              "add one: strategy NAME(question) { ... return EXPR }")])
    if name is None:
        return strategies[-1]
    if name not in strategies:
        raise UserError(f"no strategy `{name}` in {built.info.file}",
                        did_you_mean(name, strategies) or f"strategies: {', '.join(strategies)}")
    return name


def program_for(built: Built, strategy: str) -> Program:
    info = built.info
    graph = built.graphs[strategy].copy()
    prompts = {
        name: {"user": p.user, "system": p.system, "raw": p.raw, "holes": [h.name for h in p.holes]}
        for name, p in info.prompts.items()
    }
    params = [p.name for p in info.strategies[strategy].params]
    return Program(info.file, info.source, strategy, params, graph, dict(info.models), prompts,
                   info.budget, dict(built.sites))


def compile_program(program: Program, assignment: dict[str, Any] | None = None,
                    capabilities: CapabilitiesGiven = None) -> tuple[Plan, list[PassRecord]]:
    """Compile a built program to a Plan.

    `assignment` fixes knobs by their site id (`space.space_dimensions`)
    before the allocator and the defaults decide the rest. `capabilities`
    says what each model's engine can do: a mapping by model name, or a
    function of a model's spec; None assumes everything.
    The program is changed in place; `program.meta["space"]` keeps its
    dimensions as they were.
    """
    program.meta["space"] = space_dimensions(program)
    program.meta["capabilities"] = capabilities
    report = run_passes(program, PASSES)
    if assignment:
        report += run_passes(program, [assign_knobs(assignment)])
    report += run_passes(program, DECIDE)
    if program.meta["space"]:
        program.meta.setdefault("plan_facts", {})["knob_values"] = decided_values(program)
    report += run_passes(program, CHECK)
    report += run_passes(program, CLEANUP, fixpoint=True)
    report += run_passes(program, FINAL)
    report = summarize(report)
    plan = lower(program, [r.as_dict() for r in report])
    return plan, report


def load_program(source: str, file: str = "<string>", strategy: str | None = None
                 ) -> tuple[Program, list[Diagnostic]]:
    """One strategy of a .tts source, built (not compiled), and the file's
    warnings. Raises TTSError on any error."""
    built = build(parse(source, file))
    built.diagnostics.raise_if_errors({file: source})
    return program_for(built, pick_strategy(built, strategy)), built.diagnostics.warnings


def compile_source(source: str, file: str = "<string>", strategy: str | None = None,
                   budget_tokens: float | None = None, *,
                   assignment: dict[str, Any] | None = None,
                   models: dict[str, str] | None = None,
                   capabilities: CapabilitiesGiven = None) -> Compiled:
    """Compile one strategy of a .tts source. Raises TTSError on any error.
    `budget_tokens` sets a total token budget for a data set (`--budget-tokens`),
    in place of the file's own tokens line; `models` points model names at
    other specs (`--model NAME=SPEC`); `assignment` and `capabilities` are
    `compile_program`'s."""
    program, warnings = load_program(source, file, strategy)
    if models:
        program.models = override_models(program.models, models)
    if budget_tokens is not None:
        if budget_tokens <= 0:
            raise UserError(f"--budget-tokens must be positive (got {budget_tokens:g})")
        program.budget = {**(program.budget or {}),
                          "tokens": {"value": float(budget_tokens), "per_input": False, "total": True}}
    plan, report = compile_program(program, assignment, capabilities)
    return Compiled(plan, program, report, warnings)


def compile_file(path: str | Path, strategy: str | None = None,
                 budget_tokens: float | None = None, *,
                 assignment: dict[str, Any] | None = None,
                 models: dict[str, str] | None = None,
                 capabilities: CapabilitiesGiven = None) -> Compiled:
    return compile_source(read_source(path), str(path), strategy, budget_tokens,
                          assignment=assignment, models=models, capabilities=capabilities)


def read_source(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read: {exc}") from None
