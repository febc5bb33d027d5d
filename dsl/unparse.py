"""Write an AST back out as .tts source: `parse(unparse(m))` gives `m` again
(spans aside; comments and layout are not kept).

Expressions get the fewest parentheses the grammar's precedence needs (loosest
first: or, and, not, comparison, +); strings are written by `strings.quote`
(prompt texts over several lines triple-quoted); budget limits in the largest
unit that states them exactly.
"""

from __future__ import annotations

from ttsc.dsl import ast
from ttsc.dsl.parser import LATENCY_UNITS, MEMORY_UNITS
from ttsc.dsl.strings import quote

INDENT = "    "

# Binding strength of each expression form; an operand weaker than its
# position allows is parenthesized.
_OR, _AND, _NOT, _COMPARE, _ADD, _ATOM = range(1, 7)


def unparse(module: ast.Module) -> str:
    """The module as .tts source: a blank line between definitions, except
    between consecutive models."""
    parts: list[str] = []
    for i, d in enumerate(module.definitions):
        if i:
            together = isinstance(d, ast.ModelDef) and isinstance(module.definitions[i - 1], ast.ModelDef)
            parts.append("\n" if together else "\n\n")
        parts.append(_definition(d))
    return "".join(parts) + "\n"


def unparse_expr(e: ast.Expr) -> str:
    return _expr(e, _OR)


def number(value: int | float) -> str:
    """A number literal that reads back as the same int or float."""
    return str(value) if isinstance(value, int) else repr(float(value))


# ------------------------------------------------------------------ definitions

def _definition(d: ast.Definition) -> str:
    if isinstance(d, ast.ModelDef):
        return f"model {d.name} = {quote(d.spec) if d.spec is not None else d.alias}"
    if isinstance(d, ast.PromptDef):
        raw = "raw " if d.raw else ""
        user = quote(d.user, block=True)
        if d.system is None:
            return f"{raw}prompt {d.name} = {user}"
        return f"{raw}prompt {d.name} = system {quote(d.system, block=True)} user {user}"
    if isinstance(d, ast.StrategyDef):
        params = ", ".join(p.name for p in d.params)
        return f"strategy {d.name}({params}) {{\n{_block(d.body, INDENT)}}}"
    if isinstance(d, ast.BudgetDef):
        return "budget {\n" + "".join(f"{INDENT}{_budget_item(i)}\n" for i in d.items) + "}"
    raise TypeError(f"unknown definition {d!r}")


def _budget_item(item: ast.BudgetItem) -> str:
    per = " per input" if item.per_input else ""
    if item.resource == "tokens":
        return f"tokens <= {number(int(item.value))}{' total' if item.total else per}"
    units = MEMORY_UNITS if item.resource == "memory" else LATENCY_UNITS
    # The largest unit that states the limit as a whole number exactly, else
    # bytes or seconds as they are.
    for unit, scale in sorted(units.items(), key=lambda u: -u[1]):
        count = item.value / scale
        if count >= 1 and float(count).is_integer() and float(int(count)) * scale == item.value:
            return f"{item.resource} <= {int(count)} {unit}{per}"
    base = "B" if item.resource == "memory" else "s"
    return f"{item.resource} <= {number(_plain(item.value))} {base}{per}"


def _plain(value: float) -> int | float:
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else value


# ------------------------------------------------------------------ statements

def _block(stmts: tuple[ast.Stmt, ...], indent: str) -> str:
    return "".join(_stmt(s, indent) for s in stmts)


def _stmt(s: ast.Stmt, indent: str) -> str:
    if isinstance(s, ast.Assign):
        return f"{indent}{s.target} = {unparse_expr(s.value)}\n"
    if isinstance(s, ast.Return):
        return f"{indent}return {unparse_expr(s.value)}\n"
    if isinstance(s, ast.Repeat):
        until = f" until {unparse_expr(s.until)}" if s.until is not None else ""
        body = _block(s.body, indent + INDENT)
        return f"{indent}repeat {unparse_expr(s.count)}{until} {{\n{body}{indent}}}\n"
    raise TypeError(f"unknown statement {s!r}")


# ------------------------------------------------------------------ expressions

def _expr(e: ast.Expr, weakest: int) -> str:
    """`e` written to stand where nothing weaker than `weakest` may."""
    strength, text = _written(e)
    return text if strength >= weakest else f"({text})"


def _written(e: ast.Expr) -> tuple[int, str]:
    if isinstance(e, ast.Name):
        return _ATOM, e.id
    if isinstance(e, ast.Number):
        return _ATOM, number(e.value)
    if isinstance(e, ast.String):
        return _ATOM, quote(e.value)
    if isinstance(e, ast.Bool):
        return _ATOM, "true" if e.value else "false"
    if isinstance(e, ast.Auto):
        return _ATOM, "auto"
    if isinstance(e, ast.Nothing):
        return _ATOM, "none"
    if isinstance(e, ast.ListExpr):
        return _ATOM, "[" + ", ".join(_expr(i, _OR) for i in e.items) + "]"
    if isinstance(e, ast.Call):
        args = [_expr(a, _OR) for a in e.args] + [f"{k.name}={_expr(k.value, _OR)}" for k in e.kwargs]
        return _ATOM, f"{e.func}({', '.join(args)})"
    if isinstance(e, ast.BinOp):
        return _ADD, f"{_expr(e.left, _ADD)} + {_expr(e.right, _ATOM)}"
    if isinstance(e, ast.Compare):
        return _COMPARE, f"{_expr(e.left, _ADD)} {e.op} {_expr(e.right, _ADD)}"
    if isinstance(e, ast.Not):
        return _NOT, f"not {_expr(e.operand, _NOT)}"
    if isinstance(e, ast.BoolOp):
        strength = _OR if e.op == "or" else _AND
        return strength, f"{_expr(e.left, strength)} {e.op} {_expr(e.right, strength + 1)}"
    raise TypeError(f"unknown expression {e!r}")
