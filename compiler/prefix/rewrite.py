"""Shared-part-first layout: a per-candidate prompt (verify, score, critique,
refine) whose labeled data blocks put the candidate before the question
("Proposed solution: {candidate}" then "Problem: {question}") is rewritten
with the question block first. Labeled blocks ("Label: ...") are data the
model reads as a set, so their order does not change the question asked;
instruction text is never moved across. The calls for one input then share
everything up to the candidate.
"""

from __future__ import annotations

import re

from ttsc.common.prompts import hole_names
from ttsc.compiler.ir import Program
from ttsc.compiler.passes.walk import graphs
from ttsc.compiler.prefix.layout import op_holes

_LABELED = re.compile(r"^[ \t]*[A-Z][A-Za-z0-9 _'()-]{0,40}:")


def _blocks(text: str) -> tuple[list[str], str]:
    """Paragraphs when the text has blank lines, else lines; and the separator."""
    sep = "\n\n" if "\n\n" in text.strip("\n") else "\n"
    return text.split(sep), sep


def shared_first(user: str, op: str) -> str | None:
    """The template with labeled input blocks moved before the first labeled
    block holding a per-call hole, or None when nothing can move."""
    per_call = op_holes(op, "call")
    if not per_call:
        return None
    blocks, sep = _blocks(user)

    def holes(b: str) -> set[str]:
        return set(hole_names(b))

    first = next((i for i, b in enumerate(blocks) if holes(b) & set(per_call)), None)
    if first is None or not _LABELED.match(blocks[first]):
        return None
    # The run of labeled data blocks starting at the first per-call block.
    end = first
    while end + 1 < len(blocks) and _LABELED.match(blocks[end + 1]):
        end += 1
    run = blocks[first:end + 1]
    movable = [b for b in run if holes(b) and not holes(b) & set(per_call)]
    if not movable:
        return None
    rest = [b for b in run if b not in movable]
    new = blocks[:first] + movable + rest + blocks[end + 1:]
    return sep.join(new)


def rewrite_layouts(program: Program) -> list[str]:
    notes: list[str] = []
    for graph in list(graphs(program.graph)):
        for node in graph.nodes():
            if not op_holes(node.op.value, "call") or not node.attrs.get("prompt"):
                continue
            name = node.attrs["prompt"]
            pdef = program.prompts[name]
            new_user = shared_first(pdef["user"], node.op.value)
            if new_user is None or new_user == pdef["user"]:
                continue
            new_name = f"{name}__shared_first"
            program.prompts.setdefault(new_name, dict(pdef, user=new_user))
            node.attrs["prompt"] = new_name
            where = f"line {node.span.line}" if node.span else node.id
            notes.append(f"{node.op.value} at {where}: prompt `{name}` laid out question-first "
                         f"(`{new_name}`), so its calls share the prefix up to the candidate")
    return notes
