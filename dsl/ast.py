"""The typed AST of a .tts file. Every node carries the span it came from.

The parser (`ttsc.dsl.parser`) builds these; the compiler's front half
(`ttsc.compiler.build`) turns them into IR. Nothing here knows about ops or
types: names like `generate` are plain calls until the compiler resolves them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Union

from ttsc.common.errors import Span


# ---------------------------------------------------------------- expressions

@dataclass(frozen=True)
class Name:
    id: str
    span: Span


@dataclass(frozen=True)
class Number:
    value: int | float
    span: Span


@dataclass(frozen=True)
class String:
    value: str  # escapes already decoded
    span: Span


@dataclass(frozen=True)
class Bool:
    value: bool
    span: Span


@dataclass(frozen=True)
class Auto:
    """`auto`: a value the budget allocator chooses."""

    span: Span


@dataclass(frozen=True)
class Nothing:
    """`none`: the option of a `choice(...)` that leaves a step out."""

    span: Span


@dataclass(frozen=True)
class ListExpr:
    items: tuple["Expr", ...]
    span: Span


@dataclass(frozen=True)
class Keyword:
    name: str
    value: "Expr"
    span: Span  # of the keyword name


@dataclass(frozen=True)
class Call:
    """`func(args, key=value)`. Ops, strategies, `choice`, `range`, `regex`."""

    func: str
    args: tuple["Expr", ...]
    kwargs: tuple[Keyword, ...]
    span: Span  # whole call
    func_span: Span  # the callee name only


@dataclass(frozen=True)
class BinOp:
    op: str  # "+"
    left: "Expr"
    right: "Expr"
    span: Span


@dataclass(frozen=True)
class Compare:
    op: str  # "<", "<=", ">", ">=", "==", "!="
    left: "Expr"
    right: "Expr"
    span: Span


@dataclass(frozen=True)
class BoolOp:
    op: str  # "and", "or"
    left: "Expr"
    right: "Expr"
    span: Span


@dataclass(frozen=True)
class Not:
    operand: "Expr"
    span: Span


Expr = Union[Name, Number, String, Bool, Auto, Nothing, ListExpr, Call, BinOp, Compare, BoolOp, Not]


# ----------------------------------------------------------------- statements

@dataclass(frozen=True)
class Assign:
    target: str
    value: Expr
    span: Span  # of the target name


@dataclass(frozen=True)
class Repeat:
    """`repeat COUNT [until COND] { BODY }`: at most COUNT rounds; COND is
    checked before each round and stops the loop once true."""

    count: Expr
    until: Expr | None
    body: tuple["Stmt", ...]
    span: Span  # of the `repeat` keyword


@dataclass(frozen=True)
class Return:
    value: Expr
    span: Span


Stmt = Union[Assign, Repeat, Return]


# ---------------------------------------------------------------- definitions

@dataclass(frozen=True)
class ModelDef:
    """`model NAME = "SPEC"` or `model NAME = OTHER` (an alias)."""

    name: str
    spec: str | None
    alias: str | None
    span: Span  # of the name
    value_span: Span  # of the spec string or the aliased name


@dataclass(frozen=True)
class Hole:
    name: str
    span: Span  # points at the hole inside the string


@dataclass(frozen=True)
class PromptDef:
    """`prompt NAME = <user text>`; optionally `system <text> user <text>`;
    `raw prompt NAME = <text>` skips the chat template. Texts are strings,
    usually triple-quoted."""

    name: str
    user: str
    system: str | None
    raw: bool
    holes: tuple[Hole, ...]  # in order of appearance, system part first
    span: Span


@dataclass(frozen=True)
class Param:
    name: str
    span: Span


@dataclass(frozen=True)
class StrategyDef:
    name: str
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]
    span: Span  # of the name
    end_span: Span  # of the closing brace


@dataclass(frozen=True)
class BudgetItem:
    """One budget line, normalized: tokens in tokens, memory in bytes,
    latency in seconds."""

    resource: str  # "tokens" | "memory" | "latency"
    value: float
    per_input: bool
    span: Span
    total: bool = False  # `tokens <= T total`: one budget for a whole data set, spent at run time


@dataclass(frozen=True)
class BudgetDef:
    items: tuple[BudgetItem, ...]
    span: Span


Definition = Union[ModelDef, PromptDef, StrategyDef, BudgetDef]


@dataclass(frozen=True)
class Module:
    file: str
    source: str
    definitions: tuple[Definition, ...]

    def models(self) -> list[ModelDef]:
        return [d for d in self.definitions if isinstance(d, ModelDef)]

    def prompts(self) -> list[PromptDef]:
        return [d for d in self.definitions if isinstance(d, PromptDef)]

    def strategies(self) -> list[StrategyDef]:
        return [d for d in self.definitions if isinstance(d, StrategyDef)]

    def budgets(self) -> list[BudgetDef]:
        return [d for d in self.definitions if isinstance(d, BudgetDef)]


def children(node: object) -> tuple:
    """The statements and expressions directly inside a statement or expression."""
    if isinstance(node, (Assign, Return)):
        return (node.value,)
    if isinstance(node, Repeat):
        return (node.count, *((node.until,) if node.until is not None else ()), *node.body)
    if isinstance(node, ListExpr):
        return node.items
    if isinstance(node, Call):
        return (*node.args, *(k.value for k in node.kwargs))
    if isinstance(node, (BinOp, Compare, BoolOp)):
        return (node.left, node.right)
    if isinstance(node, Not):
        return (node.operand,)
    return ()


def replace_exprs(module: Module, new: dict[Span, Callable[[Expr], Expr]]) -> Module:
    """The module with each `choice(...)`, `range(...)` or `auto` expression
    whose span is a key of `new` replaced by what its function makes of it."""

    def rebuild(node):
        if isinstance(node, tuple):
            return tuple(rebuild(n) for n in node)
        if isinstance(node, (Auto, Call)) and node.span in new:
            return new[node.span](node)
        if isinstance(node, (ListExpr, Keyword, Call, BinOp, Compare, BoolOp, Not,
                             Assign, Repeat, Return, StrategyDef)):
            return dataclasses.replace(node, **{f.name: rebuild(getattr(node, f.name))
                                                for f in dataclasses.fields(node)
                                                if not f.name.endswith("span")})
        return node

    return dataclasses.replace(module, definitions=rebuild(module.definitions))
