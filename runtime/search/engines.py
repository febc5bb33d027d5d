"""One engine per model spec for a whole search, behind one call cache.

Trials compile to different plans, but a plan's model names point at specs,
and every trial that uses a spec calls the same engine: the model loads once,
trials running side by side join the same engine batches, and every call
goes through the cache (a repeated configuration costs no model calls).
"""

from __future__ import annotations

import threading

from ttsc.compiler.plan import Plan
from ttsc.runtime.cache import CachedEngine, CallCache
from ttsc.runtime.engines.base import Engine
from ttsc.runtime.engines.registry import make_engine
from ttsc.runtime.engines.setup import cache_identity


class EnginePool:
    def __init__(self, cache: CallCache, engine: str = "auto", device: str | None = None):
        self.cache = cache
        self.engine = engine
        self.device = device
        self._by_spec: dict[str, Engine] = {}
        self._lock = threading.Lock()

    def engines_for(self, plan: Plan) -> dict[str, Engine]:
        """The engines of the models `plan` calls, by model name."""
        used = {s.model for s in plan.llm_stages()}
        out: dict[str, Engine] = {}
        for name, spec in plan.models.items():
            if name in used:
                out[name] = self._get(spec)
        return out

    def load(self, specs: list[str]) -> None:
        """Load these models now rather than at their first call."""
        for spec in specs:
            self._get(spec)

    def _get(self, spec: str) -> Engine:
        with self._lock:  # two trials asking at once load the model once
            if spec not in self._by_spec:
                inner = make_engine(spec, engine=self.engine, device=self.device)
                self._by_spec[spec] = CachedEngine(inner, self.cache, cache_identity(spec, inner))
            return self._by_spec[spec]

    def close(self) -> None:
        with self._lock:
            for engine in self._by_spec.values():
                engine.close()
            self._by_spec.clear()
