"""Sample merging: `generate` calls with the same model, prompt, prompt inputs
and sampling settings become one call with n1 + n2 samples, split after.

One request of n samples shares its prompt's prefill across all of them,
where two requests would each prefill it (without a prefix cache).
"""

from __future__ import annotations

from ttsc.common.knobs import is_knob
from ttsc.compiler.ir import Node, Op, Program
from ttsc.compiler.ops import T
from ttsc.compiler.passes.manager import PassResult
from ttsc.compiler.passes.walk import graphs


def _mergeable(node: Node) -> bool:
    return (node.op is Op.GENERATE and isinstance(node.attrs.get("n"), int)
            and node.attrs.get("seed") is None
            and node.attrs.get("first") is None  # first-finish keeps k of its own n
            and not any(is_knob(v) for v in node.attrs.values()))


def _group_key(node: Node) -> tuple:
    attrs = {k: v for k, v in node.attrs.items() if k != "n"}
    return (tuple(sorted(node.inputs.items())), tuple(sorted((k, repr(v)) for k, v in attrs.items())))


def merge_samples(program: Program) -> PassResult:
    notes: list[str] = []
    for graph in list(graphs(program.graph)):
        groups: dict[tuple, list[Node]] = {}
        for node in graph.nodes():
            if _mergeable(node):
                groups.setdefault(_group_key(node), []).append(node)
        for members in groups.values():
            if len(members) < 2:
                continue
            total = sum(m.attrs["n"] for m in members)
            first = members[0]
            merged = graph.add(Op.GENERATE, T.CANDIDATES, first.inputs, dict(first.attrs, n=total),
                               first.span, meta={"merged_from": [m.id for m in members]})
            start = 0
            for m in members:
                stop = start + m.attrs["n"]
                part = graph.add(Op.SLICE, T.CANDIDATES, {"candidates": merged.id},
                                 {"start": start, "stop": stop}, m.span)
                graph.replace_uses(m.id, part.id)
                graph.remove(m.id)
                start = stop
            lines = ", ".join(str(m.span.line) if m.span else m.id for m in members)
            notes.append(f"{graph.name}: merged {len(members)} generate calls (lines {lines}) "
                         f"into one with n={total}")
    return PassResult(bool(notes), notes)
