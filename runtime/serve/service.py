"""The strategies a server answers with, and how one request runs.

Every strategy of the served file is a model of the API. One engine serves
each distinct model spec, shared by every strategy that uses it, so that
concurrent requests, whatever strategy they ask for, join the same engine
batches: each request runs through `Executor.run_one` on its own worker
thread, and the engine batches the calls those threads make together.

A request's `n`, `temperature` and `max_tokens` override the plan through the
executor's per-input settings: `n` sets every sampling op's sample count,
`temperature` and `max_tokens` every op that samples text; judges (verify,
score) and the ranking op keep theirs. A setting no op of the strategy takes
is reported as ignored.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from ttsc.compiler.plan import Plan, Region
from ttsc.runtime.cache import CachedEngine, CallCache
from ttsc.runtime.engines.base import Engine, Usage
from ttsc.runtime.engines.registry import make_engine
from ttsc.runtime.engines.setup import cache_identity
from ttsc.runtime.executor import Executor, InputResult

# Ops that sample text, and the overridable settings each takes.
SAMPLING_OPS = {"generate": ("n", "temperature", "max_tokens"),
                "unit_tests": ("n", "temperature", "max_tokens"),
                "fuse": ("n", "temperature", "max_tokens"),
                "extend": ("n", "temperature", "max_tokens"),
                "critique": ("temperature", "max_tokens"),
                "refine": ("temperature", "max_tokens"),
                "debate": ("temperature", "max_tokens")}  # the strategy library's debate


def sampling_nodes(region: Region, path: str = "") -> list[tuple[str, str]]:
    """(node path, op) of every text-sampling node, with the paths the executor
    uses for per-input settings: loop bodies `STAGE/NODE`, their `until`
    regions `STAGE/until/NODE`."""
    out = [(path + nid, node.op) for nid, node in region.nodes.items() if node.op in SAMPLING_OPS]
    for stage in region.stages:
        if stage.kind == "loop":
            if stage.cond is not None:
                out += sampling_nodes(stage.cond, f"{path}{stage.id}/until/")
            if stage.body is not None:
                out += sampling_nodes(stage.body, f"{path}{stage.id}/")
    return out


def engines_for(plans: dict[str, Plan], engine: str = "auto", device: str | None = None,
                cache: CallCache | None = None) -> dict[str, dict[str, Engine]]:
    """Each plan's engines by model name, one engine per distinct spec across
    all plans. Each engine's capabilities are read at once, so that a server
    that is down or does not serve the model fails the start, not a request."""
    by_spec: dict[str, Engine] = {}
    out: dict[str, dict[str, Engine]] = {}
    for name, plan in plans.items():
        used = {s.model for s in plan.llm_stages()}
        out[name] = {}
        for model, spec in plan.models.items():
            if model not in used:
                continue
            if spec not in by_spec:
                inner = make_engine(spec, engine=engine, device=device)
                inner.capabilities  # noqa: B018 - probes a remote server
                by_spec[spec] = (inner if cache is None
                                 else CachedEngine(inner, cache, cache_identity(spec, inner)))
            out[name][model] = by_spec[spec]
    return out


@dataclass
class Answer:
    text: str
    usage: Usage  # every model's usage for this request, added up
    result: InputResult
    ran: dict[str, Any]  # what ran: strategy, settings, seed, seconds, per-model usage


def answer_text(output: Any) -> str:
    """The strategy's output as the completion's text."""
    if isinstance(output, str):
        return output
    if hasattr(output, "text"):
        return output.text
    if isinstance(output, list):
        return "\n\n".join(answer_text(o) for o in output)
    if isinstance(output, float) and output.is_integer():
        return str(int(output))
    return "" if output is None else str(output)


class Service:
    def __init__(self, plans: dict[str, Plan], engines: dict[str, dict[str, Engine]]):
        """`plans`: strategy name -> plan; `engines`: strategy name -> that plan's
        engines by model name (engines of one spec shared across plans)."""
        self.plans = plans
        self.engines = engines
        self.nodes = {name: sampling_nodes(plan.region) for name, plan in plans.items()}

    @property
    def strategies(self) -> dict[str, list[str]]:
        """Strategy name -> its parameters (the first one takes the user's text)."""
        return {name: list(plan.params) for name, plan in self.plans.items()}

    def run(self, strategy: str, inputs: dict[str, str], overrides: dict[str, Any],
            seed: int | None = None) -> Answer:
        """Run one request to its end (blocking; thread-safe)."""
        plan = self.plans[strategy]
        settings: dict[str, dict[str, Any]] = {}
        used: set[str] = set()
        for node_path, op in self.nodes[strategy]:
            taken = {k: v for k, v in overrides.items() if k in SAMPLING_OPS[op]}
            if taken:
                settings[node_path] = taken
                used.update(taken)
        seed = secrets.randbelow(2 ** 31) if seed is None else seed
        result = Executor(plan, self.engines[strategy], seed=seed).run_one(inputs, settings=settings)
        ran = {"strategy": strategy, "seed": seed,
               "overrides": {k: v for k, v in overrides.items() if k in used},
               "ignored": sorted(k for k in overrides if k not in used),
               "seconds": round(result.seconds, 3),
               "usage_by_model": {m: u.as_dict() for m, u in result.usage.items()}}
        return Answer(answer_text(result.output), result.total_usage, result, ran)

    def close(self) -> None:
        seen: set[int] = set()
        for engines in self.engines.values():
            for engine in engines.values():
                if id(engine) not in seen:
                    seen.add(id(engine))
                    engine.close()
