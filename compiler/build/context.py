"""What every part of the builder shares while it builds one strategy, and
the knob sites it records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ttsc.common.errors import Diagnostics, Span
from ttsc.common.knobs import Knob
from ttsc.compiler.build.definitions import ModuleInfo
from ttsc.compiler.ops import OpSig
from ttsc.dsl import ast


@dataclass(frozen=True)
class KnobSite:
    """A knob as written in the source: `choice`, `range` or `auto` in one
    argument, a value `choice(...)`, or `repeat auto`.

    `id` is stable across reformatting: strategy, the statement it sits in
    (the assigned variable, `return`, `repeat`, `until`), the op and the
    setting, e.g. `space.s.generate.n`; `#2` marks a second site of the same
    name in one strategy. Every IR node a site makes (a strategy inlined twice
    makes two) names it in `meta["knob_sites"]`, by attribute.
    """

    id: str
    setting: str  # the op's setting ("n", "model", ...), "branch" of a value choice, "count" of a repeat
    knob: Knob
    span: Span | None  # the knob expression
    labels: tuple[str, ...] | None = None  # a branch choice's options as written ("none" included)


@dataclass
class Context:
    """The file's definitions, the diagnostics collected so far, the strategy
    being built, and the knob sites of the whole file."""

    info: ModuleInfo
    diags: Diagnostics
    strategy: ast.StrategyDef
    sites: dict[str, KnobSite]
    label: str = ""  # the statement being built: an assigned variable, "return", "repeat", "until"
    _site_names: dict[str, int] = field(default_factory=dict)

    def site(self, where: str, setting: str, knob: Knob, span: Span | None,
             labels: tuple[str, ...] | None = None) -> str:
        """Record a knob site of the statement being built; returns its id."""
        base = f"{self.strategy.name}.{self.label}.{where}"
        count = self._site_names[base] = self._site_names.get(base, 0) + 1
        sid = base if count == 1 else f"{base}#{count}"
        self.sites[sid] = KnobSite(sid, setting, knob, span, labels)
        return sid

    def err(self, message: str, span: Span | None, hint: str | None = None) -> None:
        # A callee built at several call sites would repeat its own errors.
        if not any(d.message == message and d.span == span for d in self.diags.items):
            self.diags.error(message, span, hint)

    def warn(self, message: str, span: Span | None, hint: str | None = None) -> None:
        if not any(d.message == message and d.span == span for d in self.diags.items):
            self.diags.warning(message, span, hint)


class _Bad:
    def __repr__(self) -> str:
        return "<bad>"


BAD = _Bad()  # an argument that was reported as wrong


def signature(sig: OpSig) -> str:
    parts = []
    for a in sig.args:
        if a.positional:
            parts.append(a.name if a.required else f"[{a.name}]")
        else:
            parts.append(f"{a.name}=" + ("..." if a.default is None else repr(a.default)))
    return f"{sig.name}({', '.join(parts)})"


def span_of(e: Any) -> Span | None:
    return getattr(e, "span", None)
