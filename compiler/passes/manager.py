"""The pass manager: run a readable list of passes, record what each changed.

A pass is a plain function `Program -> PassResult`. It mutates the program's
graph (or builds a new one and assigns it) and reports honestly whether
anything changed, with one human line per change. After every pass the IR
invariants are checked; a broken invariant names the pass that broke it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from ttsc.compiler.ir import Program


@dataclass
class PassResult:
    changed: bool
    notes: list[str] = field(default_factory=list)


Pass = Callable[[Program], PassResult]


@dataclass
class PassRecord:
    name: str
    changed: bool
    notes: list[str]
    seconds: float

    def as_dict(self) -> dict:
        return {"pass": self.name, "changed": self.changed, "notes": list(self.notes)}


class PassError(RuntimeError):
    """A pass broke an IR invariant: a compiler bug, not a user mistake."""


def run_passes(program: Program, passes: list[Pass], *, fixpoint: bool = False,
               max_rounds: int = 8) -> list[PassRecord]:
    """Run `passes` in order (repeating the whole list until nothing changes
    when `fixpoint`), checking invariants after each. Returns the report."""
    report: list[PassRecord] = []
    for _ in range(max_rounds if fixpoint else 1):
        any_changed = False
        for p in passes:
            start = time.perf_counter()
            result = p(program)
            elapsed = time.perf_counter() - start
            try:
                program.graph.check()
            except AssertionError as exc:
                raise PassError(f"pass `{p.__name__}` broke the IR: {exc}") from exc
            report.append(PassRecord(p.__name__, result.changed, result.notes, elapsed))
            any_changed |= result.changed
        if not any_changed:
            break
    return report


def summarize(report: list[PassRecord]) -> list[PassRecord]:
    """One record per pass name: repeated rounds merged, order of first run kept."""
    merged: dict[str, PassRecord] = {}
    for r in report:
        if r.name in merged:
            m = merged[r.name]
            m.changed |= r.changed
            m.notes += r.notes
            m.seconds += r.seconds
        else:
            merged[r.name] = PassRecord(r.name, r.changed, list(r.notes), r.seconds)
    return list(merged.values())
