"""Constant folding: comparisons and logic over constants, decided or
single-option choices, and loops whose condition or round count is known."""

from __future__ import annotations

import operator

from ttsc.compiler.ir import Graph, Node, Op, Program
from ttsc.compiler.ops import T
from ttsc.compiler.passes.manager import PassResult
from ttsc.compiler.passes.walk import graphs

_CMP = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
        "==": operator.eq, "!=": operator.ne}


def _const(graph: Graph, nid: str):
    node = graph[nid]
    return node.attrs["value"] if node.op is Op.CONST else None


def _fold(graph: Graph, node: Node) -> object | None:
    if node.op is Op.COMPARE:
        a, b = _const(graph, node.inputs["left"]), _const(graph, node.inputs["right"])
        if a is not None and b is not None:
            return _CMP[node.attrs["op"]](a, b)
    if node.op is Op.LOGIC:
        vals = [_const(graph, s) for s in node.inputs.values()]
        op = node.attrs["op"]
        if op == "not" and vals[0] is not None:
            return not vals[0]
        if op == "and" and (False in vals or all(v is True for v in vals)):
            return False not in vals
        if op == "or" and (True in vals or all(v is False for v in vals)):
            return True in vals
    return None


def fold_constants(program: Program) -> PassResult:
    notes: list[str] = []
    for graph in list(graphs(program.graph)):
        for node in list(graph.nodes()):
            value = _fold(graph, node)
            if value is not None:
                const = graph.add(Op.CONST, T.BOOL, attrs={"value": value}, span=node.span)
                graph.replace_uses(node.id, const.id)
                graph.remove(node.id)
                notes.append(f"{graph.name}: {node.op.value} {node.id} is always {str(value).lower()}")
            elif node.op is Op.CHOICE and (len(node.inputs) == 1
                                           or node.attrs.get("selected") is not None):
                # A decided choice is its selected option; dce drops the others.
                picked = node.attrs.get("selected") or 0
                graph.replace_uses(node.id, node.inputs[f"option{picked}"])
                graph.remove(node.id)
                notes.append(f"{graph.name}: choice {node.id} is option {picked + 1} "
                             f"of {len(node.inputs)}")
            elif node.op is Op.LOOP:
                notes += _fold_loop(graph, node)
    return PassResult(bool(notes), notes)


def _fold_loop(graph: Graph, loop: Node) -> list[str]:
    cond: Graph | None = loop.attrs.get("cond")
    value = _const(cond, cond[cond.output].inputs["value"]) if cond is not None else None
    if value is False:
        loop.attrs["cond"] = None  # never stops early: plain count
        return [f"{graph.name}: loop {loop.id}'s `until` is never true; dropped it"]
    if value is True or loop.attrs["count"] == 0:
        # Zero rounds: every carried variable keeps its value from before.
        for user in graph.users(loop.id):
            graph.replace_uses(user.id, loop.inputs[f"carry:{user.attrs['var']}"])
            graph.remove(user.id)
        graph.remove(loop.id)
        return [f"{graph.name}: loop {loop.id} runs zero rounds; removed it"]
    return []
