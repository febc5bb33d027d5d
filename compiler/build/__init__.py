"""From AST to IR: name resolution, type and arity checking, loop regions.

`build(module)` checks the whole file and returns one IR graph per strategy.
It collects every diagnostic it can instead of stopping at the first, so
`ttsc check` reports all errors of a file in one go.

Strategy calls become CALL nodes holding the callee built for the argument
types at that call site; the `inline` pass splices them in. Recursion between
strategies is rejected before any body is built. Knobs (`choice`, `range`,
`auto`) become `common.knobs` values in the nodes' attributes, and every one
is recorded as a `KnobSite` with a stable id (`Built.sites`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ttsc.common.errors import Diagnostics
from ttsc.compiler.build.context import KnobSite
from ttsc.compiler.build.definitions import ModuleInfo, collect, strategy_order
from ttsc.compiler.build.statements import build_strategy
from ttsc.compiler.ir import Graph
from ttsc.compiler.ops import T
from ttsc.dsl import ast


@dataclass
class Built:
    info: ModuleInfo
    graphs: dict[str, Graph]  # strategy -> IR (CALL nodes not yet inlined)
    diagnostics: Diagnostics
    sites: dict[str, KnobSite] = field(default_factory=dict)  # knob sites of every strategy, by id


def build(module: ast.Module) -> Built:
    diags = Diagnostics()
    info = collect(module, diags)
    order = strategy_order(info, diags)
    graphs: dict[str, Graph] = {}
    sites: dict[str, KnobSite] = {}
    for name in order:
        sdef = info.strategies[name]
        graph = build_strategy(info, diags, sites, sdef, {p.name: T.TEXT for p in sdef.params})
        if graph is not None:
            graphs[name] = graph
    return Built(info, graphs, diags, sites)
