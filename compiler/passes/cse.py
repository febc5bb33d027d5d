"""Common-subexpression elimination over deterministic nodes.

Sampling nodes are never merged here: two `generate` calls are two independent
draws. `merge_samples` is the pass that combines those soundly.
"""

from __future__ import annotations

from ttsc.compiler.ir import Op, Program
from ttsc.compiler.passes.manager import PassResult
from ttsc.compiler.passes.walk import graphs


def cse(program: Program) -> PassResult:
    notes: list[str] = []
    for graph in list(graphs(program.graph)):
        seen: dict[tuple, str] = {}
        merged_consts = 0
        for node in list(graph.nodes()):
            if not node.is_deterministic:
                continue
            key = node.key()
            if key not in seen:
                seen[key] = node.id
                continue
            keep = seen[key]
            graph.replace_uses(node.id, keep)
            graph.remove(node.id)
            if node.op is Op.CONST:
                merged_consts += 1
            else:
                notes.append(f"{graph.name}: {node.op.value} {node.id} is the same as {keep}")
        if merged_consts:
            notes.append(f"{graph.name}: merged {merged_consts} duplicate constant(s)")
    return PassResult(bool(notes), notes)
