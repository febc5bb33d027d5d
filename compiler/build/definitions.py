"""The file's definitions other than strategy bodies: models (aliases
resolved, specs checked), prompts, the budget, and the order in which
strategies are built (callees first, recursion rejected)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from ttsc.common.errors import Diagnostics, Span, did_you_mean
from ttsc.common.specs import FORMS_HINT, check_model_spec
from ttsc.dsl import ast


@dataclass
class ModuleInfo:
    """The file's non-strategy definitions, resolved."""

    file: str
    source: str
    models: dict[str, str] = field(default_factory=dict)  # name -> spec, aliases resolved
    prompts: dict[str, ast.PromptDef] = field(default_factory=dict)
    strategies: dict[str, ast.StrategyDef] = field(default_factory=dict)
    budget: dict[str, dict[str, Any]] | None = None


def collect(module: ast.Module, diags: Diagnostics) -> ModuleInfo:
    info = ModuleInfo(module.file, module.source)
    seen: dict[str, Span] = {}
    aliases: dict[str, ast.ModelDef] = {}
    for d in module.definitions:
        if isinstance(d, ast.BudgetDef):
            if info.budget is not None:
                diags.error("only one `budget` block is allowed per file", d.span)
            else:
                info.budget = _budget(d, diags)
            continue
        if d.name in seen:
            first = seen[d.name]
            diags.error(f"`{d.name}` is already defined at line {first.line}", d.span,
                        "give each model, prompt and strategy its own name")
            continue
        seen[d.name] = d.span
        if isinstance(d, ast.ModelDef):
            if d.spec is not None:
                problem = check_model_spec(d.spec)
                if problem:
                    diags.error(f"bad model spec {d.spec!r}: {problem}", d.value_span, FORMS_HINT)
                else:
                    info.models[d.name] = d.spec
            else:
                aliases[d.name] = d
        elif isinstance(d, ast.PromptDef):
            info.prompts[d.name] = d
        elif isinstance(d, ast.StrategyDef):
            info.strategies[d.name] = d
    for name, d in aliases.items():
        target, path = d.alias, [name]
        while target in aliases and target not in path:
            path.append(target)
            target = aliases[target].alias
        if target in path:
            diags.error(f"model aliases form a cycle: {' -> '.join(path + [target])}", d.value_span)
        elif target in info.models:
            info.models[name] = info.models[target]
        elif target in seen and target not in aliases:
            diags.error(f"`{target}` is not a model", d.value_span)
        else:
            diags.error(f"unknown model `{target}`", d.value_span,
                        did_you_mean(target, list(info.models) + list(aliases)))
    return info


def _budget(d: ast.BudgetDef, diags: Diagnostics) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in d.items:
        if item.resource in out:
            diags.error(f"`{item.resource}` appears twice in the budget", item.span)
        out[item.resource] = {"value": item.value, "per_input": item.per_input, "total": item.total}
    return out


def calls_in(stmts: tuple[ast.Stmt, ...]) -> list[ast.Call]:
    """Every call in these statements, in source order (outer calls first)."""
    found: list[ast.Call] = []
    stack: list[object] = list(reversed(stmts))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Call):
            found.append(node)
        stack += reversed(ast.children(node))
    return found


def strategy_order(info: ModuleInfo, diags: Diagnostics) -> list[str]:
    """Callees before callers; strategies in a recursive cycle are dropped."""
    cg = nx.DiGraph()
    cg.add_nodes_from(info.strategies)
    call_site: dict[tuple[str, str], Span] = {}
    for name, sdef in info.strategies.items():
        for call in calls_in(sdef.body):
            if call.func in info.strategies:
                cg.add_edge(name, call.func)
                call_site.setdefault((name, call.func), call.func_span)
    bad: set[str] = set()
    for comp in nx.strongly_connected_components(cg):
        if len(comp) == 1 and not cg.has_edge(next(iter(comp)), next(iter(comp))):
            continue
        cycle = nx.find_cycle(cg.subgraph(comp))
        path = " -> ".join([cycle[0][0]] + [v for _, v in cycle])
        first = min(comp, key=lambda s: (info.strategies[s].span.line, info.strategies[s].span.column))
        callee = next(v for u, v in cycle if u == first)
        diags.error(f"recursive strategy call: {path}", call_site[(first, callee)],
                    "strategies are inlined, so they cannot call themselves; use `repeat` to loop")
        bad |= comp
    # Callers of a recursive strategy cannot be built either.
    for s in list(bad):
        bad |= nx.ancestors(cg, s)
    return [s for s in reversed(list(nx.topological_sort(cg.subgraph(set(cg) - bad))))]
