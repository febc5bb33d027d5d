"""Dead-node elimination: drop nodes whose value never reaches the output."""

from __future__ import annotations

import networkx as nx

from ttsc.compiler.ir import Op, Program
from ttsc.compiler.passes.manager import PassResult
from ttsc.compiler.passes.walk import graphs


def dce(program: Program) -> PassResult:
    notes: list[str] = []
    for graph in list(graphs(program.graph)):
        live = nx.ancestors(graph.g, graph.output) | {graph.output}
        dead = [n for n in graph.nodes() if n.id not in live and n.op is not Op.INPUT]
        for node in reversed(dead):
            graph.remove(node.id)
        if dead:
            ops = ", ".join(sorted({n.op.value for n in dead}))
            notes.append(f"{graph.name}: removed {len(dead)} dead node(s) ({ops})")
    return PassResult(bool(notes), notes)
