"""The search space of a program: its knobs as dimensions, fixing them by an
assignment, and writing the program a chosen assignment makes.

- `space_dimensions(program)`: one `Dimension` per knob site the strategy
  reaches (a strategy inlined twice still has one site): stable id, where it
  is written, which setting, the knob, the values search may assign.
- `assign_knobs(assignment)`: a pass fixing the assigned knobs before the
  allocator and the defaults decide the rest (`compile_program(program,
  assignment)` runs it).
- `decided_values(program)`: after decision, the value every site got.
- `concrete_source(source, file, assignment)`: the .tts text with each
  assigned knob replaced by its value (a value `choice` by the chosen branch),
  so search can write its winner as a file.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

from ttsc.common.errors import Span, UserError, did_you_mean
from ttsc.common.knobs import Choice, Knob, Range
from ttsc.common.sampling import SETTINGS
from ttsc.compiler.build import build
from ttsc.compiler.build.context import KnobSite
from ttsc.compiler.ir import Graph, Node, Program
from ttsc.compiler.passes.allocate import AUTO_ROUNDS
from ttsc.compiler.passes.manager import PassResult
from ttsc.compiler.passes.walk import graphs
from ttsc.dsl import ast
from ttsc.dsl.parser import parse
from ttsc.dsl.unparse import unparse


@dataclass(frozen=True)
class Dimension:
    id: str
    setting: str  # "n", "model", ...; "branch" of a value choice; "count" of `repeat auto`
    knob: Knob
    span: Span | None
    values: tuple[Any, ...] | None  # what may be assigned; None: a continuous interval
    labels: tuple[str, ...] | None = None  # a branch choice's options as written

    def label(self, value: Any) -> str:
        """A value as a reader of the source would name it (a branch by its option)."""
        if self.labels is not None and isinstance(value, int) and 0 <= value < len(self.labels):
            return self.labels[value]
        return _show(value)

    @property
    def size(self) -> int | None:
        return None if self.values is None else len(self.values)

    def bounds(self) -> tuple[float, float]:
        """The interval of a continuous dimension."""
        if isinstance(self.knob, Range):
            return self.knob.lo, self.knob.hi
        setting = SETTINGS[self.setting]
        return setting.lo or 0.0, setting.hi if setting.hi is not None else math.inf

    def normalized(self, value: Any) -> Any:
        """`value` as this dimension holds it (8.0 for an integer setting is 8),
        or raise ValueError when it is not one of its values."""
        setting = SETTINGS.get(self.setting)
        integer = setting.integer if setting is not None else self.setting in ("branch", "count")
        if integer and isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool):
            raise ValueError(value)
        if self.values is not None:
            if value not in self.values:
                raise ValueError(value)
            return value
        lo, hi = self.bounds()
        if not isinstance(value, (int, float)) or not lo <= value <= hi or (
                self.setting in SETTINGS and SETTINGS[self.setting].problem(value)):
            raise ValueError(value)
        return value

    def written(self) -> str:
        """The knob as a .tts author would write it."""
        k = self.knob
        if isinstance(k, Choice) and self.setting == "branch":
            if self.labels and sum(map(len, self.labels)) <= 60:
                return f"choice({', '.join(self.labels)})"
            return f"choice of {len(k.options)} branches"
        if isinstance(k, Choice):
            show = str if self.setting == "model" else _show
            return f"choice({', '.join(show(v) for v in k.options)})"
        if isinstance(k, Range):
            return f"range({_show(k.lo)}, {_show(k.hi)})"
        return "auto"


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, (str, list)) else str(value)


def _values(site: KnobSite) -> tuple[Any, ...] | None:
    knob = site.knob
    if isinstance(knob, Choice):
        return knob.options
    if isinstance(knob, Range):
        return tuple(range(int(knob.lo), int(knob.hi) + 1)) if knob.integer else None
    if site.setting == "count":
        return AUTO_ROUNDS
    if knob.options is not None:
        return knob.options
    grid = SETTINGS[site.setting].auto_grid if site.setting in SETTINGS else ()
    return grid or None  # `temperature=auto`: anything the setting allows


def _site_ids(graph: Graph) -> list[str]:
    """Knob site ids named by the nodes of `graph` and the graphs inside it."""
    ids: list[str] = []
    for g in graphs(graph):
        for node in g.nodes():
            ids += node.meta.get("knob_sites", {}).values()
    return ids


def space_dimensions(program: Program) -> list[Dimension]:
    """The knobs the program's strategy reaches, in source order (call before
    compiling: compilation decides them)."""
    ids = set(_site_ids(program.graph))
    sites = [program.knob_sites[i] for i in ids]
    sites.sort(key=lambda s: (s.span.line, s.span.column) if s.span else (0, 0))
    return [_dimension(s) for s in sites]


def _dimension(site: KnobSite) -> Dimension:
    return Dimension(site.id, site.setting, site.knob, site.span, _values(site), site.labels)


def space_size(dims: list[Dimension]) -> int | None:
    """How many programs the space holds; None when a dimension is continuous."""
    if any(d.size is None for d in dims):
        return None
    return math.prod(d.size for d in dims)


def check_assignment(dims: list[Dimension], assignment: dict[str, Any]) -> dict[str, Any]:
    """The assignment with each value as its dimension holds it; UserError
    naming the first unknown id or disallowed value."""
    by_id = {d.id: d for d in dims}
    checked: dict[str, Any] = {}
    for sid, value in assignment.items():
        dim = by_id.get(sid)
        if dim is None:
            known = list(by_id)
            raise UserError(f"no knob `{sid}` in this program",
                            did_you_mean(sid, known) or (f"knobs: {', '.join(known)}" if known
                                                         else "this program has no knobs"))
        try:
            checked[sid] = dim.normalized(value)
        except ValueError:
            allowed = (", ".join(_show(v) for v in dim.values) if dim.values is not None
                       else "a number in [{:g}, {:g}]".format(*dim.bounds()))
            raise UserError(f"knob `{sid}` ({dim.written()}) cannot be {_show(value)}",
                            f"it takes {allowed}") from None
    return checked


def assign_knobs(assignment: dict[str, Any]) -> Callable[[Program], PassResult]:
    """A pass fixing the assigned knobs (checked against the dimensions)."""

    def assign_knobs(program: Program) -> PassResult:
        values = check_assignment(space_dimensions(program), assignment)
        notes: list[str] = []
        for g in graphs(program.graph):
            for node in g.nodes():
                for key, sid in node.meta.get("knob_sites", {}).items():
                    if sid in values:
                        node.attrs[key] = values[sid]
                        notes.append(f"{_where(node)}: {key} = {_show(values[sid])} (`{sid}`)")
        return PassResult(bool(notes), notes)

    return assign_knobs


def decided_values(program: Program) -> dict[str, Any]:
    """The value each knob site ended with (after the allocator and the
    defaults: an assignment that compiles to the same plan)."""
    values: dict[str, Any] = {}
    for g in graphs(program.graph):
        for node in g.nodes():
            for key, sid in node.meta.get("knob_sites", {}).items():
                values.setdefault(sid, node.attrs.get(key))
    return values


def _where(node: Node) -> str:
    return f"{node.op.value} at line {node.span.line}" if node.span else f"{node.op.value} {node.id}"


# ------------------------------------------------------------------ writing a program


def concrete_source(source: str, file: str, assignment: dict[str, Any]) -> str:
    """The .tts source with each assigned knob written as its value; knobs
    the assignment leaves out stay as written."""
    module = parse(source, file)
    built = build(module)
    built.diagnostics.raise_if_errors({file: source})
    dims = [_dimension(s) for s in built.sites.values()]
    return unparse(with_values(module, built.sites, check_assignment(dims, assignment)))


def with_values(module: ast.Module, sites: dict[str, KnobSite], assignment: dict[str, Any]) -> ast.Module:
    """The module with the assigned knob expressions replaced by literals."""
    new: dict[Span, Callable[[ast.Expr], ast.Expr]] = {}
    for sid, value in assignment.items():
        site = sites[sid]
        if site.setting == "branch":
            new[site.span] = lambda e, i=value: e.args[i]
        else:
            new[site.span] = lambda e, v=value, s=site.span: _literal(v, s)
    return _without_none(ast.replace_exprs(module, new))


def _without_none(module: ast.Module) -> ast.Module:
    """A chosen `none` written out: `x = none` (the step left out) and
    `critiques=none` (the argument left out) go."""

    def rebuild(node):
        if isinstance(node, tuple):
            kept = tuple(n for n in node if not (isinstance(n, ast.Assign) and isinstance(n.value, ast.Nothing))
                         and not (isinstance(n, ast.Keyword) and isinstance(n.value, ast.Nothing)))
            return tuple(rebuild(n) for n in kept)
        if isinstance(node, ast.Call):
            args = node.args
            while args and isinstance(args[-1], ast.Nothing):  # an optional prompt left out
                args = args[:-1]
            node = dataclasses.replace(node, args=args)
        if isinstance(node, (ast.ListExpr, ast.Keyword, ast.Call, ast.BinOp, ast.Compare, ast.BoolOp,
                             ast.Not, ast.Assign, ast.Repeat, ast.Return, ast.StrategyDef)):
            return dataclasses.replace(node, **{f.name: rebuild(getattr(node, f.name))
                                                for f in dataclasses.fields(node)
                                                if not f.name.endswith("span")})
        return node

    return dataclasses.replace(module, definitions=rebuild(module.definitions))


def _literal(value: Any, span: Span) -> ast.Expr:
    if isinstance(value, str):
        return ast.Name(value, span)  # a model name
    if isinstance(value, list):  # stop strings
        items = tuple(ast.String(v, span) for v in value)
        return items[0] if len(items) == 1 else ast.ListExpr(items, span)
    return ast.Number(value, span)
