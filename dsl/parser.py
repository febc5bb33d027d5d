"""Parse .tts source into the AST of `ttsc.dsl.ast`.

`parse` runs the LALR grammar (`grammar.lark()`), then a Transformer that
builds the AST and collects semantic mistakes (reserved words used as names,
bad holes or escapes, bad budget units) without raising inside Lark. Every
mistake becomes a `TTSError` with exact spans; no Lark exception or traceback
escapes: syntax errors are put in words by `syntax_errors`, string literals
are read by `strings`.
"""

from __future__ import annotations

import math
import os

from lark import Token, Transformer_NonRecursive, v_args
from lark.exceptions import UnexpectedInput

from ttsc.common.errors import Diagnostic, Span, TTSError, UserError, did_you_mean, error
from ttsc.dsl import ast
from ttsc.dsl.grammar import RESERVED_WORDS, lark, token_span
from ttsc.dsl.strings import read_text
from ttsc.dsl.syntax_errors import syntax_error

MAX_NESTING = 100  # statement and expression depth inside a strategy

BUDGET_RESOURCES = ("tokens", "memory", "latency")
MEMORY_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
                "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
LATENCY_UNITS = {"ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}


# ------------------------------------------------------------------ the parser

def parse(source: str, file: str = "<string>") -> ast.Module:
    """Parse .tts source; raises `TTSError` listing every mistake found."""
    source = source.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    try:
        tree = lark().parse(source)
    except UnexpectedInput as err:
        raise TTSError([syntax_error(err, source, file)], {file: source}) from None
    builder = _AstBuilder(file)
    definitions = builder.transform(tree)  # non-recursive, so deep nesting cannot overflow here
    for definition in definitions:
        if isinstance(definition, ast.StrategyDef):
            builder.diagnostics += _check_nesting(definition.body)
    if builder.diagnostics:
        ordered = sorted(builder.diagnostics, key=lambda d: (d.span.line, d.span.column) if d.span else (0, 0))
        raise TTSError(ordered, {file: source})
    return ast.Module(file=file, source=source, definitions=tuple(definitions))


def parse_file(path: str | os.PathLike) -> ast.Module:
    """Read and parse a .tts file; an unreadable file is a `UserError`."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            source = f.read()
    except FileNotFoundError:
        raise UserError(f"cannot read {os.fspath(path)}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"cannot read {os.fspath(path)}: it is a directory") from None
    except UnicodeDecodeError as err:
        raise UserError(f"cannot read {os.fspath(path)}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise UserError(f"cannot read {os.fspath(path)}: {err.strerror or err}") from None
    return parse(source, os.fspath(path))


# ------------------------------------------------------------- AST building

@v_args(meta=True)
class _AstBuilder(Transformer_NonRecursive):
    """Builds AST nodes; records mistakes in `diagnostics` instead of raising
    (an exception here would reach the caller wrapped in Lark's VisitError)."""

    def __init__(self, file: str):
        super().__init__(visit_tokens=False)
        self.file = file
        self.diagnostics: list[Diagnostic] = []

    def _span(self, meta) -> Span:
        return Span(self.file, meta.line, meta.column, meta.end_line, meta.end_column)

    def _tspan(self, tok: Token) -> Span:
        return token_span(self.file, tok)

    def _error(self, message: str, span: Span, hint: str | None = None) -> None:
        self.diagnostics.append(error(message, span, hint))

    def _name(self, tok: Token) -> str:
        if tok.value in RESERVED_WORDS:
            self._error(f"`{tok.value}` is a reserved word and cannot be used as a name",
                        self._tspan(tok), f"choose another name, for example `{tok.value}_`")
        return tok.value

    # definitions
    def start(self, meta, definitions):
        return definitions

    def model_spec(self, meta, children):
        name, text = children
        spec, _ = read_text(text, self.file, self.diagnostics, template=False)
        return ast.ModelDef(self._name(name), spec, None, self._tspan(name), self._tspan(text))

    def model_alias(self, meta, children):
        name, other = children
        return ast.ModelDef(self._name(name), None, self._name(other), self._tspan(name), self._tspan(other))

    def prompt_user(self, meta, children):
        raw, name, user = children
        return self._prompt(raw, name, None, user)

    def prompt_system(self, meta, children):
        raw, name, system, user = children
        return self._prompt(raw, name, system, user)

    def _prompt(self, raw, name, system, user) -> ast.PromptDef:
        holes: list[ast.Hole] = []
        system_text = None
        if system is not None:
            system_text, system_holes = read_text(system, self.file, self.diagnostics, template=True)
            holes += system_holes
        user_text, user_holes = read_text(user, self.file, self.diagnostics, template=True)
        return ast.PromptDef(self._name(name), user_text, system_text, raw is not None,
                             tuple(holes + user_holes), self._tspan(name))

    def strategy_def(self, meta, children):
        name, params, (body, rbrace) = children
        return ast.StrategyDef(self._name(name), tuple(params or ()), body, self._tspan(name), self._tspan(rbrace))

    def params(self, meta, names):
        seen: set[str] = set()
        params = []
        for tok in names:
            if tok.value in seen:
                self._error(f"parameter `{tok.value}` is listed twice", self._tspan(tok))
            seen.add(tok.value)
            params.append(ast.Param(self._name(tok), self._tspan(tok)))
        return params

    # statements
    def block(self, meta, children):
        *stmts, rbrace = children
        return tuple(stmts), rbrace

    def assign(self, meta, children):
        target, value = children
        return ast.Assign(self._name(target), value, self._tspan(target))

    def return_stmt(self, meta, children):
        keyword, value = children
        return ast.Return(value, self._tspan(keyword))

    def repeat_stmt(self, meta, children):
        keyword, count, until, (body, _) = children
        return ast.Repeat(count, until, body, self._tspan(keyword))

    # expressions
    def or_op(self, meta, children):
        return ast.BoolOp("or", children[0], children[1], self._span(meta))

    def and_op(self, meta, children):
        return ast.BoolOp("and", children[0], children[1], self._span(meta))

    def not_op(self, meta, children):
        return ast.Not(children[0], self._span(meta))

    def compare(self, meta, children):
        left, op, right = children
        return ast.Compare(op.value, left, right, self._span(meta))

    def add(self, meta, children):
        return ast.BinOp("+", children[0], children[1], self._span(meta))

    def name(self, meta, children):
        (tok,) = children
        return ast.Name(self._name(tok), self._tspan(tok))

    def number(self, meta, children):
        (tok,) = children
        text = tok.value
        if not any(c in text for c in ".eE"):
            return ast.Number(int(text), self._tspan(tok))
        value = float(text)
        if not math.isfinite(value):
            self._error(f"number `{text}` is too large", self._tspan(tok))
        return ast.Number(value, self._tspan(tok))

    def string(self, meta, children):
        (tok,) = children
        value, _ = read_text(tok, self.file, self.diagnostics, template=False)
        return ast.String(value, self._tspan(tok))

    def true(self, meta, children):
        return ast.Bool(True, self._span(meta))

    def false(self, meta, children):
        return ast.Bool(False, self._span(meta))

    def auto(self, meta, children):
        return ast.Auto(self._span(meta))

    def nothing(self, meta, children):
        return ast.Nothing(self._span(meta))

    def list_expr(self, meta, items):
        return ast.ListExpr(tuple(item for item in items if item is not None), self._span(meta))

    def keyword(self, meta, children):
        name, value = children
        return ast.Keyword(self._name(name), value, self._tspan(name))

    def arguments(self, meta, items):
        return items

    def call(self, meta, children):
        func, arguments = children
        args, kwargs = [], []
        for item in arguments or ():
            if isinstance(item, ast.Keyword):
                if any(k.name == item.name for k in kwargs):
                    self._error(f"keyword argument `{item.name}` is given twice", item.span)
                kwargs.append(item)
            else:
                if kwargs:
                    self._error("positional argument after a keyword argument", item.span,
                                f"put positional arguments first: `{func.value}(a, b, key=value)`")
                args.append(item)
        return ast.Call(self._name(func), tuple(args), tuple(kwargs), self._span(meta), self._tspan(func))

    # budget
    def budget_def(self, meta, children):
        keyword, *items = children
        kept: list[ast.BudgetItem] = []
        for item in items:
            if item is None:
                continue
            twin = next((k for k in kept if (k.resource, k.per_input) == (item.resource, item.per_input)), None)
            if twin is not None:
                scope = " per input" if item.per_input else ""
                self._error(f"`{item.resource}{scope}` is limited twice in this budget "
                            f"(first on line {twin.span.line})", item.span)
            kept.append(item)
        return ast.BudgetDef(tuple(kept), self._tspan(keyword))

    def budget_item(self, meta, children):
        resource, op, number, unit, per = children
        if resource.value not in BUDGET_RESOURCES:
            self._error(f"unknown budget resource `{resource.value}`; use tokens, memory or latency",
                        self._tspan(resource), did_you_mean(resource.value, BUDGET_RESOURCES))
            return None
        if op.value != "<=":
            self._error(f"a budget line takes `<=` only, not `{op.value}`", self._tspan(op),
                        "budgets are upper limits, e.g. `tokens <= 4000 per input`")
        value = float(number.value)
        total = resource.value == "tokens" and unit is not None and unit.value == "total"
        if total and per is not None:
            self._error("a token budget is either `total` or `per input`, not both", self._tspan(unit))
        scale = self._unit_scale(resource.value, number, None if total else unit)
        if not math.isfinite(value) or value <= 0:
            self._error(f"a budget limit must be a positive number, not `{number.value}`", self._tspan(number))
        elif resource.value == "tokens" and not value.is_integer():
            self._error(f"a token budget must be a whole number, not `{number.value}`", self._tspan(number))
        return ast.BudgetItem(resource.value, value * scale, per is not None, self._span(meta), total)

    def _unit_scale(self, resource: str, number: Token, unit: Token | None) -> float:
        if unit is not None and unit.value.lower() in ("per_input", "perinput"):
            self._error(f"unexpected `{unit.value}`", self._tspan(unit), "write `per input` as two words")
            return 1.0
        if resource == "tokens":
            if unit is not None:
                self._error(f"`tokens` is a count and takes no unit, but found `{unit.value}`", self._tspan(unit),
                            "write e.g. `tokens <= 4000 per input`")
            return 1.0
        units = MEMORY_UNITS if resource == "memory" else LATENCY_UNITS
        listed = ", ".join(units)
        if unit is None:
            self._error(f"`{resource}` needs a unit after the number: one of {listed}", self._tspan(number))
            return 1.0
        if unit.value not in units:
            self._error(f"`{unit.value}` is not a {resource} unit; use one of {listed}", self._tspan(unit),
                        did_you_mean(unit.value, units))
            return 1.0
        return float(units[unit.value])


def _check_nesting(body: tuple[ast.Stmt, ...]) -> list[Diagnostic]:
    """An error when statements and expressions nest deeper than MAX_NESTING:
    later passes walk the AST recursively, and no real strategy comes close."""
    stack: list[tuple[object, int]] = [(stmt, 1) for stmt in body]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            return [error(f"this is nested too deeply (more than {MAX_NESTING} levels)", node.span,
                          "split it into several assignments")]
        stack += [(child, depth + 1) for child in ast.children(node)]
    return []
