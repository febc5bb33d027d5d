"""A search space as Optuna sees it: the knobs of one strategy as parameters.

Every `choice(...)` (of values, models, prompts, branches, round counts) is
a categorical parameter, an integer `range` an integer one, a `range` of a
real setting a float one. `auto` knobs are not parameters: the allocator
solves them inside each trial against the budget. Parameters are named by
the knob's stable site id (`space.s.generate.n`), so a study outlives edits
that move lines around.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterator

from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)

from ttsc.common.errors import TTSError, UserError, error
from ttsc.common.knobs import Auto, Range
from ttsc.compiler.pipeline import load_program, read_source
from ttsc.compiler.space import Dimension, space_dimensions
from ttsc.dsl.parser import parse
from ttsc.dsl.unparse import unparse

_PRIMITIVE = (str, int, float, bool)


@dataclass
class Space:
    """One strategy of a .tts file, its searchable knobs and how to name them."""

    file: str
    source: str
    strategy: str
    params: list[str]  # the strategy's parameters (data fields)
    dimensions: list[Dimension]  # the searched knobs, in source order
    solved: list[Dimension] = field(default_factory=list)  # `auto` knobs the allocator solves
    budget: dict[str, Any] | None = None

    @property
    def size(self) -> int | None:
        """How many configurations; None when a knob is continuous."""
        sizes = [d.size for d in self.dimensions]
        return None if None in sizes else math.prod(sizes)

    def distributions(self) -> dict[str, BaseDistribution]:
        return {d.id: distribution(d) for d in self.dimensions}

    def assignment(self, params: dict[str, Any]) -> dict[str, Any]:
        """The knob assignment of a trial's parameters (indices back to values)."""
        out = {}
        for d in self.dimensions:
            value = params[d.id]
            out[d.id] = d.values[value] if d.values is not None and not _plain(d.values) else value
        return out

    def params_of(self, assignment: dict[str, Any]) -> dict[str, Any]:
        """The trial parameters of a knob assignment (the inverse of `assignment`)."""
        out = {}
        for d in self.dimensions:
            value = assignment[d.id]
            out[d.id] = d.values.index(value) if d.values is not None and not _plain(d.values) else value
        return out

    def grid(self) -> Iterator[dict[str, Any]]:
        """Every assignment of a discrete space, in source order."""
        if self.size is None:
            raise UserError("this space has a continuous knob; it has no finite grid")
        for combo in itertools.product(*(d.values for d in self.dimensions)):
            yield dict(zip((d.id for d in self.dimensions), combo))

    def short_names(self) -> dict[str, str]:
        """For each knob, the shortest tail of its id that no other knob shares."""
        ids = [d.id for d in self.dimensions]
        names = {}
        for sid in ids:
            parts = sid.split(".")
            for k in range(1, len(parts) + 1):
                tail = ".".join(parts[-k:])
                if sum(1 for other in ids if other == tail or other.endswith("." + tail)) == 1:
                    names[sid] = tail
                    break
            else:
                names[sid] = sid
        return names

    def describe(self, assignment: dict[str, Any]) -> str:
        """`n=8 temperature=0.3 choice=vote(...)`: an assignment in a few words."""
        return self.describe_labels({d.id: d.label(assignment[d.id]) for d in self.dimensions
                                     if d.id in assignment})

    def describe_labels(self, labels: dict[str, str]) -> str:
        """The same, from each knob's value as written."""
        short = self.short_names()
        return " ".join(f"{short.get(sid, sid)}={text}" for sid, text in labels.items())

    def signature(self) -> str:
        """A digest of the program as written (layout and comments aside) and of
        its knobs: a study of one space refuses another."""
        text = unparse(parse(self.source, self.file))
        knobs = [(d.id, d.setting, repr(d.values), repr(d.knob)) for d in self.dimensions]
        blob = json.dumps([text, self.strategy, knobs], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _plain(values: tuple[Any, ...]) -> bool:
    """Optuna keeps categorical values of plain types only; others travel as indices."""
    return all(isinstance(v, _PRIMITIVE) for v in values)


def distribution(d: Dimension) -> BaseDistribution:
    if d.values is not None:
        if isinstance(d.knob, Range) and d.knob.integer:
            return IntDistribution(int(d.knob.lo), int(d.knob.hi))
        choices = d.values if _plain(d.values) else tuple(range(len(d.values)))
        return CategoricalDistribution(choices)
    lo, hi = d.bounds()
    return FloatDistribution(float(lo), float(hi))


def load_space(path: str, strategy: str | None = None,
               budget_tokens: float | None = None) -> Space:
    """The space of one strategy of a .tts file, checked: it compiles, it has
    something to search, its budget is one search can keep. `budget_tokens`
    (--budget-tokens) is a per-input token budget in place of the file's."""
    source = read_source(path)
    program, _ = load_program(source, str(path), strategy)
    budget = with_token_budget(program.budget, budget_tokens)
    if budget and (budget.get("tokens") or {}).get("total"):
        raise TTSError([error(
            "`ttsc search` keeps a budget per input, not a total over the data set",
            _budget_span(source, str(path)),
            "write `tokens <= T per input` (each trial's mean tokens per input is held to it), "
            "or pass --budget-tokens T")], {str(path): source})
    dims = space_dimensions(program)
    searched = [d for d in dims if not isinstance(d.knob, Auto)]
    solved = [d for d in dims if isinstance(d.knob, Auto)]
    if not searched:
        where = _strategy_span(source, str(path), program.strategy)
        what = ("its only knobs are `auto`, which the allocator solves" if solved
                else "every setting is fixed")
        raise TTSError([error(f"strategy `{program.strategy}` has nothing to search: {what}", where,
                              "mark what may vary with choice(...) or range(lo, hi), e.g. "
                              "n=choice(1, 4, 16) or temperature=range(0.1, 1.0)")],
                       {str(path): source})
    return Space(str(path), source, program.strategy, list(program.params), searched, solved, budget)


def with_token_budget(budget: dict[str, Any] | None, tokens: float | None) -> dict[str, Any] | None:
    if tokens is None:
        return budget
    if tokens <= 0:
        raise UserError(f"--budget-tokens must be positive (got {tokens:g})")
    return {**(budget or {}), "tokens": {"value": float(tokens), "per_input": True, "total": False}}


def _strategy_span(source: str, file: str, strategy: str) -> Any:
    return next((s.span for s in parse(source, file).strategies() if s.name == strategy), None)


def _budget_span(source: str, file: str) -> Any:
    module = parse(source, file)
    for budget in module.budgets():
        for item in budget.items:
            if item.resource == "tokens":
                return item.span
    return None
