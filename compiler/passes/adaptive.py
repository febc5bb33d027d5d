"""A data-set token budget is spent at run time: `tokens <= T total`.

`budget { tokens <= T total }` (or `ttsc eval --budget-tokens T`) is one budget
for a whole data set. How many samples each input gets is then decided while
the data set runs, in rounds, from what each input's samples show so far
(runtime/allocation/rounds.py, fitted by `ttsc calibrate`); no compile-time
choice of one n can do that. So, before allocation, every top-level
`generate(..., n=auto)` whose samples are voted starts at one sample (the
first round) and records the budget in its facts (`adaptive`), and the total
leaves the per-input budget the allocator solves.
"""

from __future__ import annotations

from typing import Any

from ttsc.common.errors import TTSError, error
from ttsc.common.knobs import Auto
from ttsc.compiler.ir import Node, Op, Program
from ttsc.compiler.passes.manager import PassResult


def defer_total_budget(program: Program) -> PassResult:
    tokens = (program.budget or {}).get("tokens")
    if not tokens or not tokens.get("total"):
        return PassResult(False, [])
    budget = float(tokens["value"])
    graph = program.graph
    notes, problems = [], []
    for node in list(graph.nodes()):
        if node.op is not Op.GENERATE or not isinstance(node.attrs.get("n"), Auto):
            continue
        if not _is_voted(graph, node):
            problems.append(error(
                "a total token budget allocates `n=auto` across a data set by how the samples "
                "vote; this generate's samples are not voted", node.span,
                "use vote(extract(generate(..., n=auto), number)), or a `per input` budget"))
            continue
        node.attrs["n"] = 1
        node.meta["adaptive"] = {"knob": "n", "budget_tokens": budget}
        where = f"line {node.span.line}" if node.span else node.id
        notes.append(f"generate at {where}: n=auto is allocated at run time, in rounds, within "
                     f"{budget:,.0f} tokens for the whole data set (starts at n=1)")
    if problems:
        raise TTSError(problems, {program.file: program.source})
    if not notes:
        raise TTSError([error("a total token budget needs a `generate(..., n=auto)` whose samples "
                              "are voted, to spend it on", None,
                              "or write the budget `per input`")], {program.file: program.source})
    rest = {k: v for k, v in program.budget.items() if k != "tokens"}
    program.budget = rest or None
    return PassResult(True, notes)


def _is_voted(graph: Any, node: Node) -> bool:
    """Whether the samples flow into a vote through one extract."""
    return any(user.op is Op.EXTRACT and any(v.op is Op.VOTE for v in graph.users(user.id))
               for user in graph.users(node.id))
