"""The public Python API: compile, run and evaluate strategies.

    import ttsc
    compiled = ttsc.compile("examples/self_consistency.tts")
    print(compiled.plan.to_json())
    result = ttsc.run("examples/self_consistency.tts", {"question": "What is 3 + 4?"})
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ttsc.common import paths
from ttsc.common.errors import UserError
from ttsc.common.specs import check_model_spec
from ttsc.compiler.pipeline import Compiled, compile_file, compile_source
from ttsc.compiler.plan import Plan
from ttsc.runtime.cache import CachedEngine, CallCache
from ttsc.runtime.engines.base import Engine
from ttsc.runtime.engines.registry import make_engine
from ttsc.runtime.eval import EvalSummary, evaluate as _evaluate, load_dataset
from ttsc.runtime.executor import Executor, RunResult

__all__ = ["compile", "compile_source", "make_engines", "run", "evaluate", "Compiled", "Plan"]


def compile(path: str | Path, strategy: str | None = None) -> Compiled:  # noqa: A001 - public name
    """Compile one strategy of a .tts file (the last one unless named)."""
    return compile_file(path, strategy)


def apply_model_overrides(plan: Plan, overrides: dict[str, str]) -> None:
    """Point model names at other specs (`--model policy=hf:ORG/NAME`)."""
    for name, spec in overrides.items():
        if name not in plan.models:
            raise UserError(f"--model {name}=...: the file defines no model `{name}`",
                            hint=f"models: {', '.join(plan.models) or 'none'}")
        problem = check_model_spec(spec)
        if problem:
            raise UserError(f"--model {name}={spec}: {problem}")
        plan.models[name] = spec


def open_cache(path: str | Path | None = "default") -> CallCache | None:
    """The call cache at `path` ("default": under the ttsc cache directory;
    None: no cache). Problems with the file are UserErrors, found before any
    model loads."""
    if path == "default":
        path = paths.default_call_cache()
    return None if path is None else CallCache(path)


def make_engines(plan: Plan, engine: str = "auto", device: str | None = None,
                 cache: CallCache | None = None) -> dict[str, Engine]:
    """One engine per distinct model spec the plan uses, shared by aliases;
    behind the call cache when one is given."""
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


def run(path: str | Path, inputs: dict[str, Any], *, strategy: str | None = None,
        models: dict[str, str] | None = None, seed: int = 0, engine: str = "auto",
        cache: str | Path | None = None) -> RunResult:
    """Run one input; `cache` is a call-cache path ("default" for the usual one)."""
    compiled = compile(path, strategy)
    apply_model_overrides(compiled.plan, models or {})
    engines = make_engines(compiled.plan, engine, cache=open_cache(cache))
    return Executor(compiled.plan, engines, seed=seed).run([inputs])


def evaluate(path: str | Path, data: str | Path, *, strategy: str | None = None,
             models: dict[str, str] | None = None, scorer: str = "number", limit: int | None = None,
             seed: int = 0, out: str | Path | None = None, engine: str = "auto",
             cache: str | Path | None = None) -> EvalSummary:
    """Evaluate over a JSONL data set; `cache` as for `run`."""
    compiled = compile(path, strategy)
    apply_model_overrides(compiled.plan, models or {})
    rows = load_dataset(data, compiled.plan.params, limit=limit)
    engines = make_engines(compiled.plan, engine, cache=open_cache(cache))
    return _evaluate(compiled.plan, engines, rows, scorer=scorer, seed=seed, out=out)
