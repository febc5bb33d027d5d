"""From AST to IR: name resolution, type and arity checking, loop regions.

`build(module)` checks the whole file and returns one IR graph per strategy.
It collects every diagnostic it can instead of stopping at the first, so
`ttsc check` reports all errors of a file in one go.

Strategy calls become CALL nodes holding the callee built for the argument
types at that call site; the `inline` pass splices them in. Recursion between
strategies is rejected before any body is built.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from ttsc.compiler.ir import Graph, Op
from ttsc.compiler.ops import AGGS, EXTRACTORS, SIGNATURES, Arg, Kind, OpSig, T
from ttsc.common.prompts import OP_HOLES, TASK_HOLE, default_prompt
from ttsc.common.specs import FORMS_HINT, check_model_spec
from ttsc.dsl import ast
from ttsc.common.errors import Diagnostics, Span, did_you_mean

HOLE_VALUE_TYPES = (T.TEXT, T.NUMBER, T.CANDIDATES, T.ANSWERS)
INT_ARGS = ("n", "max_tokens", "top_k", "k", "seed")


@dataclass
class ModuleInfo:
    """The file's non-strategy definitions, resolved."""

    file: str
    source: str
    models: dict[str, str] = field(default_factory=dict)  # name -> spec, aliases resolved
    prompts: dict[str, ast.PromptDef] = field(default_factory=dict)
    strategies: dict[str, ast.StrategyDef] = field(default_factory=dict)
    budget: dict[str, dict[str, Any]] | None = None


@dataclass
class Built:
    info: ModuleInfo
    graphs: dict[str, Graph]  # strategy -> IR (CALL nodes not yet inlined)
    diagnostics: Diagnostics


class _Var:
    __slots__ = ("node", "span", "used")

    def __init__(self, node: str, span: Span | None):
        self.node, self.span, self.used = node, span, False


class Scope:
    """Variables of one graph. Reading an outer variable inside a loop region
    creates an INPUT node there (a capture), so regions stay closed."""

    def __init__(self, graph: Graph, parent: "Scope | None" = None):
        self.graph, self.parent = graph, parent
        self.vars: dict[str, _Var] = {}
        self.captures: dict[str, str] = {}  # name -> INPUT node id in this graph

    def lookup(self, name: str) -> str | None:
        if name in self.vars:
            self.vars[name].used = True
            return self.vars[name].node
        if name in self.captures:
            return self.captures[name]
        if self.parent is None:
            return None
        outer = self.parent.lookup(name)
        if outer is None:
            return None
        typ = self.parent.graph[outer].type
        node = self.graph.add(Op.INPUT, typ, attrs={"name": name, "role": "capture"})
        self.captures[name] = node.id
        return node.id

    def visible(self) -> list[str]:
        names = set(self.vars) | set(self.captures)
        return sorted(names | (set(self.parent.visible()) if self.parent else set()))

    def bind(self, name: str, node: str, span: Span | None) -> None:
        self.vars[name] = _Var(node, span)


def build(module: ast.Module) -> Built:
    diags = Diagnostics()
    info = _collect(module, diags)
    order = _strategy_order(info, diags)
    graphs: dict[str, Graph] = {}
    for name in order:
        sdef = info.strategies[name]
        builder = _StrategyBuilder(info, diags)
        graph = builder.build(sdef, {p.name: T.TEXT for p in sdef.params})
        if graph is not None:
            graphs[name] = graph
    return Built(info, graphs, diags)


# ------------------------------------------------------------------ definitions

def _collect(module: ast.Module, diags: Diagnostics) -> ModuleInfo:
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
        if item.value <= 0:
            diags.error(f"a {item.resource} budget must be positive", item.span)
        out[item.resource] = {"value": item.value, "per_input": item.per_input, "total": item.total}
    return out


def _calls_in(stmts: tuple[ast.Stmt, ...]) -> list[ast.Call]:
    found: list[ast.Call] = []

    def expr(e: Any) -> None:
        if isinstance(e, ast.Call):
            found.append(e)
            for a in e.args:
                expr(a)
            for k in e.kwargs:
                expr(k.value)
        elif isinstance(e, (ast.BinOp, ast.Compare, ast.BoolOp)):
            expr(e.left)
            expr(e.right)
        elif isinstance(e, ast.Not):
            expr(e.operand)
        elif isinstance(e, ast.ListExpr):
            for i in e.items:
                expr(i)

    def stmt(s: ast.Stmt) -> None:
        if isinstance(s, (ast.Assign, ast.Return)):
            expr(s.value)
        elif isinstance(s, ast.Repeat):
            expr(s.count)
            if s.until is not None:
                expr(s.until)
            for b in s.body:
                stmt(b)

    for s in stmts:
        stmt(s)
    return found


def _strategy_order(info: ModuleInfo, diags: Diagnostics) -> list[str]:
    """Callees before callers; strategies in a recursive cycle are dropped."""
    cg = nx.DiGraph()
    cg.add_nodes_from(info.strategies)
    call_site: dict[tuple[str, str], Span] = {}
    for name, sdef in info.strategies.items():
        for call in _calls_in(sdef.body):
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


# ------------------------------------------------------------------ strategies

class _StrategyBuilder:
    def __init__(self, info: ModuleInfo, diags: Diagnostics):
        self.info = info
        self.diags = diags
        self.strategy: ast.StrategyDef | None = None

    def err(self, message: str, span: Span | None, hint: str | None = None) -> None:
        # A callee built at several call sites would repeat its own errors.
        if not any(d.message == message and d.span == span for d in self.diags.items):
            self.diags.error(message, span, hint)

    def warn(self, message: str, span: Span | None, hint: str | None = None) -> None:
        if not any(d.message == message and d.span == span for d in self.diags.items):
            self.diags.warning(message, span, hint)

    def build(self, sdef: ast.StrategyDef, param_types: dict[str, T]) -> Graph | None:
        self.strategy = sdef
        graph = Graph(sdef.name)
        scope = Scope(graph)
        seen: set[str] = set()
        for p in sdef.params:
            if p.name in seen:
                self.err(f"parameter `{p.name}` is listed twice", p.span)
            seen.add(p.name)
            node = graph.add(Op.INPUT, param_types[p.name], attrs={"name": p.name, "role": "param"},
                             span=p.span)
            scope.bind(p.name, node.id, p.span)
            scope.vars[p.name].used = True  # unused parameters are fine: callers pass them
        returned = self._block(sdef.body, scope, top=True)
        if not returned:
            self.err(f"strategy `{sdef.name}` has no `return`", sdef.end_span,
                     "end the strategy with `return EXPR`")
            return None
        self._warn_unused(scope)
        return graph

    def _warn_unused(self, scope: Scope) -> None:
        for name, var in scope.vars.items():
            if not var.used:
                self.warn(f"`{name}` is assigned but never used", var.span)

    def _block(self, stmts: tuple[ast.Stmt, ...], scope: Scope, top: bool) -> bool:
        """Builds statements into scope.graph; True once a `return` was built."""
        for i, s in enumerate(stmts):
            if isinstance(s, ast.Assign):
                nid = self.expr(s.value, scope)
                if s.target in self.info.models or s.target in self.info.prompts:
                    self.err(f"`{s.target}` is a {'model' if s.target in self.info.models else 'prompt'}"
                             f" and cannot be assigned", s.span)
                if nid is not None:
                    old = scope.vars.get(s.target)
                    if old is not None and not old.used:
                        self.warn(f"`{s.target}` is assigned but never used", old.span)
                    scope.bind(s.target, nid, s.span)
            elif isinstance(s, ast.Repeat):
                self._repeat(s, scope)
            elif isinstance(s, ast.Return):
                if not top:
                    self.err("`return` inside `repeat` is not supported", s.span,
                             "assign to a variable in the loop and return it after")
                    continue
                nid = self.expr(s.value, scope)
                if nid is not None:
                    scope.graph.add(Op.OUTPUT, scope.graph[nid].type, {"value": nid}, span=s.span)
                if i + 1 < len(stmts):
                    nxt = stmts[i + 1]
                    self.err("unreachable code after `return`", nxt.span)
                return True
        return False

    # -- repeat
    def _repeat(self, s: ast.Repeat, scope: Scope) -> None:
        count = self._count(s.count)
        assigned = _assigned(s.body)
        carried = [v for v in assigned if _defined(scope, v)]
        cond_graph = None
        loop_inputs: dict[str, str] = {}
        # Carried variables enter both regions as INPUT nodes.
        def region(name: str) -> tuple[Graph, Scope]:
            g = Graph(name)
            sc = Scope(g, parent=scope)
            for v in carried:
                outer = _resolve(scope, v)
                node = g.add(Op.INPUT, _type_in(scope, outer), attrs={"name": v, "role": "carry"})
                sc.bind(v, node.id, None)
                sc.vars[v].used = True
            return g, sc

        if s.until is not None:
            cond_graph, cscope = region("until")
            cid = self.expr(s.until, cscope)
            if cid is not None:
                if cond_graph[cid].type is not T.BOOL:
                    self.err(f"the `until` condition must be bool, got {cond_graph[cid].type.value}",
                             _span(s.until))
                cond_graph.add(Op.OUTPUT, T.BOOL, {"value": cid})
                self._check_condition(s, cond_graph, cid, carried)
            else:
                cond_graph = None
        body, bscope = region("body")
        self._block(s.body, bscope, top=False)
        outputs: dict[str, str] = {}
        for v in carried:
            nid = bscope.vars[v].node
            before = _type_in(scope, _resolve(scope, v))
            after = body[nid].type
            if after is not before:
                self.err(f"`{v}` is {before.value} before the loop but {after.value} inside it",
                         bscope.vars[v].span or s.span)
            outputs[v] = nid
        for name, var in bscope.vars.items():
            if name not in carried and not var.used:
                self.warn(f"`{name}` is assigned but never used", var.span)
        body.add(Op.OUTPUT, None, outputs)
        for v in carried:
            loop_inputs[f"carry:{v}"] = _resolve(scope, v)
        captured = sorted(set(bscope.captures) | (set(cscope.captures) if cond_graph else set()))
        for name in captured:
            loop_inputs[f"capture:{name}"] = _resolve(scope, name)
        # A region that reads a capture the other does not still gets its INPUT.
        for g, sc in ((body, bscope), (cond_graph, cscope if cond_graph else None)):
            if g is None:
                continue
            for name in captured:
                if name not in sc.captures:
                    sc.captures[name] = g.add(Op.INPUT, _type_in(scope, _resolve(scope, name)),
                                              attrs={"name": name, "role": "capture"}).id
        loop = scope.graph.add(Op.LOOP, T.LOOP, loop_inputs,
                               {"count": count, "carried": carried, "body": body, "cond": cond_graph},
                               span=s.span)
        for v in carried:
            out = scope.graph.add(Op.LOOP_OUT, body[outputs[v]].type if v in outputs else None,
                                  {"loop": loop.id}, {"var": v}, span=s.span)
            _rebind(scope, v, out.id)
        if not carried:
            self.warn("this `repeat` changes no variable defined before it, so it has no effect",
                      s.span, "assign to a variable defined before the loop")

    def _count(self, e: ast.Expr) -> int | dict:
        if isinstance(e, ast.Number) and isinstance(e.value, int) and e.value >= 0:
            return e.value
        if isinstance(e, ast.Auto):
            return {"auto": True}
        self.err("the round count of `repeat` must be a whole number >= 0 or `auto`", _span(e))
        return 0

    def _check_condition(self, s: ast.Repeat, g: Graph, cid: str, carried: list[str]) -> None:
        lo, hi = _bool_range(g, cid)
        if hi is False:
            self.warn("this `until` condition can never be true, so the loop always runs "
                      "every round", _span(s.until))
            return
        carry_inputs = {n.id for n in g.inputs_of() if n.attrs.get("role") == "carry"}
        if not (nx.ancestors(g.g, cid) & carry_inputs):
            self.warn("this `until` condition reads nothing the loop changes, so it never "
                      "changes between rounds", _span(s.until))

    # -- expressions
    def expr(self, e: ast.Expr, scope: Scope) -> str | None:
        g = scope.graph
        if isinstance(e, ast.Name):
            nid = scope.lookup(e.id)
            if nid is not None:
                return nid
            if e.id in self.info.models:
                self.err(f"`{e.id}` is a model, not a value", e.span,
                         "models are the first argument of ops like generate(MODEL, PROMPT)")
            elif e.id in self.info.prompts:
                self.err(f"`{e.id}` is a prompt, not a value", e.span,
                         "prompts are passed to ops like generate(MODEL, PROMPT)")
            elif e.id in self.info.strategies or e.id in SIGNATURES:
                self.err(f"`{e.id}` must be called", e.span, f"write `{e.id}(...)`")
            else:
                self.err(f"undefined name `{e.id}`", e.span, did_you_mean(e.id, scope.visible())
                         or (f"names defined here: {', '.join(scope.visible())}"
                             if scope.visible() else None))
            return None
        if isinstance(e, ast.Number):
            return g.add(Op.CONST, T.NUMBER, attrs={"value": e.value}, span=e.span).id
        if isinstance(e, ast.String):
            return g.add(Op.CONST, T.TEXT, attrs={"value": e.value}, span=e.span).id
        if isinstance(e, ast.Bool):
            return g.add(Op.CONST, T.BOOL, attrs={"value": e.value}, span=e.span).id
        if isinstance(e, ast.Auto):
            self.err("`auto` can only be an argument's value, like n=auto", e.span)
            return None
        if isinstance(e, ast.ListExpr):
            if not e.items:
                self.err("an empty list has no value", e.span)
                return None
            ids = [self.expr(i, scope) for i in e.items]
            if None in ids:
                return None
            return self._concat(ids, e.span, scope)
        if isinstance(e, ast.BinOp):
            ids = [self.expr(e.left, scope), self.expr(e.right, scope)]
            if None in ids:
                return None
            return self._concat(ids, e.span, scope)
        if isinstance(e, ast.Compare):
            left, right = self.expr(e.left, scope), self.expr(e.right, scope)
            if left is None or right is None:
                return None
            lt, rt = g[left].type, g[right].type
            ordered = e.op in ("<", "<=", ">", ">=")
            if (ordered and (lt, rt) != (T.NUMBER, T.NUMBER)) or (not ordered and lt is not rt):
                self.err(f"cannot compare {lt.value} {e.op} {rt.value}", e.span,
                         "comparisons take two numbers (== and != also take two values of one type)")
                return None
            return g.add(Op.COMPARE, T.BOOL, {"left": left, "right": right}, {"op": e.op}, e.span).id
        if isinstance(e, (ast.BoolOp, ast.Not)):
            parts = [e.left, e.right] if isinstance(e, ast.BoolOp) else [e.operand]
            ids = [self.expr(p, scope) for p in parts]
            if None in ids:
                return None
            for p, i in zip(parts, ids):
                if g[i].type is not T.BOOL:
                    self.err(f"`{e.op if isinstance(e, ast.BoolOp) else 'not'}` needs bool, "
                             f"got {g[i].type.value}", _span(p))
                    return None
            inputs = dict(zip(("left", "right"), ids)) if len(ids) == 2 else {"operand": ids[0]}
            return g.add(Op.LOGIC, T.BOOL, inputs,
                         {"op": e.op if isinstance(e, ast.BoolOp) else "not"}, e.span).id
        if isinstance(e, ast.Call):
            return self._call(e, scope)
        raise TypeError(f"unknown expression {e!r}")

    def _concat(self, ids: list[str], span: Span, scope: Scope) -> str | None:
        g = scope.graph
        types = {g[i].type for i in ids}
        if len(ids) == 1:
            return ids[0]
        if len(types) != 1:
            self.err("cannot join " + " and ".join(sorted(t.value for t in types)), span,
                     "`+` and lists join values of one type: candidates, answers, scores or text")
            return None
        typ = types.pop()
        if typ not in (T.CANDIDATES, T.ANSWERS, T.SCORES, T.TEXT):
            self.err(f"cannot join values of type {typ.value}", span)
            return None
        return g.add(Op.CONCAT, typ, {f"item{i}": nid for i, nid in enumerate(ids)}, span=span).id

    def _call(self, e: ast.Call, scope: Scope) -> str | None:
        if e.func in self.info.strategies:
            return self._strategy_call(e, scope)
        if e.func == "choice":
            return self._value_choice(e, scope)
        sig = SIGNATURES.get(e.func)
        if sig is None:
            known = list(SIGNATURES) + list(self.info.strategies)
            self.err(f"unknown operation `{e.func}`", e.func_span,
                     did_you_mean(e.func, known) or f"operations: {', '.join(sorted(SIGNATURES))}")
            return None
        bound = self._bind_args(sig, e)
        if bound is None:
            return None
        g = scope.graph
        inputs: dict[str, str] = {}
        attrs: dict[str, Any] = {}
        ok = True
        for arg in sig.args:
            if arg.name not in bound:
                if arg.kind is Kind.CONST and arg.default is not None:
                    attrs[arg.name] = arg.default
                continue
            value = bound[arg.name]
            if arg.kind is Kind.VALUE:
                nid = self.expr(value, scope)
                if nid is None:
                    ok = False
                    continue
                if g[nid].type not in arg.types:
                    want = " or ".join(t.value for t in arg.types)
                    self.err(f"argument `{arg.name}` of `{e.func}` must be {want}, "
                             f"got {g[nid].type.value}", _span(value))
                    ok = False
                    continue
                inputs[arg.name] = nid
            else:
                got = self._static(arg, value, e.func)
                if got is _BAD:
                    ok = False
                else:
                    attrs[arg.name] = got
        if not ok:
            return None
        if sig.is_llm:
            holes = self._bind_holes(e, sig, attrs, scope)
            if holes is None:
                return None
            inputs.update(holes)
        return g.add(Op(sig.name), sig.result, inputs, attrs, e.span).id

    def _bind_args(self, sig: OpSig, e: ast.Call) -> dict[str, ast.Expr] | None:
        positional = sig.positional
        bound: dict[str, ast.Expr] = {}
        if len(e.args) > len(positional):
            names = ", ".join(a.name for a in positional)
            self.err(f"`{sig.name}` takes at most {len(positional)} positional argument"
                     f"{'s' if len(positional) != 1 else ''} ({names}), got {len(e.args)}",
                     _span(e.args[len(positional)]),
                     f"signature: {_signature(sig)}")
            return None
        for arg, value in zip(positional, e.args):
            bound[arg.name] = value
        ok = True
        for kw in e.kwargs:
            arg = sig.arg(kw.name)
            if arg is None:
                self.err(f"`{sig.name}` has no argument `{kw.name}`", kw.span,
                         did_you_mean(kw.name, [a.name for a in sig.args])
                         or f"signature: {_signature(sig)}")
                ok = False
            elif kw.name in bound:
                self.err(f"argument `{kw.name}` of `{sig.name}` is given twice", kw.span)
                ok = False
            else:
                bound[kw.name] = kw.value
        for arg in sig.args:
            if arg.required and arg.name not in bound and arg.default is None:
                self.err(f"`{sig.name}` needs argument `{arg.name}`", e.span,
                         f"signature: {_signature(sig)}")
                ok = False
        return bound if ok else None

    def _static(self, arg: Arg, value: ast.Expr, func: str) -> Any:
        """A compile-time argument: model, prompt, extractor, aggregation or constant."""
        where = f"argument `{arg.name}` of `{func}`"
        if arg.kind is Kind.MODEL:
            return self._model_arg(value, where)
        if arg.kind is Kind.PROMPT:
            if isinstance(value, ast.Name) and value.id in self.info.prompts:
                return value.id
            name = value.id if isinstance(value, ast.Name) else None
            self.err(f"{where} must be a prompt name", _span(value),
                     (did_you_mean(name, self.info.prompts) if name else None)
                     or (f"prompts in this file: {', '.join(self.info.prompts)}"
                         if self.info.prompts else "define one with prompt NAME = \"\"\"...\"\"\""))
            return _BAD
        if arg.kind is Kind.EXTRACTOR:
            if isinstance(value, ast.Name) and value.id in EXTRACTORS and value.id != "regex":
                return {"how": value.id}
            if isinstance(value, ast.Call) and value.func == "regex":
                if len(value.args) == 1 and not value.kwargs and isinstance(value.args[0], ast.String):
                    pattern = value.args[0].value
                    try:
                        re.compile(pattern)
                    except re.error as exc:
                        self.err(f"bad regular expression: {exc.msg}", value.args[0].span)
                        return _BAD
                    return {"how": "regex", "pattern": pattern}
                self.err("regex takes one string, like regex(\"Answer: (\\d+)\")", value.span)
                return _BAD
            name = value.id if isinstance(value, ast.Name) else ""
            self.err(f"{where} must be number, choice, code or regex(\"...\")", _span(value),
                     did_you_mean(name, EXTRACTORS) if name else None)
            return _BAD
        if arg.kind is Kind.AGG:
            if isinstance(value, ast.Name) and value.id in AGGS:
                return value.id
            self.err(f"{where} must be one of {', '.join(AGGS)}", _span(value))
            return _BAD
        return self._const(arg, value, where)

    def _model_arg(self, value: ast.Expr, where: str) -> Any:
        if isinstance(value, ast.Name):
            if value.id in self.info.models:
                return value.id
            self.err(f"unknown model `{value.id}`", value.span,
                     did_you_mean(value.id, self.info.models)
                     or (f"models in this file: {', '.join(self.info.models)}" if self.info.models
                         else "define one with model NAME = \"smollm2-135m\""))
            return _BAD
        if isinstance(value, ast.Call) and value.func == "choice" and not value.kwargs:
            names = []
            for a in value.args:
                got = self._model_arg(a, where)
                if got is _BAD:
                    return _BAD
                names.append(got)
            if not names:
                self.err("choice(...) needs at least one option", value.span)
                return _BAD
            return {"choice": names}
        if isinstance(value, ast.Auto):
            if not self.info.models:
                self.err("`auto` needs at least one model defined", value.span)
                return _BAD
            return {"choice": list(self.info.models), "auto": True}
        self.err(f"{where} must be a model name, choice(...) of model names, or auto", _span(value))
        return _BAD

    def _const(self, arg: Arg, value: ast.Expr, where: str) -> Any:
        name = arg.name
        if isinstance(value, ast.Auto):
            if name in ("n", "max_tokens", "temperature", "k"):
                return {"auto": True}
            self.err(f"`{name}` cannot be auto", value.span, "auto works for n, max_tokens, "
                     "temperature and k")
            return _BAD
        if isinstance(value, ast.Call) and value.func == "range":
            if (len(value.args) == 2 and not value.kwargs
                    and all(isinstance(a, ast.Number) for a in value.args)):
                lo, hi = value.args[0].value, value.args[1].value
                if lo > hi:
                    self.err(f"range({lo}, {hi}) is empty: the low end is above the high end",
                             value.span)
                    return _BAD
                for bound in (lo, hi):
                    self._check_number(name, bound, value.span, where)
                return {"range": [lo, hi]}
            self.err("range takes two numbers, like range(0.3, 1.1)", value.span)
            return _BAD
        if isinstance(value, ast.Call) and value.func == "choice":
            options = []
            for a in value.args:
                got = self._const(arg, a, where)
                if got is _BAD:
                    return _BAD
                if isinstance(got, dict):
                    self.err("choice options must be plain constants", _span(a))
                    return _BAD
                options.append(got)
            if not options:
                self.err("choice(...) needs at least one option", value.span)
                return _BAD
            return {"choice": options}
        if name == "stop":
            if isinstance(value, ast.String):
                return [value.value]
            if isinstance(value, ast.ListExpr) and all(isinstance(i, ast.String) for i in value.items):
                return [i.value for i in value.items]
            self.err(f"{where} must be a string or a list of strings", _span(value))
            return _BAD
        if isinstance(value, ast.Number):
            return value.value if self._check_number(name, value.value, value.span, where) else _BAD
        self.err(f"{where} must be a constant number, auto, range(...) or choice(...)", _span(value),
                 "values computed at run time cannot set sampling parameters")
        return _BAD

    def _check_number(self, name: str, v: float, span: Span, where: str) -> bool:
        problem = None
        if name in INT_ARGS and not float(v).is_integer():
            problem = "must be a whole number"
        elif name in ("n", "max_tokens", "k") and v < 1:
            problem = "must be at least 1"
        elif name in ("temperature", "top_k", "seed") and v < 0:
            problem = "must not be negative"
        elif name == "top_p" and not 0 < v <= 1:
            problem = "must be in (0, 1]"
        elif name == "temperature" and v > 5:
            problem = "is implausibly high (at most 5)"
        if problem:
            self.err(f"{where} {problem}, got {v}", span)
            return False
        return True

    def _bind_holes(self, e: ast.Call, sig: OpSig, attrs: dict[str, Any],
                    scope: Scope) -> dict[str, str] | None:
        """Inputs for the prompt's holes: variables in scope, by name."""
        provided = tuple(OP_HOLES.get(sig.name, {}))
        prompt = attrs.get("prompt")
        if prompt is not None:
            pdef = self.info.prompts[prompt]
            holes = [(h.name, h.span) for h in pdef.holes]
        else:
            default = default_prompt(sig.name)
            holes = [(h, None) for h in (default.holes if default else ())]
        inputs: dict[str, str] = {}
        ok = True
        for hole, span in holes:
            if hole in provided or f"hole:{hole}" in inputs:
                continue
            nid = scope.lookup(hole)
            if nid is None and prompt is None and hole == TASK_HOLE and self.strategy.params:
                # Shipped prompts call the task input `question`; use the first parameter.
                nid = scope.lookup(self.strategy.params[0].name)
            if nid is None:
                visible = scope.visible()
                self.err(f"`{{{hole}}}` in prompt `{prompt}` names no variable of strategy "
                         f"`{self.strategy.name}` (used at line {e.span.line})", span or e.span,
                         did_you_mean(hole, visible) or (f"variables there: {', '.join(visible)}"
                                                         if visible else None))
                ok = False
                continue
            typ = scope.graph[nid].type
            if typ not in HOLE_VALUE_TYPES:
                self.err(f"`{{{hole}}}` is {typ.value}, which cannot be written into a prompt",
                         span or e.span)
                ok = False
                continue
            inputs[f"hole:{hole}"] = nid
        return inputs if ok else None

    def _strategy_call(self, e: ast.Call, scope: Scope) -> str | None:
        callee = self.info.strategies[e.func]
        params = [p.name for p in callee.params]
        if len(e.args) > len(params):
            self.err(f"strategy `{e.func}` takes {len(params)} argument"
                     f"{'s' if len(params) != 1 else ''} ({', '.join(params)}), got {len(e.args)}",
                     e.span)
            return None
        bound: dict[str, ast.Expr] = dict(zip(params, e.args))
        for kw in e.kwargs:
            if kw.name not in params:
                self.err(f"strategy `{e.func}` has no parameter `{kw.name}`", kw.span,
                         did_you_mean(kw.name, params))
                return None
            if kw.name in bound:
                self.err(f"argument `{kw.name}` of `{e.func}` is given twice", kw.span)
                return None
            bound[kw.name] = kw.value
        missing = [p for p in params if p not in bound]
        if missing:
            self.err(f"strategy `{e.func}` needs argument `{missing[0]}`", e.span)
            return None
        inputs = {}
        for p in params:
            nid = self.expr(bound[p], scope)
            if nid is None:
                return None
            inputs[f"arg:{p}"] = nid
        types = {p: scope.graph[inputs[f"arg:{p}"]].type for p in params}
        sub = _StrategyBuilder(self.info, self.diags).build(callee, types)
        if sub is None or sub.output is None:
            return None
        return scope.graph.add(Op.CALL, sub[sub.output].type, inputs,
                               {"strategy": e.func, "body": sub}, e.span).id

    def _value_choice(self, e: ast.Call, scope: Scope) -> str | None:
        if e.kwargs or not e.args:
            self.err("choice(...) takes one or more alternatives and no keywords", e.span)
            return None
        ids = [self.expr(a, scope) for a in e.args]
        if None in ids:
            return None
        types = {scope.graph[i].type for i in ids}
        if len(types) != 1:
            self.err("the alternatives of choice(...) must have one type, got "
                     + ", ".join(sorted(t.value for t in types)), e.span)
            return None
        return scope.graph.add(Op.CHOICE, types.pop(), {f"option{i}": nid for i, nid in enumerate(ids)},
                               {"selected": None}, e.span).id


class _Bad:
    def __repr__(self) -> str:
        return "<bad>"


_BAD = _Bad()


def _signature(sig: OpSig) -> str:
    parts = []
    for a in sig.args:
        if a.positional:
            parts.append(a.name if a.required else f"[{a.name}]")
        else:
            parts.append(f"{a.name}=" + ("..." if a.default is None else repr(a.default)))
    return f"{sig.name}({', '.join(parts)})"


def _span(e: Any) -> Span | None:
    return getattr(e, "span", None)


def _assigned(stmts: tuple[ast.Stmt, ...]) -> list[str]:
    out: list[str] = []
    for s in stmts:
        if isinstance(s, ast.Assign) and s.target not in out:
            out.append(s.target)
        elif isinstance(s, ast.Repeat):
            out += [v for v in _assigned(s.body) if v not in out]
    return out


def _defined(scope: Scope, name: str) -> bool:
    s: Scope | None = scope
    while s is not None:
        if name in s.vars or name in s.captures:
            return True
        s = s.parent
    return False


def _resolve(scope: Scope, name: str) -> str:
    """The node of a variable in this scope, capturing it if it is outer."""
    used = scope.vars[name].used if name in scope.vars else None
    nid = scope.lookup(name)
    if used is not None:
        scope.vars[name].used = used  # looking up for plumbing is not a use
    assert nid is not None, name
    return nid


def _type_in(scope: Scope, nid: str) -> T:
    return scope.graph[nid].type


def _rebind(scope: Scope, name: str, nid: str) -> None:
    used = scope.vars[name].used if name in scope.vars else True
    span = scope.vars[name].span if name in scope.vars else None
    scope.bind(name, nid, span)
    scope.vars[name].used = used


def _bool_range(g: Graph, nid: str) -> tuple[bool | None, bool | None]:
    """(can be false, can be true) where known; (None, None) when unknown.
    Only the second element is used: False means the condition never holds."""
    node = g[nid]
    if node.op is Op.CONST and node.type is T.BOOL:
        return (not node.attrs["value"], node.attrs["value"])
    if node.op is Op.COMPARE:
        left, right = _num_range(g, node.inputs["left"]), _num_range(g, node.inputs["right"])
        if left and right:
            (a, b), (c, d) = left, right
            op = node.attrs["op"]
            can = {"<": a < d, "<=": a <= d, ">": b > c, ">=": b >= c,
                   "==": not (b < c or d < a), "!=": True}[op]
            return (None, can)
    if node.op is Op.LOGIC:
        parts = [_bool_range(g, s)[1] for s in node.inputs.values()]
        if node.attrs["op"] == "and" and False in parts:
            return (None, False)
        if node.attrs["op"] == "or" and all(p is False for p in parts):
            return (None, False)
    return (None, None)


def _num_range(g: Graph, nid: str) -> tuple[float, float] | None:
    node = g[nid]
    if node.op is Op.CONST and node.type is T.NUMBER:
        return (node.attrs["value"], node.attrs["value"])
    if node.op is Op.AGREEMENT:
        return (0.0, 1.0)
    return None
