"""Knobs: settings a search space leaves open, in one typed form.

A constant setting of an op (`n=16`, `model=policy`) is a plain value. A knob
is a value still to be decided:

    choice(a, b, c)   Choice(("a", "b", "c"))       one of the options
    range(lo, hi)     Range(lo, hi)                  a number in [lo, hi]
    range(1, 8) of an integer setting                Range(1, 8, integer=True)
    auto              Auto()                         the allocator decides
    model=auto        Auto(("policy", "judge"))      the allocator picks a model

The builder makes knobs, the allocator and the defaults pass decide them, and
search assigns them (`compile_program(program, assignment)`); by the time a
Plan is lowered every knob is a plain value (the plan's `knob_values` fact
records what each knob site got). `to_json`/`knob_from_json` give the form
search records store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union


@dataclass(frozen=True)
class Choice:
    options: tuple[Any, ...]

    def default(self) -> Any:
        return self.options[0]

    def size(self) -> int | None:
        return len(self.options)

    def to_json(self) -> dict[str, Any]:
        return {"choice": list(self.options)}


@dataclass(frozen=True)
class Range:
    lo: float
    hi: float
    integer: bool = False  # the setting takes whole numbers: every integer in [lo, hi]

    def default(self) -> Any:
        mid = (self.lo + self.hi) / 2
        return int(round(mid)) if self.integer else round(mid, 4)

    def size(self) -> int | None:
        return int(self.hi - self.lo) + 1 if self.integer else None  # None: continuous

    def to_json(self) -> dict[str, Any]:
        return {"range": [self.lo, self.hi], "integer": self.integer}


@dataclass(frozen=True)
class Auto:
    options: tuple[Any, ...] | None = None  # model names for `model=auto`; None: the allocator's grid

    def default(self) -> Any:
        """The first model of `model=auto`; any other auto needs a budget to decide it."""
        if self.options:
            return self.options[0]
        raise ValueError("auto has no default: a budget decides it")

    def size(self) -> int | None:
        return len(self.options) if self.options is not None else None

    def to_json(self) -> dict[str, Any]:
        return {"auto": True, **({"choice": list(self.options)} if self.options is not None else {})}


Knob = Union[Choice, Range, Auto]
KNOB_TYPES = (Choice, Range, Auto)


def is_knob(value: Any) -> bool:
    return isinstance(value, KNOB_TYPES)


def knob_from_json(value: Any) -> Any:
    """The knob a JSON form stands for; plain values pass through."""
    if not isinstance(value, dict):
        return value
    if value.get("auto"):
        return Auto(tuple(value["choice"]) if "choice" in value else None)
    if "choice" in value:
        return Choice(tuple(value["choice"]))
    if "range" in value:
        lo, hi = value["range"]
        return Range(lo, hi, bool(value.get("integer", False)))
    return value

