"""Source positions and diagnostics: every user-facing error of ttsc.

A diagnostic renders as

    FILE:LINE:COL: error: MESSAGE
      12 |     samples = generat(policy, solve)
         |               ^~~~~~~
    hint: did you mean `generate`?

`UserError` is any mistake a user can fix (bad source, bad data line, missing
input); the CLI prints it and exits with status 2, never a traceback.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Iterable, Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Span:
    file: str
    line: int  # 1-based
    column: int  # 1-based
    end_line: int | None = None
    end_column: int | None = None  # exclusive

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Diagnostic:
    severity: Severity
    message: str
    span: Span | None = None
    hint: str | None = None

    def render(self, source: str | None = None) -> str:
        where = f"{self.span}: " if self.span else ""
        out = [f"{where}{self.severity}: {self.message}"]
        if self.span and source is not None:
            lines = source.splitlines()
            if 1 <= self.span.line <= len(lines):
                text = lines[self.span.line - 1].expandtabs(1)
                num = str(self.span.line)
                width = 1
                if self.span.end_line == self.span.line and self.span.end_column:
                    width = max(1, self.span.end_column - self.span.column)
                pad = " " * len(num)
                out.append(f" {num} | {text}")
                out.append(f" {pad} | {' ' * (self.span.column - 1)}^{'~' * (width - 1)}")
        if self.hint:
            out.append(f"hint: {self.hint}")
        return "\n".join(out)


class UserError(Exception):
    """A mistake the user can fix. The CLI renders it and exits with status 2."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        text = f"error: {self.message}"
        return text + (f"\nhint: {self.hint}" if self.hint else "")


class TTSError(UserError):
    """One or more diagnostics about a .tts source."""

    def __init__(self, diagnostics: Iterable[Diagnostic], sources: dict[str, str] | None = None):
        self.diagnostics = list(diagnostics)
        self.sources = dict(sources or {})
        first = self.diagnostics[0] if self.diagnostics else Diagnostic("error", "unknown error")
        super().__init__(f"{first.span}: {first.message}" if first.span else first.message)

    def render(self) -> str:
        return "\n\n".join(
            d.render(self.sources.get(d.span.file) if d.span else None) for d in self.diagnostics)


class BudgetInfeasible(TTSError):
    """No decision of the open knobs keeps the budget. `smallest` holds, per
    resource that alone blocks it, the smallest limit that would be feasible
    (tokens, bytes, seconds), so a search can say by how much a configuration
    is over."""

    def __init__(self, diagnostics: Iterable[Diagnostic], sources: dict[str, str] | None = None,
                 smallest: dict[str, float] | None = None):
        super().__init__(diagnostics, sources)
        self.smallest = dict(smallest or {})


def error(message: str, span: Span | None, hint: str | None = None) -> Diagnostic:
    return Diagnostic("error", message, span, hint)


def warning(message: str, span: Span | None, hint: str | None = None) -> Diagnostic:
    return Diagnostic("warning", message, span, hint)


def did_you_mean(name: str, known: Iterable[str]) -> str | None:
    """A hint naming the closest known name, or None when nothing is close."""
    close = difflib.get_close_matches(name, sorted(set(known)), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None


@dataclass
class Diagnostics:
    """Collects diagnostics so one run reports every error it can find."""

    items: list[Diagnostic] = field(default_factory=list)

    def error(self, message: str, span: Span | None, hint: str | None = None) -> None:
        self.items.append(error(message, span, hint))

    def warning(self, message: str, span: Span | None, hint: str | None = None) -> None:
        self.items.append(warning(message, span, hint))

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity == "warning"]

    def raise_if_errors(self, sources: dict[str, str]) -> None:
        if self.errors:
            raise TTSError(self.errors, sources)
