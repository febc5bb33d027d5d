"""Compile-time arguments of ops: models, prompts, extractors, aggregations,
and constants (sampling settings and the knobs of a search space).

Most knobs stay one node's attribute (`n=choice(4, 8)`, `model=choice(a, b)`).
A choice that changes the shape of the graph, a `choice` of prompts or one
whose options include a list of models (an ensemble: one call per model),
comes back as `Branches`: the op is built once per option, under a value
choice (see expressions.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from ttsc.common.errors import Span, did_you_mean
from ttsc.common.knobs import Auto, Choice, Range, is_knob
from ttsc.common.sampling import AUTO_SETTINGS, SETTINGS
from ttsc.compiler.build.context import BAD, Context, span_of
from ttsc.compiler.ops import EXTRACTORS, Arg, Kind, T
from ttsc.dsl import ast
from ttsc.dsl.unparse import unparse_expr


@dataclass(frozen=True)
class Branches:
    """A `choice(...)` of a static argument whose options build different
    graphs: one op per option, under a value choice. None: the argument
    left out (`none`, for an optional prompt)."""

    options: tuple[Any, ...]
    labels: tuple[str, ...]  # each option as written
    span: Span


def static_arg(ctx: Context, arg: Arg, value: ast.Expr, func: str) -> Any:
    """A compile-time argument: model, prompt, extractor, aggregation or constant."""
    where = f"argument `{arg.name}` of `{func}`"
    if arg.kind is Kind.MODEL:
        return _model_arg(ctx, value, where)
    if arg.kind is Kind.PROMPT:
        if isinstance(value, ast.Name) and value.id in ctx.info.prompts:
            return value.id
        if isinstance(value, ast.Call) and value.func == "choice" and not value.kwargs:
            return _branches(ctx, value, lambda a: static_arg(ctx, arg, a, func), optional=not arg.required)
        name = value.id if isinstance(value, ast.Name) else None
        ctx.err(f"{where} must be a prompt name", span_of(value),
                (did_you_mean(name, ctx.info.prompts) if name else None)
                or (f"prompts in this file: {', '.join(ctx.info.prompts)}"
                    if ctx.info.prompts else "define one with prompt NAME = \"\"\"...\"\"\""))
        return BAD
    if arg.kind is Kind.EXTRACTOR:
        if isinstance(value, ast.Name) and value.id in EXTRACTORS and value.id != "regex":
            return {"how": value.id}
        if isinstance(value, ast.Call) and value.func == "regex":
            if len(value.args) == 1 and not value.kwargs and isinstance(value.args[0], ast.String):
                pattern = value.args[0].value
                try:
                    re.compile(pattern)
                except re.error as exc:
                    ctx.err(f"bad regular expression: {exc.msg}", value.args[0].span)
                    return BAD
                return {"how": "regex", "pattern": pattern}
            ctx.err("regex takes one string, like regex(\"Answer: (\\d+)\")", value.span)
            return BAD
        name = value.id if isinstance(value, ast.Name) else ""
        named = ", ".join(e for e in EXTRACTORS if e != "regex")
        ctx.err(f"{where} must be {named} or regex(\"...\")", span_of(value),
                did_you_mean(name, EXTRACTORS) if name else None)
        return BAD
    if arg.kind is Kind.AGG:
        if isinstance(value, ast.Name) and value.id in arg.names:
            return value.id
        name = value.id if isinstance(value, ast.Name) else ""
        ctx.err(f"{where} must be one of {', '.join(arg.names)}", span_of(value),
                did_you_mean(name, arg.names) if name else None)
        return BAD
    return _const(ctx, arg, value, where)


def _model_arg(ctx: Context, value: ast.Expr, where: str, ensemble: bool = True) -> Any:
    """A model name; a list of them (an ensemble, a tuple); a choice of
    names (a `Choice`) or of names and lists (`Branches`); or auto."""
    if isinstance(value, ast.Name):
        if value.id in ctx.info.models:
            return value.id
        ctx.err(f"unknown model `{value.id}`", value.span,
                did_you_mean(value.id, ctx.info.models)
                or (f"models in this file: {', '.join(ctx.info.models)}" if ctx.info.models
                    else "define one with model NAME = \"smollm2-135m\""))
        return BAD
    if isinstance(value, ast.ListExpr) and ensemble:
        names = [_model_arg(ctx, item, where, ensemble=False) for item in value.items]
        if BAD in names:
            return BAD
        if not names:
            ctx.err("an ensemble needs at least one model", value.span)
            return BAD
        twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if twice is not None:
            ctx.err(f"`{twice}` is listed twice in this ensemble", value.span,
                    "list each model once; n= sets the samples per model")
            return BAD
        return tuple(names) if len(names) > 1 else names[0]
    if isinstance(value, ast.Call) and value.func == "choice" and not value.kwargs and ensemble:
        if any(isinstance(a, ast.ListExpr) for a in value.args):
            return _branches(ctx, value, lambda a: _model_arg(ctx, a, where))
        names = _options(ctx, value, lambda a: _model_arg(ctx, a, where, ensemble=False))
        return BAD if names is BAD else Choice(names)
    if isinstance(value, ast.Auto) and ensemble:
        if not ctx.info.models:
            ctx.err("`auto` needs at least one model defined", value.span)
            return BAD
        return Auto(tuple(ctx.info.models))
    ctx.err(f"{where} must be a model name, a list of model names, choice(...) of those, or auto"
            if ensemble else f"{where}: expected a model name here", span_of(value))
    return BAD


def _const(ctx: Context, arg: Arg, value: ast.Expr, where: str) -> Any:
    """A constant setting, or a knob over its values, checked against the
    settings table (common/sampling.py)."""
    name = arg.name
    setting = SETTINGS.get(name)
    if name == "stop":
        return _stop(ctx, value, where)
    if arg.types == (T.TEXT,):
        return _text_const(ctx, value, where)
    if arg.types == (T.BOOL,):
        if isinstance(value, ast.Bool):
            return value.value
        ctx.err(f"{where} must be true or false", span_of(value))
        return BAD
    if isinstance(value, ast.Auto):
        if setting.auto_ok:
            return Auto()
        ctx.err(f"`{name}` cannot be auto", value.span, f"auto works for {_listed(AUTO_SETTINGS)}")
        return BAD
    if isinstance(value, ast.Call) and value.func == "range":
        if (len(value.args) == 2 and not value.kwargs
                and all(isinstance(a, ast.Number) for a in value.args)):
            lo, hi = value.args[0].value, value.args[1].value
            if lo > hi:
                ctx.err(f"range({lo}, {hi}) is empty: the low end is above the high end",
                        value.span)
                return BAD
            if not all([_check_number(ctx, name, bound, value.span, where) for bound in (lo, hi)]):
                return BAD
            return Range(lo, hi, setting.integer)
        ctx.err("range takes two numbers, like range(0.3, 1.1)", value.span)
        return BAD
    if isinstance(value, ast.Call) and value.func == "choice":
        options = _options(ctx, value, lambda a: _const(ctx, arg, a, where))
        return BAD if options is BAD else Choice(options)
    if isinstance(value, ast.Number):
        return value.value if _check_number(ctx, name, value.value, value.span, where) else BAD
    ctx.err(f"{where} must be a constant number, auto, range(...) or choice(...)", span_of(value),
            "values computed at run time cannot set sampling parameters")
    return BAD


def _branches(ctx: Context, value: ast.Call, read: Callable[[ast.Expr], Any],
              optional: bool = False) -> Any:
    """The options of a `choice(...)` that builds one op per option; `none`
    (when the argument may be left out) is the option None."""
    options = _options(ctx, value, read, optional)
    if options is BAD:
        return BAD
    return Branches(options, tuple(unparse_expr(a) for a in value.args), value.span)


def _stop(ctx: Context, value: ast.Expr, where: str) -> Any:
    """`stop`: a string, a list of strings, or a choice of those."""
    if isinstance(value, ast.String):
        return [value.value]
    if isinstance(value, ast.ListExpr) and all(isinstance(i, ast.String) for i in value.items):
        return [i.value for i in value.items]
    if isinstance(value, ast.Call) and value.func == "choice":
        options = _options(ctx, value, lambda a: _stop(ctx, a, where))
        return BAD if options is BAD else Choice(options)
    ctx.err(f"{where} must be a string or a list of strings", span_of(value))
    return BAD


def _text_const(ctx: Context, value: ast.Expr, where: str) -> Any:
    """A constant string (`force="Wait,"`), or a choice of strings."""
    if isinstance(value, ast.String):
        if not value.value:
            ctx.err(f"{where} must not be empty", value.span)
            return BAD
        return value.value
    if isinstance(value, ast.Call) and value.func == "choice":
        options = _options(ctx, value, lambda a: _text_const(ctx, a, where))
        return BAD if options is BAD else Choice(options)
    ctx.err(f"{where} must be a string", span_of(value))
    return BAD


def _options(ctx: Context, value: ast.Call, read: Callable[[ast.Expr], Any],
             optional: bool = False) -> Any:
    """The options of a `choice(...)` of constants, each read by `read`;
    with `optional`, `none` is the option None."""
    options: list[Any] = []
    for a in value.args:
        if optional and isinstance(a, ast.Nothing):
            options.append(None)
            continue
        got = read(a)
        if got is BAD:
            return BAD
        if is_knob(got) or isinstance(got, Branches):
            ctx.err("choice options must be plain constants", span_of(a))
            return BAD
        options.append(got)
    if not options:
        ctx.err("choice(...) needs at least one option", value.span)
        return BAD
    return tuple(options)


def _check_number(ctx: Context, name: str, v: float, span: Span, where: str) -> bool:
    problem = SETTINGS[name].problem(v)
    if problem:
        ctx.err(f"{where} {problem}, got {v}", span)
        return False
    return True


def _listed(names: tuple[str, ...]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
