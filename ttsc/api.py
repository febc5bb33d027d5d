"""The public Python API: compile, run and evaluate strategies.

    import ttsc
    compiled = ttsc.compile("examples/self_consistency.tts")
    print(compiled.plan.to_json())
    result = ttsc.run("examples/self_consistency.tts", {"question": "What is 3 + 4?"})
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ttsc.compiler.pipeline import Compiled, compile_file, compile_source
from ttsc.compiler.plan import Plan
from ttsc.runtime.engines.setup import capabilities_of, make_engines, open_cache
from ttsc.runtime.eval import EvalSummary, evaluate as _evaluate, load_dataset, scorer_for
from ttsc.runtime.executor import Executor, RunResult

__all__ = ["compile", "compile_source", "make_engines", "run", "evaluate", "Compiled", "Plan"]


def compile(path: str | Path, strategy: str | None = None) -> Compiled:  # noqa: A001 - public name
    """Compile one strategy of a .tts file (the last one unless named)."""
    return compile_file(path, strategy)


def run(path: str | Path, inputs: dict[str, Any], *, strategy: str | None = None,
        models: dict[str, str] | None = None, seed: int = 0, engine: str = "auto",
        cache: str | Path | None = None) -> RunResult:
    """Run one input; `cache` is a call-cache path ("default" for the usual one)."""
    compiled = compile_file(path, strategy, models=models, capabilities=capabilities_of(engine))
    engines = make_engines(compiled.plan, engine, cache=open_cache(cache))
    return Executor(compiled.plan, engines, seed=seed).run([inputs])


def evaluate(path: str | Path, data: str | Path, *, strategy: str | None = None,
             models: dict[str, str] | None = None, scorer: str | None = None, limit: int | None = None,
             seed: int = 0, out: str | Path | None = None, engine: str = "auto",
             cache: str | Path | None = None) -> EvalSummary:
    """Evaluate over a data set: a JSONL file, or a `reasoning-gym:TASK?...`
    spec; `scorer` None is the data's own (else number); `cache` as for `run`."""
    compiled = compile_file(path, strategy, models=models, capabilities=capabilities_of(engine))
    rows = load_dataset(data, compiled.plan.params, limit=limit)
    engines = make_engines(compiled.plan, engine, cache=open_cache(cache))
    return _evaluate(compiled.plan, engines, rows, scorer=scorer_for(rows, scorer), seed=seed,
                     out=out, data=rows.source)
