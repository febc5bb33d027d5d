"""The engines a plan needs: one per distinct model spec (aliases share it),
behind the call cache when there is one; what they can do, for the compiler."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ttsc.common import paths
from ttsc.common.capabilities import Capabilities
from ttsc.compiler.plan import Plan
from ttsc.runtime.cache import CachedEngine, CallCache
from ttsc.runtime.engines.base import Engine
from ttsc.runtime.engines.registry import engine_capabilities, engine_kind, make_engine

DEFAULT = "default"


def capabilities_of(engine: str = "auto", probe: bool = False) -> Callable[[str], Capabilities]:
    """What `compile_file(..., capabilities=)` asks: a spec's engine's capabilities
    under `--engine`, from the registry's declarations (nothing loads). With
    `probe`, a server (`openai:` specs) is asked itself, one short request, so
    that an op it cannot serve is an error at compile time, not mid-run."""

    def of(spec: str) -> Capabilities:
        if probe and engine_kind(spec, engine) == "openai":
            server = make_engine(spec, engine=engine)
            try:
                return server.capabilities
            finally:
                server.close()
        return engine_capabilities(spec, engine)

    return of


def open_cache(path: str | Path | None = DEFAULT) -> CallCache | None:
    """The call cache at `path` ("default": calls.db under the ttsc cache
    directory; None: no cache). Problems with the file are UserErrors, found
    before any model loads."""
    if path == DEFAULT:
        path = paths.default_call_cache()
    return None if path is None else CallCache(path)


def make_engines(plan: Plan, engine: str = "auto", device: str | None = None,
                 cache: CallCache | None = None) -> dict[str, Engine]:
    """One engine per distinct model spec the plan uses, shared by aliases."""
    by_spec: dict[str, Engine] = {}
    engines: dict[str, Engine] = {}
    used = {s.model for s in plan.llm_stages()}
    for name, spec in plan.models.items():
        if name not in used:
            continue
        if spec not in by_spec:
            inner = make_engine(spec, engine=engine, device=device)
            by_spec[spec] = inner if cache is None else CachedEngine(inner, cache, cache_identity(spec, inner))
        engines[name] = by_spec[spec]
    return engines


def cache_identity(spec: str, engine: Engine) -> str:
    """What a cached call's key names the model by: the spec, and the engine and
    dtype that computed it (another engine or dtype may sample other tokens)."""
    dtype = str(getattr(engine, "dtype", "")).replace("torch.", "")
    return f"{spec}|{engine.name}|{dtype}"


def close_engines(engines: dict[str, Engine]) -> None:
    for engine in {id(e): e for e in engines.values()}.values():
        engine.close()
