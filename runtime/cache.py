"""A SQLite call cache: the same call with the same seed is answered from disk.

This makes evaluation and search repeatable and resumable: an interrupted run
restarted with the same cache re-runs only the calls it had not finished, and a
search trial that revisits a setting costs nothing.

Keys are sha256 digests of (model spec, kind of call, the request's dataclass
fields). Sampling is cached per sample: sample i of a request with seed s is
the sample of seed s + i (the engine contract), so a later request for more
samples reuses the ones already drawn. A request without a seed is random by
intent and is never cached. Scores (score_next, score_continuations) are
deterministic and always cached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ttsc.runtime.engines.base import (Completion, ContinuationRequest, Engine, NextTokenRequest,
                                       Prompt, SampleRequest, SamplingParams, Usage)

KEY_VERSION = 1  # bump when the meaning of a cached value changes


def call_key(model: str, kind: str, request: Any) -> str:
    """sha256 hex digest naming one call: model spec, kind and request fields."""
    payload = {"v": KEY_VERSION, "model": model, "kind": kind,
               "request": dataclasses.asdict(request)}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class CallCache:
    """Key -> JSON value store in one SQLite file (WAL mode; threads of one process may share it)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.commit()

    def get(self, key: str) -> Any | None:
        return self.get_many([key]).get(key)

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The values present for `keys` (absent keys are left out)."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, Any] = {}
        with self._lock:
            for start in range(0, len(keys), 500):  # SQLite caps bound parameters
                chunk = keys[start:start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT key, value FROM calls WHERE key IN ({marks})", chunk).fetchall()
                found.update((key, json.loads(value)) for key, value in rows)
        return found

    def put(self, key: str, value: Any) -> None:
        self.put_many({key: value})

    def put_many(self, items: dict[str, Any]) -> None:
        """Store all items in one transaction."""
        rows = [(key, json.dumps(value)) for key, value in items.items()]
        with self._lock, self._db:
            self._db.executemany("INSERT OR REPLACE INTO calls (key, value) VALUES (?, ?)", rows)

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _sample_key(model: str, prompt: Prompt, params: SamplingParams, index: int) -> str:
    assert params.seed is not None
    one = dataclasses.replace(params, n=1, seed=params.seed + index)
    return call_key(model, "sample", SampleRequest(prompt, one))


def _to_json(completion: Completion) -> dict[str, Any]:
    return dataclasses.asdict(completion)


def _from_json(value: dict[str, Any]) -> Completion:
    return Completion(**value)


class CachedEngine(Engine):
    """Any engine behind a CallCache; only cache misses reach the inner engine, in one batch.

    `usage` is the inner engine's (work actually done); `hits` counts samples and
    scores served from the cache, `misses` those computed.
    """

    def __init__(self, inner: Engine, cache: CallCache, model: str):
        self.inner = inner
        self.cache = cache
        self.model = model  # the model spec, part of every key
        self.name = f"cached({inner.name})"
        self.hits = 0
        self.misses = 0

    # --- sampling -----------------------------------------------------------

    def sample(self, requests: Sequence[SampleRequest]) -> list[list[Completion]]:
        return self._sample(list(requests), lambda _, batch: self.inner.sample(batch))

    def extend(self, candidates: Sequence[tuple[Prompt, str]],
               params: SamplingParams) -> list[list[Completion]]:
        requests = [SampleRequest(p.continued(t), params) for p, t in candidates]

        def run_inner(indices: list[int], batch: list[SampleRequest]) -> list[list[Completion]]:
            # The inner engine may extend faster than it samples (it can keep
            # the candidate's cache); hand it candidates when settings allow.
            if all(r.params == params for r in batch):
                return self.inner.extend([candidates[i] for i in indices], params)
            return self.inner.sample(batch)

        return self._sample(requests, run_inner)

    def _sample(self, requests: list[SampleRequest],
                run_inner: Callable[[list[int], list[SampleRequest]], list[list[Completion]]],
                ) -> list[list[Completion]]:
        """Serve what the cache holds; run the gaps through `run_inner(indices, requests)`."""
        keys = [[_sample_key(self.model, r.prompt, r.params, i) for i in range(r.params.n)]
                if r.params.seed is not None else [] for r in requests]
        found = self.cache.get_many(k for ks in keys for k in ks)
        results: list[list[Completion | None]] = []
        missing: list[tuple[int, int, SampleRequest]] = []  # (request, first sample, request to run)
        for ri, (request, ks) in enumerate(zip(requests, keys)):
            row: list[Completion | None] = [None] * request.params.n
            if ks:
                for i, key in enumerate(ks):
                    if key in found:
                        row[i] = _from_json(found[key])
            gaps = [i for i, c in enumerate(row) if c is None]
            self.hits += request.params.n - len(gaps)
            if gaps:
                # One contiguous run of seeds covers every gap (usually all of
                # them, or the tail when n grew since the last run).
                lo, hi = gaps[0], gaps[-1]
                params = request.params
                if (lo, hi) != (0, params.n - 1):
                    params = dataclasses.replace(params, n=hi - lo + 1, seed=params.seed + lo)
                missing.append((ri, lo, SampleRequest(request.prompt, params)))
            results.append(row)
        if missing:
            outputs = run_inner([m[0] for m in missing], [m[2] for m in missing])
            fresh: dict[str, Any] = {}
            for (ri, lo, run), completions in zip(missing, outputs):
                self.misses += len(completions)
                for offset, completion in enumerate(completions):
                    results[ri][lo + offset] = completion
                    if run.params.seed is not None:
                        key = _sample_key(self.model, run.prompt, run.params, offset)
                        fresh[key] = _to_json(completion)
            if fresh:
                self.cache.put_many(fresh)
        return [list(row) for row in results]  # type: ignore[arg-type]

    # --- scoring ------------------------------------------------------------

    def score_next(self, requests: Sequence[NextTokenRequest]) -> list[list[float]]:
        return self._scored("next", list(requests), self.inner.score_next)

    def score_continuations(self, requests: Sequence[ContinuationRequest]) -> list[float]:
        return self._scored("continuation", list(requests), self.inner.score_continuations)

    def _scored(self, kind: str, requests: list[Any], run_inner: Callable[[list[Any]], list[Any]]
                ) -> list[Any]:
        keys = [call_key(self.model, kind, r) for r in requests]
        found = self.cache.get_many(keys)
        # A repeated request in one batch is computed once.
        todo: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key not in found:
                todo.setdefault(key, i)
        self.hits += len(requests) - len(todo)
        self.misses += len(todo)
        if todo:
            outputs = run_inner([requests[i] for i in todo.values()])
            fresh = dict(zip(todo, outputs))
            self.cache.put_many(fresh)
            found.update(fresh)
        return [found[key] for key in keys]

    # --- the rest of the contract -------------------------------------------

    def tokenize(self, prompt: Prompt) -> list[int]:
        return self.inner.tokenize(prompt)

    @property
    def usage(self) -> Usage:
        return self.inner.usage

    def close(self) -> None:
        self.inner.close()
