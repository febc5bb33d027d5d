"""Variables while a strategy is built: which IR node each name stands for."""

from __future__ import annotations

from ttsc.common.errors import Span
from ttsc.compiler.ir import Graph, Op
from ttsc.compiler.ops import T


class _Var:
    __slots__ = ("node", "span", "used")

    def __init__(self, node: str, span: Span | None):
        self.node, self.span, self.used = node, span, False


class Scope:
    """Variables of one graph. Reading an outer variable inside a loop region
    creates an INPUT node there (a capture), so regions stay closed."""

    def __init__(self, graph: Graph, parent: "Scope | None" = None):
        self.graph, self.parent = graph, parent
        self.vars: dict[str, _Var] = {}
        self.captures: dict[str, str] = {}  # name -> INPUT node id in this graph

    def lookup(self, name: str) -> str | None:
        if name in self.vars:
            self.vars[name].used = True
            return self.vars[name].node
        if name in self.captures:
            return self.captures[name]
        if self.parent is None:
            return None
        outer = self.parent.lookup(name)
        if outer is None:
            return None
        typ = self.parent.graph[outer].type
        node = self.graph.add(Op.INPUT, typ, attrs={"name": name, "role": "capture"})
        self.captures[name] = node.id
        return node.id

    def visible(self) -> list[str]:
        names = set(self.vars) | set(self.captures)
        return sorted(names | (set(self.parent.visible()) if self.parent else set()))

    def bind(self, name: str, node: str, span: Span | None) -> None:
        self.vars[name] = _Var(node, span)


def defined(scope: Scope, name: str) -> bool:
    s: Scope | None = scope
    while s is not None:
        if name in s.vars or name in s.captures:
            return True
        s = s.parent
    return False


def resolve(scope: Scope, name: str) -> str:
    """The node of a variable in this scope, capturing it if it is outer."""
    used = scope.vars[name].used if name in scope.vars else None
    nid = scope.lookup(name)
    if used is not None:
        scope.vars[name].used = used  # looking up for plumbing is not a use
    assert nid is not None, name
    return nid


def type_in(scope: Scope, nid: str) -> T:
    return scope.graph[nid].type


def rebind(scope: Scope, name: str, nid: str) -> None:
    used = scope.vars[name].used if name in scope.vars else True
    span = scope.vars[name].span if name in scope.vars else None
    scope.bind(name, nid, span)
    scope.vars[name].used = used
