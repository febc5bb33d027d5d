"""Default selection: fix every search-space knob the allocator left open.

`choice(...)` takes its first option and `range(lo, hi)` its midpoint, so a
space compiles to one concrete strategy; `ttsc search` explores the rest.
An `auto` that no budget resolved is an error: it has no meaning without one.
"""

from __future__ import annotations

from typing import Any

from ttsc.compiler.ir import Node, Op, Program
from ttsc.compiler.passes.manager import PassResult
from ttsc.compiler.passes.walk import graphs
from ttsc.common.errors import TTSError, error

KNOB_ATTRS = ("model", "n", "temperature", "max_tokens", "k", "top_p", "top_k")


def _where(node: Node) -> str:
    return f"line {node.span.line}" if node.span else node.id


def select_defaults(program: Program) -> PassResult:
    notes: list[str] = []
    problems = []
    for graph in list(graphs(program.graph)):
        for node in list(graph.nodes()):
            for key in KNOB_ATTRS:
                value = node.attrs.get(key)
                if not isinstance(value, dict):
                    continue
                if value.get("auto") and "choice" not in value:
                    problems.append(error(
                        f"`{key}=auto` of `{node.op.value}` needs a budget to be solved against",
                        node.span, "add a block like: budget { tokens <= 4000 per input }"))
                    continue
                chosen: Any = value["choice"][0] if "choice" in value else sum(value["range"]) / 2
                if isinstance(chosen, float):
                    chosen = round(chosen, 4)
                node.attrs[key] = chosen
                notes.append(f"{node.op.value} at {_where(node)}: {key} = {chosen!r} "
                             f"(default of {'choice' if 'choice' in value else 'range'}; "
                             "`ttsc search` explores the others)")
            if node.op is Op.LOOP and isinstance(node.attrs.get("count"), dict):
                problems.append(error("`repeat auto` needs a budget to be solved against",
                                      node.span, "add a block like: budget { tokens <= 4000 per input }"))
            if node.op is Op.CHOICE and node.attrs.get("selected") is None:
                node.attrs["selected"] = 0
                notes.append(f"choice at {_where(node)}: option 1 of {len(node.inputs)} "
                             "(default; `ttsc search` explores the others)")
    if problems:
        raise TTSError(problems, {program.file: program.source})
    return PassResult(bool(notes), notes)
