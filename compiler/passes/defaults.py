"""Default selection: fix every search-space knob the allocator left open.

`choice(...)` takes its first option, `range(lo, hi)` its midpoint (a whole
number for an integer setting) and `model=auto` the first model, so a space
compiles to one concrete strategy; the others are for a search to try
(`compile_program(program, assignment)`). Any other `auto` that no budget
resolved is an error: it has no meaning without one.
"""

from __future__ import annotations

from ttsc.common.errors import TTSError, error
from ttsc.common.knobs import Auto, Choice, is_knob
from ttsc.compiler.ir import Node, Op, Program
from ttsc.compiler.passes.manager import PassResult
from ttsc.compiler.passes.walk import graphs

_BUDGET_HINT = "add a block like: budget { tokens <= 4000 per input }"


def _where(node: Node) -> str:
    return f"line {node.span.line}" if node.span else node.id


def select_defaults(program: Program) -> PassResult:
    notes: list[str] = []
    problems = []
    for graph in list(graphs(program.graph)):
        for node in list(graph.nodes()):
            if node.op is Op.LOOP:
                count = node.attrs.get("count")
                if isinstance(count, Auto):
                    problems.append(error("`repeat auto` needs a budget to be solved against",
                                          node.span, _BUDGET_HINT))
                elif is_knob(count):
                    node.attrs["count"] = count.default()
                    notes.append(f"repeat at {_where(node)}: {count.default()} rounds "
                                 "(default; the others are for a search)")
                continue
            for key, value in list(node.attrs.items()):
                if not is_knob(value):
                    continue
                if isinstance(value, Auto) and not value.options:
                    problems.append(error(
                        f"`{key}=auto` of `{node.op.value}` needs a budget to be solved against",
                        node.span, _BUDGET_HINT))
                    continue
                node.attrs[key] = chosen = value.default()
                kind = "choice" if isinstance(value, Choice) else "auto" if isinstance(value, Auto) else "range"
                notes.append(f"{node.op.value} at {_where(node)}: {key} = {chosen!r} "
                             f"(default of {kind}; the others are for a search)")
            if node.op is Op.CHOICE and node.attrs.get("selected") is None:
                node.attrs["selected"] = 0
                notes.append(f"choice at {_where(node)}: option 1 of {len(node.inputs)} "
                             "(default; the others are for a search)")
    if problems:
        raise TTSError(problems, {program.file: program.source})
    # Copies of one knob (an ensemble's calls, a branch's variants) are decided alike: one note.
    notes = list(dict.fromkeys(notes))
    return PassResult(bool(notes), notes)
