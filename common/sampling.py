"""Sampling settings: their names, types, defaults and bounds, defined once.

`SETTINGS` is the table every layer reads: the builder checks constants in a
.tts file against it (and which settings may be `auto`), the op table takes
its defaults from it, the allocator its grid for `auto`, the runtime fills
what a plan leaves unset from it, and engines validate requests with the same
rule (`SamplingParams.check`). `SamplingParams` is the typed form that travels
from the runtime's ops to the engines (the engine contract's request settings).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from ttsc.common.errors import UserError


@dataclass(frozen=True)
class Setting:
    """One numeric setting an op takes as a constant."""

    name: str
    integer: bool
    default: Any
    lo: float | None = None  # smallest value (inclusive unless lo_open)
    hi: float | None = None  # largest value (inclusive)
    lo_open: bool = False
    empty_ok: bool = False  # 0 is accepted in an engine request (asks for nothing)
    auto_ok: bool = False  # `auto` may stand for it (the allocator decides)
    auto_grid: tuple[int, ...] = ()  # the values the allocator weighs for `auto` (none: no cost)
    doc: str = ""

    def problem(self, value: Any, *, in_request: bool = False) -> str | None:
        """The rule `value` breaks ("must be at least 1"), or None."""
        if value is None:
            return None if self.default is None else "must be set"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "must be a number"
        if self.integer and not float(value).is_integer():
            return "must be a whole number"
        if in_request and self.empty_ok and value == 0:
            return None
        if self.lo_open and not (self.lo < value <= self.hi):
            return f"must be in ({self.lo:g}, {self.hi:g}]"
        if self.lo is not None and value < self.lo:
            return f"must be at least {self.lo:g}" if self.lo > 0 else "must not be negative"
        if self.hi is not None and value > self.hi:
            return f"is implausibly high (at most {self.hi:g})"
        return None


SETTINGS: dict[str, Setting] = {s.name: s for s in [
    Setting("n", True, 1, lo=1, empty_ok=True, auto_ok=True, auto_grid=(1, 2, 4, 8, 16, 32, 64),
            doc="samples per request"),
    # `temperature=auto` costs nothing: the default when sampling several, 0 for one.
    Setting("temperature", False, 0.7, lo=0, hi=5, auto_ok=True,
            doc="softmax temperature; 0 is greedy"),
    Setting("max_tokens", True, 256, lo=1, empty_ok=True, auto_ok=True,
            auto_grid=(16, 32, 64, 128, 256, 512, 1024), doc="most tokens generated per sample"),
    Setting("top_p", False, 1.0, lo=0, hi=1, lo_open=True, doc="nucleus sampling mass"),
    Setting("top_k", True, 0, lo=0, doc="keep the k likeliest tokens; 0 keeps all"),
    Setting("seed", True, None, lo=0, doc="sample i of a request uses seed + i"),
    Setting("k", True, None, lo=1, auto_ok=True, auto_grid=(1, 2, 4, 8, 16),
            doc="how many candidates top/rank keep"),
    Setting("window", True, 8, lo=1, doc="tokens per group of the confidence op (min, tail)"),
    # Search ops (particle filtering, DVTS, first-finish search).
    Setting("first", True, None, lo=1,
            doc="keep the first k of the n samples to finish (first-finish search)"),
    Setting("groups", True, None, lo=1, doc="independent subtrees `top` keeps its k best of (DVTS)"),
    # The strategy library's filter: DeepConf keeps the most confident share, then votes.
    Setting("keep", False, None, lo=0, hi=1, lo_open=True,
            doc="the share of candidates top keeps (at least one)"),
]}
SAMPLING_KEYS = ("n", "temperature", "top_p", "top_k", "max_tokens", "stop", "seed", "first")
AUTO_SETTINGS = tuple(name for name, s in SETTINGS.items() if s.auto_ok)


def auto_temperature(n: int) -> float:
    """What `temperature=auto` becomes: the default when sampling several, greedy for one."""
    return SETTINGS["temperature"].default if n > 1 else 0.0


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one request: the engine contract's settings."""

    n: int = SETTINGS["n"].default
    temperature: float = SETTINGS["temperature"].default  # 0 means greedy
    top_p: float = SETTINGS["top_p"].default
    top_k: int = SETTINGS["top_k"].default  # 0 means no top-k cut
    max_tokens: int = SETTINGS["max_tokens"].default
    stop: tuple[str, ...] = ()
    seed: int | None = None  # sample i of a request uses seed + i
    ignore_eos: bool = False  # forced length, for benchmarks
    # First-finish search: keep the `first` samples that finish first (fewest
    # tokens; cut by max_tokens counts as not finished); None keeps all n.
    first: int | None = None

    def problems(self) -> list[str]:
        out = []
        for name in ("n", "temperature", "top_p", "top_k", "max_tokens", "seed", "first"):
            value = getattr(self, name)
            problem = SETTINGS[name].problem(value, in_request=True)
            if problem:
                out.append(f"{name} {problem} (got {value})")
        if self.first is not None and self.n and self.first > self.n:
            out.append(f"first must be at most n (got first={self.first}, n={self.n})")
        return out

    def check(self) -> None:
        """UserError listing every out-of-range setting."""
        problems = self.problems()
        if problems:
            raise UserError("invalid sampling settings: " + "; ".join(problems))

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], **overrides: Any) -> "SamplingParams":
        """Settings from an op's fixed attributes; unset ones take the defaults."""
        values = {**{k: attrs[k] for k in SAMPLING_KEYS if attrs.get(k) is not None}, **overrides}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key == "stop":
                kwargs["stop"] = tuple(value or ())
            elif key == "seed":
                kwargs["seed"] = None if value is None else int(value)
            elif key in SETTINGS:
                kwargs[key] = int(value) if SETTINGS[key].integer else float(value)
            elif key == "ignore_eos":
                kwargs[key] = bool(value)
        return cls(**kwargs)

    def replace(self, **changes: Any) -> "SamplingParams":
        return dataclasses.replace(self, **changes)


def check_sampling(params: SamplingParams) -> None:
    """UserError listing every out-of-range sampling setting (the engines' check)."""
    params.check()
