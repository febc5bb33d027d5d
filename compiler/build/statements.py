"""Statements: a strategy's body, `repeat` loops and their regions."""

from __future__ import annotations

import networkx as nx

from ttsc.common.errors import Diagnostics
from ttsc.common.knobs import Auto, Choice, Knob, Range, is_knob
from ttsc.compiler.build.context import Context, KnobSite, span_of
from ttsc.compiler.build.definitions import ModuleInfo
from ttsc.compiler.build.expressions import assigned_value, expr
from ttsc.compiler.build.scope import Scope, defined, rebind, resolve, type_in
from ttsc.compiler.ir import Graph, Op
from ttsc.compiler.ops import T
from ttsc.dsl import ast


def build_strategy(info: ModuleInfo, diags: Diagnostics, sites: dict[str, KnobSite],
                   sdef: ast.StrategyDef, param_types: dict[str, T]) -> Graph | None:
    """The IR of one strategy for these parameter types (None when it has
    errors); its knob sites are added to `sites`."""
    return _strategy(Context(info, diags, sdef, sites), sdef, param_types)


def _strategy(ctx: Context, sdef: ast.StrategyDef, param_types: dict[str, T]) -> Graph | None:
    graph = Graph(sdef.name)
    scope = Scope(graph)
    seen: set[str] = set()
    for p in sdef.params:
        if p.name in seen:
            ctx.err(f"parameter `{p.name}` is listed twice", p.span)
        seen.add(p.name)
        node = graph.add(Op.INPUT, param_types[p.name], attrs={"name": p.name, "role": "param"},
                         span=p.span)
        scope.bind(p.name, node.id, p.span)
        scope.vars[p.name].used = True  # unused parameters are fine: callers pass them
    returned = _block(ctx, sdef.body, scope, top=True)
    if not returned:
        ctx.err(f"strategy `{sdef.name}` has no `return`", sdef.end_span,
                "end the strategy with `return EXPR`")
        return None
    _warn_unused(ctx, scope)
    return graph


def _warn_unused(ctx: Context, scope: Scope) -> None:
    for name, var in scope.vars.items():
        if not var.used:
            ctx.warn(f"`{name}` is assigned but never used", var.span)


def _block(ctx: Context, stmts: tuple[ast.Stmt, ...], scope: Scope, top: bool) -> bool:
    """Builds statements into scope.graph; True once a `return` was built."""
    for i, s in enumerate(stmts):
        if isinstance(s, ast.Assign):
            ctx.label = s.target
            nid = assigned_value(ctx, s.value, scope, s.target)
            if s.target in ctx.info.models or s.target in ctx.info.prompts:
                ctx.err(f"`{s.target}` is a {'model' if s.target in ctx.info.models else 'prompt'}"
                        f" and cannot be assigned", s.span)
            if nid is not None:
                old = scope.vars.get(s.target)
                if old is not None and not old.used:
                    ctx.warn(f"`{s.target}` is assigned but never used", old.span)
                scope.bind(s.target, nid, s.span)
        elif isinstance(s, ast.Repeat):
            _repeat(ctx, s, scope)
        elif isinstance(s, ast.Return):
            if not top:
                ctx.err("`return` inside `repeat` is not supported", s.span,
                        "assign to a variable in the loop and return it after")
                continue
            ctx.label = "return"
            nid = expr(ctx, s.value, scope)
            if nid is not None:
                scope.graph.add(Op.OUTPUT, scope.graph[nid].type, {"value": nid}, span=s.span)
            if i + 1 < len(stmts):
                nxt = stmts[i + 1]
                ctx.err("unreachable code after `return`", nxt.span)
            return True
    return False


def _repeat(ctx: Context, s: ast.Repeat, scope: Scope) -> None:
    ctx.label = "repeat"
    count = _count(ctx, s.count)
    count_site = ctx.site("count", "count", count, s.count.span) if is_knob(count) else None
    carried = [v for v in assigned(s.body) if defined(scope, v)]
    cond_graph = None
    loop_inputs: dict[str, str] = {}
    # Carried variables enter both regions as INPUT nodes.
    def region(name: str) -> tuple[Graph, Scope]:
        g = Graph(name)
        sc = Scope(g, parent=scope)
        for v in carried:
            outer = resolve(scope, v)
            node = g.add(Op.INPUT, type_in(scope, outer), attrs={"name": v, "role": "carry"})
            sc.bind(v, node.id, None)
            sc.vars[v].used = True
        return g, sc

    if s.until is not None:
        cond_graph, cscope = region("until")
        ctx.label = "until"
        cid = expr(ctx, s.until, cscope)
        if cid is not None:
            if cond_graph[cid].type is not T.BOOL:
                ctx.err(f"the `until` condition must be bool, got {cond_graph[cid].type.value}",
                        span_of(s.until))
            cond_graph.add(Op.OUTPUT, T.BOOL, {"value": cid})
            _check_condition(ctx, s, cond_graph, cid, carried)
        else:
            cond_graph = None
    body, bscope = region("body")
    _block(ctx, s.body, bscope, top=False)
    outputs: dict[str, str] = {}
    for v in carried:
        nid = bscope.vars[v].node
        before = type_in(scope, resolve(scope, v))
        after = body[nid].type
        if after is not before:
            ctx.err(f"`{v}` is {before.value} before the loop but {after.value} inside it",
                    bscope.vars[v].span or s.span)
        outputs[v] = nid
    for name, var in bscope.vars.items():
        if name not in carried and not var.used:
            ctx.warn(f"`{name}` is assigned but never used", var.span)
    body.add(Op.OUTPUT, None, outputs)
    for v in carried:
        loop_inputs[f"carry:{v}"] = resolve(scope, v)
    captured = sorted(set(bscope.captures) | (set(cscope.captures) if cond_graph else set()))
    for name in captured:
        loop_inputs[f"capture:{name}"] = resolve(scope, name)
    # A region that reads a capture the other does not still gets its INPUT.
    for g, sc in ((body, bscope), (cond_graph, cscope if cond_graph else None)):
        if g is None:
            continue
        for name in captured:
            if name not in sc.captures:
                sc.captures[name] = g.add(Op.INPUT, type_in(scope, resolve(scope, name)),
                                          attrs={"name": name, "role": "capture"}).id
    loop = scope.graph.add(Op.LOOP, T.LOOP, loop_inputs,
                           {"count": count, "carried": carried, "body": body, "cond": cond_graph},
                           span=s.span, meta={"knob_sites": {"count": count_site}} if count_site else None)
    for v in carried:
        out = scope.graph.add(Op.LOOP_OUT, body[outputs[v]].type if v in outputs else None,
                              {"loop": loop.id}, {"var": v}, span=s.span)
        rebind(scope, v, out.id)
    if not carried:
        ctx.warn("this `repeat` changes no variable defined before it, so it has no effect",
                 s.span, "assign to a variable defined before the loop")


def _count(ctx: Context, e: ast.Expr) -> int | Knob:
    """A round count: a whole number, `auto`, or a knob over whole numbers,
    `choice(1, 2, 3)` or `range(1, 3)` (a number of layers to search)."""
    if _rounds(e):
        return e.value
    if isinstance(e, ast.Auto):
        return Auto()
    if isinstance(e, ast.Call) and e.func == "choice" and e.args and not e.kwargs:
        bad = next((a for a in e.args if not _rounds(a)), None)
        if bad is None:
            return Choice(tuple(a.value for a in e.args))
        ctx.err("the options of a round count must be whole numbers >= 0", span_of(bad))
        return 0
    if isinstance(e, ast.Call) and e.func == "range" and len(e.args) == 2 and not e.kwargs:
        lo, hi = e.args
        if _rounds(lo) and _rounds(hi):
            if lo.value > hi.value:
                ctx.err(f"range({lo.value}, {hi.value}) is empty: the low end is above the high end",
                        e.span)
                return 0
            return Range(lo.value, hi.value, integer=True)
        ctx.err("a range of round counts takes two whole numbers >= 0, like range(1, 3)", e.span)
        return 0
    ctx.err("the round count of `repeat` must be a whole number >= 0, `auto`, choice(...) or "
            "range(...) of whole numbers", span_of(e))
    return 0


def _rounds(e: ast.Expr) -> bool:
    return isinstance(e, ast.Number) and isinstance(e.value, int) and e.value >= 0


def _check_condition(ctx: Context, s: ast.Repeat, g: Graph, cid: str, carried: list[str]) -> None:
    if _can_hold(g, cid) is False:
        ctx.warn("this `until` condition can never be true, so the loop always runs "
                 "every round", span_of(s.until))
        return
    carry_inputs = {n.id for n in g.inputs_of() if n.attrs.get("role") == "carry"}
    if not (nx.ancestors(g.g, cid) & carry_inputs):
        ctx.warn("this `until` condition reads nothing the loop changes, so it never "
                 "changes between rounds", span_of(s.until))


def assigned(stmts: tuple[ast.Stmt, ...]) -> list[str]:
    out: list[str] = []
    for s in stmts:
        if isinstance(s, ast.Assign) and s.target not in out:
            out.append(s.target)
        elif isinstance(s, ast.Repeat):
            out += [v for v in assigned(s.body) if v not in out]
    return out


def _can_hold(g: Graph, nid: str) -> bool | None:
    """Whether a condition can ever be true: False when it never can, True or
    None (unknown) otherwise."""
    node = g[nid]
    if node.op is Op.CONST and node.type is T.BOOL:
        return node.attrs["value"]
    if node.op is Op.COMPARE:
        left, right = _num_range(g, node.inputs["left"]), _num_range(g, node.inputs["right"])
        if left and right:
            (a, b), (c, d) = left, right
            return {"<": a < d, "<=": a <= d, ">": b > c, ">=": b >= c,
                    "==": not (b < c or d < a), "!=": True}[node.attrs["op"]]
    if node.op is Op.LOGIC:
        parts = [_can_hold(g, s) for s in node.inputs.values()]
        if node.attrs["op"] == "and" and False in parts:
            return False
        if node.attrs["op"] == "or" and all(p is False for p in parts):
            return False
    return None


def _num_range(g: Graph, nid: str) -> tuple[float, float] | None:
    node = g[nid]
    if node.op is Op.CONST and node.type is T.NUMBER:
        return (node.attrs["value"], node.attrs["value"])
    if node.op is Op.AGREEMENT:
        return (0.0, 1.0)
    return None
