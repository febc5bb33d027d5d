"""Inline strategy calls: splice each CALL node's body into the caller."""

from __future__ import annotations

from ttsc.compiler.ir import Graph, Node, Op, Program
from ttsc.compiler.passes.manager import PassResult
from ttsc.compiler.passes.walk import graphs


def inline(program: Program) -> PassResult:
    notes: list[str] = []
    for graph in list(graphs(program.graph)):
        for node in [n for n in graph.nodes() if n.op is Op.CALL]:
            _inline_call(graph, node)
            notes.append(f"inlined strategy `{node.attrs['strategy']}` at line "
                         f"{node.span.line if node.span else '?'}")
    return PassResult(bool(notes), notes)


def _inline_call(graph: Graph, call: Node) -> None:
    body: Graph = call.attrs["body"].copy()
    # Calls inside the callee are inlined first, so one splice suffices.
    for sub in [n for n in body.nodes() if n.op is Op.CALL]:
        _inline_call(body, sub)
    mapping: dict[str, str] = {}
    for node in body.nodes():
        if node.op is Op.INPUT:
            mapping[node.id] = call.inputs[f"arg:{node.attrs['name']}"]
        elif node.op is Op.OUTPUT:
            mapping[node.id] = mapping[node.inputs["value"]]
        else:
            new = graph.add(node.op, node.type, {r: mapping[s] for r, s in node.inputs.items()},
                            node.attrs, node.span, meta=dict(node.meta, inlined_from=call.attrs["strategy"]))
            mapping[node.id] = new.id
    graph.replace_uses(call.id, mapping[body.output])
    graph.remove(call.id)
