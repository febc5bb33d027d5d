"""Run-time values that flow between ops, and prompt rendering."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ttsc.runtime.engines.base import Prompt


@dataclass(frozen=True)
class Candidate:
    """One generated text, with what it was generated from (so `extend` can
    continue it) and whether the model ended it."""

    text: str
    prompt: Prompt
    finished: bool = True
    tokens: int = 0


_HOLE = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def hole_text(value: Any) -> str:
    """How a value reads inside a prompt."""
    if isinstance(value, Candidate):
        return value.text
    if isinstance(value, list):
        items = [hole_text(v) if v is not None else "(none)" for v in value]
        return "\n\n".join(f"[{i + 1}] {t.strip()}" for i, t in enumerate(items))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value)


def fill(template: str, values: dict[str, Any]) -> str:
    """Replace `{name}` holes in one pass (inserted text is never re-read);
    `{{` and `}}` are literal braces."""

    def sub(m: re.Match[str]) -> str:
        if m.group(1) is None:
            return m.group(0)[0]
        return hole_text(values[m.group(1)])

    return _HOLE.sub(sub, template)


def render_prompt(pdef: dict[str, Any], values: dict[str, Any]) -> Prompt:
    """A Prompt from a prompt definition ({user, system, raw}) and hole values."""
    user = fill(pdef["user"], values)
    system = fill(pdef["system"], values) if pdef.get("system") else None
    if pdef.get("raw"):
        return Prompt(raw=(system + "\n" if system else "") + user)
    return Prompt.user(user, system)
