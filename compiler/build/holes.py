"""Prompt holes: which variable of the strategy fills each hole of an op's prompt."""

from __future__ import annotations

from typing import Any

from ttsc.common.errors import did_you_mean
from ttsc.common.prompts import OP_HOLES, TASK_HOLE, default_prompt
from ttsc.compiler.build.context import Context
from ttsc.compiler.build.scope import Scope
from ttsc.compiler.ops import OpSig, T
from ttsc.dsl import ast

HOLE_VALUE_TYPES = (T.TEXT, T.NUMBER, T.CANDIDATES, T.ANSWERS)


def bind_holes(ctx: Context, e: ast.Call, sig: OpSig, attrs: dict[str, Any],
               scope: Scope) -> dict[str, str] | None:
    """Inputs for the prompt's holes: variables in scope, by name."""
    provided = tuple(OP_HOLES.get(sig.name, {}))
    prompt = attrs.get("prompt")
    if prompt is not None:
        pdef = ctx.info.prompts[prompt]
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
        if nid is None and prompt is None and hole == TASK_HOLE and ctx.strategy.params:
            # Shipped prompts call the task input `question`; use the first parameter.
            nid = scope.lookup(ctx.strategy.params[0].name)
        if nid is None:
            visible = scope.visible()
            ctx.err(f"`{{{hole}}}` in prompt `{prompt}` names no variable of strategy "
                    f"`{ctx.strategy.name}` (used at line {e.span.line})", span or e.span,
                    did_you_mean(hole, visible) or (f"variables there: {', '.join(visible)}"
                                                    if visible else None))
            ok = False
            continue
        typ = scope.graph[nid].type
        if typ not in HOLE_VALUE_TYPES:
            ctx.err(f"`{{{hole}}}` is {typ.value}, which cannot be written into a prompt",
                    span or e.span)
            ok = False
            continue
        inputs[f"hole:{hole}"] = nid
    return inputs if ok else None
