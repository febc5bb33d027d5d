"""Expressions: names, constants, joins, comparisons, logic, and calls of
ops, strategies and value `choice(...)`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ttsc.common.errors import Span, did_you_mean
from ttsc.common.knobs import Choice, is_knob
from ttsc.compiler.build.arguments import Branches, static_arg
from ttsc.compiler.build.context import BAD, Context, signature, span_of
from ttsc.compiler.build.holes import bind_holes
from ttsc.compiler.build.scope import Scope, defined
from ttsc.compiler.ir import Op
from ttsc.compiler.ops import SIGNATURES, Kind, OpSig, T
from ttsc.dsl import ast
from ttsc.dsl.unparse import unparse_expr


def expr(ctx: Context, e: ast.Expr, scope: Scope) -> str | None:
    g = scope.graph
    if isinstance(e, ast.Name):
        nid = scope.lookup(e.id)
        if nid is not None:
            return nid
        if e.id in ctx.info.models:
            ctx.err(f"`{e.id}` is a model, not a value", e.span,
                    "models are the first argument of ops like generate(MODEL, PROMPT)")
        elif e.id in ctx.info.prompts:
            ctx.err(f"`{e.id}` is a prompt, not a value", e.span,
                    "prompts are passed to ops like generate(MODEL, PROMPT)")
        elif e.id in ctx.info.strategies or e.id in SIGNATURES:
            ctx.err(f"`{e.id}` must be called", e.span, f"write `{e.id}(...)`")
        else:
            ctx.err(f"undefined name `{e.id}`", e.span, did_you_mean(e.id, scope.visible())
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
        ctx.err("`auto` can only be an argument's value, like n=auto", e.span)
        return None
    if isinstance(e, ast.Nothing):
        _misplaced_none(ctx, e, None)
        return None
    if isinstance(e, ast.ListExpr):
        if not e.items:
            ctx.err("an empty list has no value", e.span)
            return None
        ids = [expr(ctx, i, scope) for i in e.items]
        if None in ids:
            return None
        return _concat(ctx, ids, e.span, scope)
    if isinstance(e, ast.BinOp):
        ids = [expr(ctx, e.left, scope), expr(ctx, e.right, scope)]
        if None in ids:
            return None
        return _concat(ctx, ids, e.span, scope)
    if isinstance(e, ast.Compare):
        left, right = expr(ctx, e.left, scope), expr(ctx, e.right, scope)
        if left is None or right is None:
            return None
        lt, rt = g[left].type, g[right].type
        ordered = e.op in ("<", "<=", ">", ">=")
        if (ordered and (lt, rt) != (T.NUMBER, T.NUMBER)) or (not ordered and lt is not rt):
            ctx.err(f"cannot compare {lt.value} {e.op} {rt.value}", e.span,
                    "comparisons take two numbers (== and != also take two values of one type)")
            return None
        return g.add(Op.COMPARE, T.BOOL, {"left": left, "right": right}, {"op": e.op}, e.span).id
    if isinstance(e, (ast.BoolOp, ast.Not)):
        parts = [e.left, e.right] if isinstance(e, ast.BoolOp) else [e.operand]
        ids = [expr(ctx, p, scope) for p in parts]
        if None in ids:
            return None
        for p, i in zip(parts, ids):
            if g[i].type is not T.BOOL:
                ctx.err(f"`{e.op if isinstance(e, ast.BoolOp) else 'not'}` needs bool, "
                        f"got {g[i].type.value}", span_of(p))
                return None
        inputs = dict(zip(("left", "right"), ids)) if len(ids) == 2 else {"operand": ids[0]}
        return g.add(Op.LOGIC, T.BOOL, inputs,
                     {"op": e.op if isinstance(e, ast.BoolOp) else "not"}, e.span).id
    if isinstance(e, ast.Call):
        return _call(ctx, e, scope)
    raise TypeError(f"unknown expression {e!r}")


def _concat(ctx: Context, ids: list[str], span: Span, scope: Scope) -> str | None:
    g = scope.graph
    types = {g[i].type for i in ids}
    if len(ids) == 1:
        return ids[0]
    if len(types) != 1:
        ctx.err("cannot join " + " and ".join(sorted(t.value for t in types)), span,
                "`+` and lists join values of one type: candidates, answers, scores or text")
        return None
    typ = types.pop()
    if typ not in (T.CANDIDATES, T.ANSWERS, T.SCORES, T.TEXT):
        ctx.err(f"cannot join values of type {typ.value}", span)
        return None
    return g.add(Op.CONCAT, typ, {f"item{i}": nid for i, nid in enumerate(ids)}, span=span).id


def _call(ctx: Context, e: ast.Call, scope: Scope) -> str | None:
    if e.func in ctx.info.strategies:
        return _strategy_call(ctx, e, scope)
    if e.func == "choice":
        return _value_choice(ctx, e, scope)
    sig = SIGNATURES.get(e.func)
    if sig is None:
        known = list(SIGNATURES) + list(ctx.info.strategies)
        ctx.err(f"unknown operation `{e.func}`", e.func_span,
                did_you_mean(e.func, known) or f"operations: {', '.join(sorted(SIGNATURES))}")
        return None
    bound = _bind_args(ctx, sig, e)
    if bound is None:
        return None
    inputs: dict[str, str] = {}
    attrs: dict[str, Any] = {}
    sites: dict[str, str] = {}
    branches: list[_Branch] = []
    ok = True
    for arg in sig.args:
        if arg.name not in bound:
            if arg.kind is Kind.CONST and arg.default is not None:
                attrs[arg.name] = arg.default
            continue
        value = bound[arg.name]
        if isinstance(value, ast.Nothing) and not arg.required:
            continue  # `critiques=none`: left out
        if arg.kind is Kind.VALUE:
            if _has_none(value):
                branch = _optional_input(ctx, e, arg, value, scope)
                if branch is None:
                    ok = False
                else:
                    branches.append(branch)
                continue
            nid = expr(ctx, value, scope)
            if nid is None:
                ok = False
                continue
            if not _fits(ctx, e, arg, nid, value, scope):
                ok = False
                continue
            inputs[arg.name] = nid
        else:
            got = static_arg(ctx, arg, value, e.func)
            if got is BAD:
                ok = False
                continue
            if isinstance(got, Branches):
                sid = ctx.site(f"{e.func}.{arg.name}", "branch", Choice(tuple(range(len(got.options)))),
                               got.span, got.labels)
                branches.append(_Branch(sid, [("attr", arg.name, o) for o in got.options]))
                continue
            attrs[arg.name] = got
            if is_knob(got):
                sites[arg.name] = ctx.site(f"{e.func}.{arg.name}", arg.name, got, span_of(value))
    if not ok:
        return None
    return _variants(ctx, e, sig, inputs, attrs, sites, branches, scope)


@dataclass
class _Branch:
    """One argument choice that builds the op once per option: its knob site
    and, per option, what it sets: ("attr" | "input", argument, value), a
    value of None leaving the argument out."""

    site: str
    options: list[tuple[str, str, Any]]


def _variants(ctx: Context, e: ast.Call, sig: OpSig, inputs: dict[str, str], attrs: dict[str, Any],
              sites: dict[str, str], branches: list[_Branch], scope: Scope) -> str | None:
    """The op's node; under a value choice per branching argument, one copy
    per option (copies share their knob sites: one knob, one value)."""
    g = scope.graph
    if branches:
        first, rest = branches[0], branches[1:]
        ids = []
        for kind, name, option in first.options:
            if kind == "attr":
                variant = dict(attrs)
                if option is None:
                    variant.pop(name, None)
                else:
                    variant[name] = option
                ids.append(_variants(ctx, e, sig, inputs, variant, sites, rest, scope))
            else:
                variant = dict(inputs)
                if option is not None:
                    variant[name] = option
                ids.append(_variants(ctx, e, sig, variant, attrs, sites, rest, scope))
        if None in ids:
            return None
        return g.add(Op.CHOICE, sig.result, {f"option{i}": nid for i, nid in enumerate(ids)},
                     {"selected": None}, e.span, meta={"knob_sites": {"selected": first.site}}).id
    model = attrs.get("model")
    if isinstance(model, tuple):  # an ensemble: one call per model, candidates joined
        if sig.result is not T.CANDIDATES or sig.arg("n") is None:
            ctx.err(f"`{sig.name}` takes one model, not a list", e.span,
                    "a list of models (an ensemble) works for generate, extend, fuse and unit_tests")
            return None
        ids = [_one(ctx, e, sig, inputs, {**attrs, "model": m}, sites, scope) for m in model]
        if None in ids:
            return None
        return g.add(Op.CONCAT, T.CANDIDATES, {f"item{i}": nid for i, nid in enumerate(ids)},
                     span=e.span).id
    return _one(ctx, e, sig, inputs, attrs, sites, scope)


def _one(ctx: Context, e: ast.Call, sig: OpSig, inputs: dict[str, str], attrs: dict[str, Any],
         sites: dict[str, str], scope: Scope) -> str | None:
    if not _first_fits(ctx, e, attrs):
        return None
    inputs = dict(inputs)
    if sig.is_llm:
        holes = bind_holes(ctx, e, sig, attrs, scope)
        if holes is None:
            return None
        inputs.update(holes)
    return scope.graph.add(Op(sig.name), sig.result, inputs, attrs, e.span,
                           meta={"knob_sites": dict(sites)} if sites else None).id


def _first_fits(ctx: Context, e: ast.Call, attrs: dict[str, Any]) -> bool:
    """First-finish search keeps k of the n samples: k must not exceed n."""
    first, n = attrs.get("first"), attrs.get("n")
    if isinstance(first, (int, float)) and isinstance(n, (int, float)) and first > n:
        kw = next((k for k in e.kwargs if k.name == "first"), None)
        ctx.err(f"`first={first:g}` keeps more samples than the n={n:g} that `{e.func}` draws",
                kw.span if kw else e.span, "first=k keeps the k of the n samples that finish first")
        return False
    return True


def _fits(ctx: Context, e: ast.Call, arg: Any, nid: str, value: ast.Expr, scope: Scope) -> bool:
    typ = scope.graph[nid].type
    if typ in arg.types:
        return True
    want = " or ".join(t.value for t in arg.types)
    ctx.err(f"argument `{arg.name}` of `{e.func}` must be {want}, got {typ.value}", span_of(value))
    return False


def _has_none(value: ast.Expr) -> bool:
    return (isinstance(value, ast.Call) and value.func == "choice"
            and any(isinstance(a, ast.Nothing) for a in value.args))


def _optional_input(ctx: Context, e: ast.Call, arg: Any, value: ast.Call,
                    scope: Scope) -> _Branch | None:
    """`critiques=choice(critique(...), none)`: the op with the input and without it."""
    if arg.required:
        ctx.err(f"argument `{arg.name}` of `{e.func}` cannot be left out, so `none` is no option "
                "for it", value.span)
        return None
    if value.kwargs:
        ctx.err("choice(...) takes one or more alternatives and no keywords", value.span)
        return None
    options: list[tuple[str, str, Any]] = []
    sid = ctx.site(f"{e.func}.{arg.name}", "branch", Choice(tuple(range(len(value.args)))),
                   value.span, tuple(unparse_expr(a) for a in value.args))
    for a in value.args:
        if isinstance(a, ast.Nothing):
            options.append(("input", arg.name, None))
            continue
        nid = expr(ctx, a, scope)
        if nid is None or not _fits(ctx, e, arg, nid, a, scope):
            return None
        options.append(("input", arg.name, nid))
    return _Branch(sid, options)


def _bind_args(ctx: Context, sig: OpSig, e: ast.Call) -> dict[str, ast.Expr] | None:
    positional = sig.positional
    bound: dict[str, ast.Expr] = {}
    if len(e.args) > len(positional):
        names = ", ".join(a.name for a in positional)
        ctx.err(f"`{sig.name}` takes at most {len(positional)} positional argument"
                f"{'s' if len(positional) != 1 else ''} ({names}), got {len(e.args)}",
                span_of(e.args[len(positional)]),
                f"signature: {signature(sig)}")
        return None
    for arg, value in zip(positional, e.args):
        bound[arg.name] = value
    ok = True
    for kw in e.kwargs:
        arg = sig.arg(kw.name)
        if arg is None:
            ctx.err(f"`{sig.name}` has no argument `{kw.name}`", kw.span,
                    did_you_mean(kw.name, [a.name for a in sig.args])
                    or f"signature: {signature(sig)}")
            ok = False
        elif kw.name in bound:
            ctx.err(f"argument `{kw.name}` of `{sig.name}` is given twice", kw.span)
            ok = False
        else:
            bound[kw.name] = kw.value
    for arg in sig.args:
        if arg.required and arg.name not in bound and arg.default is None:
            ctx.err(f"`{sig.name}` needs argument `{arg.name}`", e.span,
                    f"signature: {signature(sig)}")
            ok = False
    for group in sig.one_of:
        given = [name for name in group if name in bound]
        if len(given) != 1:
            either = " or ".join(f"`{name}=`" for name in group)
            ctx.err(f"`{sig.name}` takes {either}" + (", not both" if given else ""),
                    e.span, f"signature: {signature(sig)}")
            ok = False
    for a, b in sig.needs:
        if a in bound and b not in bound:
            ctx.err(f"`{sig.name}` with `{a}=` needs `{b}=`", e.span, f"signature: {signature(sig)}")
            ok = False
    return bound if ok else None


def _strategy_call(ctx: Context, e: ast.Call, scope: Scope) -> str | None:
    callee = ctx.info.strategies[e.func]
    params = [p.name for p in callee.params]
    if len(e.args) > len(params):
        ctx.err(f"strategy `{e.func}` takes {len(params)} argument"
                f"{'s' if len(params) != 1 else ''} ({', '.join(params)}), got {len(e.args)}",
                e.span)
        return None
    bound: dict[str, ast.Expr] = dict(zip(params, e.args))
    for kw in e.kwargs:
        if kw.name not in params:
            ctx.err(f"strategy `{e.func}` has no parameter `{kw.name}`", kw.span,
                    did_you_mean(kw.name, params))
            return None
        if kw.name in bound:
            ctx.err(f"argument `{kw.name}` of `{e.func}` is given twice", kw.span)
            return None
        bound[kw.name] = kw.value
    missing = [p for p in params if p not in bound]
    if missing:
        ctx.err(f"strategy `{e.func}` needs argument `{missing[0]}`", e.span)
        return None
    inputs = {}
    for p in params:
        nid = expr(ctx, bound[p], scope)
        if nid is None:
            return None
        inputs[f"arg:{p}"] = nid
    types = {p: scope.graph[inputs[f"arg:{p}"]].type for p in params}
    from ttsc.compiler.build.statements import build_strategy  # statements build expressions

    sub = build_strategy(ctx.info, ctx.diags, ctx.sites, callee, types)
    if sub is None or sub.output is None:
        return None
    return scope.graph.add(Op.CALL, sub[sub.output].type, inputs,
                           {"strategy": e.func, "body": sub}, e.span).id


def assigned_value(ctx: Context, e: ast.Expr, scope: Scope, target: str) -> str | None:
    """The value of `target = e`. There `choice(step, none)` is an optional
    step: `none` keeps the value `target` had."""
    if isinstance(e, ast.Call) and e.func == "choice" and _has_none(e):
        keep = scope.lookup(target) if defined(scope, target) else None
        return _value_choice(ctx, e, scope, keep=keep, target=target)
    return expr(ctx, e, scope)


def _value_choice(ctx: Context, e: ast.Call, scope: Scope, keep: str | None = None,
                  target: str | None = None) -> str | None:
    if e.kwargs or not e.args:
        ctx.err("choice(...) takes one or more alternatives and no keywords", e.span)
        return None
    site = ctx.site("choice", "branch", Choice(tuple(range(len(e.args)))), e.span,
                    tuple(unparse_expr(a) for a in e.args))
    ids = []
    for a in e.args:
        if isinstance(a, ast.Nothing):
            if keep is None:
                _misplaced_none(ctx, a, target)
                ids.append(None)
            else:
                ids.append(keep)
            continue
        ids.append(expr(ctx, a, scope))
    if None in ids:
        return None
    types = {scope.graph[i].type for i in ids}
    if len(types) != 1:
        ctx.err("the alternatives of choice(...) must have one type, got "
                + ", ".join(sorted(t.value for t in types)), e.span)
        return None
    return scope.graph.add(Op.CHOICE, types.pop(), {f"option{i}": nid for i, nid in enumerate(ids)},
                           {"selected": None}, e.span, meta={"knob_sites": {"selected": site}}).id


NONE_HINT = ("`none` leaves a step out: `x = choice(step(x), none)` keeps x as it was, and "
             "an optional argument like `critiques=choice(critique(...), none)` is left out")


def _misplaced_none(ctx: Context, e: ast.Nothing, target: str | None) -> None:
    if target is not None:
        ctx.err(f"`none` would leave `{target}` without a value: it has none before this line",
                e.span, NONE_HINT)
    else:
        ctx.err("`none` can only be an option of choice(...) that sets a variable or an "
                "optional argument", e.span, NONE_HINT)
