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

import contextlib
import dataclasses
import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from ttsc.common.errors import UserError
from ttsc.runtime.engines.base import (Completion, ContinuationOutput, ContinuationRequest, Engine,
                                       NextTokenRequest, Prompt, SampleOutput, SampleRequest,
                                       SamplingParams, ScoreOutput, Usage)

KEY_VERSION = 2  # bump when the meaning of a cached value changes


def call_key(model: str, kind: str, request: Any) -> str:
    """sha256 hex digest naming one call: model spec, kind and request fields."""
    fields = dataclasses.asdict(request)
    if fields.get("params", {}).get("first", 0) is None:
        del fields["params"]["first"]  # keys made before first-finish search existed stay valid
    payload = {"v": KEY_VERSION, "model": model, "kind": kind, "request": fields}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


APPLICATION_ID = 0x74747363  # "ttsc": marks an SQLite file as a ttsc call cache
MEMORY = ":memory:"


class CallCache:
    """Key -> JSON value store in one SQLite file (WAL mode; threads of one process may share it).

    Any problem with the file (not SQLite, another program's database,
    damaged, locked by another process for longer than `timeout`) is a
    UserError naming the file and what to do, never a traceback and never a
    wrong answer. `CallCache(MEMORY)` keeps the cache in memory.
    """

    def __init__(self, path: str | Path, timeout: float = 30.0):
        self.path = Path(path) if str(path) != MEMORY else None
        self._lock = threading.Lock()
        where = str(self.path) if self.path else MEMORY
        with self._guard():
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(where, check_same_thread=False, timeout=timeout)
            app_id = self._db.execute("PRAGMA application_id").fetchone()[0]
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if app_id != APPLICATION_ID and tables:
                raise UserError(f"{where} is an SQLite database but not a ttsc call cache",
                                hint="point --cache at another file, or run with --no-cache")
            if self.path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(f"PRAGMA application_id={APPLICATION_ID}")
            self._db.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._db.commit()

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """SQLite's errors as UserErrors that name the file."""
        try:
            yield
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise UserError(f"the call cache {self.path} is locked by another process",
                                hint="wait for it, use another --cache file, or --no-cache") from None
            raise UserError(f"cannot use the call cache {self.path}: {e}",
                            hint="delete the file (it is only a cache), or run with --no-cache") from None
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.path} is not a usable ttsc call cache ({e})",
                            hint="delete the file (it is only a cache), or run with --no-cache") from None

    def get(self, key: str) -> Any | None:
        return self.get_many([key]).get(key)

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The values present for `keys` (absent keys are left out)."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, Any] = {}
        with self._lock, self._guard():
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
        with self._lock, self._guard(), self._db:
            self._db.executemany("INSERT OR REPLACE INTO calls (key, value) VALUES (?, ?)", rows)

    def __len__(self) -> int:
        with self._lock, self._guard():
            return self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _sample_key(model: str, prompt: Prompt, params: SamplingParams, index: int) -> str:
    assert params.seed is not None
    one = dataclasses.replace(params, n=1, seed=params.seed + index)
    return call_key(model, "sample", SampleRequest(prompt, one))


def _split_usage(output: SampleOutput) -> list[Usage]:
    """One request's usage shared out over its samples, so that any subset of
    them replayed from the cache adds up to what computing them cost, and all
    of them to the request's usage: the call goes to the first sample, the
    prompt computation to the first samples (each at most its own prompt, as
    an engine computing every sample's prompt in part reports), generated
    tokens to each by its length."""
    n = len(output.completions)
    u = output.usage
    lengths = [len(c.token_ids) or len(c.logprobs) for c in output.completions]
    if sum(lengths) != u.generated_tokens:  # an engine that reports no tokens
        lengths = [u.generated_tokens // n + (1 if j < u.generated_tokens % n else 0)
                   for j in range(n)]
    per = []
    left = u.prompt_tokens_computed
    for j in range(n):
        prompt = u.prompt_tokens // n + (1 if j < u.prompt_tokens % n else 0)
        computed = left if j == n - 1 else min(left, prompt)
        left -= computed
        per.append(Usage(calls=u.calls if j == 0 else 0, prompt_tokens=prompt,
                         prompt_tokens_computed=computed,
                         prompt_tokens_reused=max(0, prompt - computed),
                         generated_tokens=lengths[j]))
    return per


class CachedEngine(Engine):
    """Any engine behind a CallCache; only cache misses reach the inner engine, in one batch.

    A result served from the cache carries the usage recorded when it was
    computed (so figures repeat exactly) and counts as a cache hit; the rest
    count as misses.
    """

    def __init__(self, inner: Engine, cache: CallCache, model: str):
        self.inner = inner
        self.cache = cache
        self.model = model  # the model spec, part of every key
        self.name = f"cached({inner.name})"
        self.capabilities = inner.capabilities
        self.hits = 0  # running totals, for a glance; per-call figures are in each usage
        self.misses = 0
        self._count_lock = threading.Lock()

    def _count(self, hits: int, misses: int) -> None:
        with self._count_lock:
            self.hits += hits
            self.misses += misses

    # --- sampling -----------------------------------------------------------

    def sample(self, requests: Sequence[SampleRequest]) -> list[SampleOutput]:
        requests = list(requests)
        if any(r.params.first is not None for r in requests):
            return self._sample_first(requests)
        return self._sample(requests, lambda _, batch: self.inner.sample(batch))

    def _sample_first(self, requests: list[SampleRequest]) -> list[SampleOutput]:
        """First-finish requests (params.first=k) are not cached: which k of
        the n samples are kept, and what stopping the others saved, depends on
        the whole request, while the cache keeps one entry per sample. They go
        straight to the inner engine."""
        plain = [i for i, r in enumerate(requests) if r.params.first is None]
        first = [i for i, r in enumerate(requests) if r.params.first is not None]
        out: list[SampleOutput | None] = [None] * len(requests)
        if plain:
            for i, o in zip(plain, self._sample([requests[i] for i in plain],
                                                lambda _, batch: self.inner.sample(batch))):
                out[i] = o
        for i, o in zip(first, self.inner.sample([requests[i] for i in first])):
            out[i] = o
        return out  # type: ignore[return-value]

    def extend(self, candidates: Sequence[tuple[Prompt, str]],
               params: SamplingParams) -> list[SampleOutput]:
        requests = [SampleRequest(p.continued(t), params) for p, t in candidates]

        def run_inner(indices: list[int], batch: list[SampleRequest]) -> list[SampleOutput]:
            # The inner engine may extend faster than it samples (it can keep
            # the candidate's cache); hand it candidates when settings allow.
            if all(r.params == params for r in batch):
                return self.inner.extend([candidates[i] for i in indices], params)
            return self.inner.sample(batch)

        return self._sample(requests, run_inner)

    def _sample(self, requests: list[SampleRequest],
                run_inner: Callable[[list[int], list[SampleRequest]], list[SampleOutput]],
                ) -> list[SampleOutput]:
        """Serve what the cache holds; run the gaps through `run_inner(indices, requests)`."""
        keys = [[_sample_key(self.model, r.prompt, r.params, i) for i in range(r.params.n)]
                if r.params.seed is not None else [] for r in requests]
        found = self.cache.get_many(k for ks in keys for k in ks)
        rows: list[list[tuple[Completion, Usage] | None]] = []
        missing: list[tuple[int, int, SampleRequest]] = []  # (request, first sample, request to run)
        for ri, (request, ks) in enumerate(zip(requests, keys)):
            row: list[tuple[Completion, Usage] | None] = [None] * request.params.n
            for i, key in enumerate(ks):
                if key in found:
                    row[i] = (Completion(**found[key]["completion"]),
                              Usage.from_dict(found[key]["usage"]))
            gaps = [i for i, c in enumerate(row) if c is None]
            if gaps:
                # One contiguous run of seeds covers every gap (usually all of
                # them, or the tail when n grew since the last run).
                lo, hi = gaps[0], gaps[-1]
                params = request.params
                if (lo, hi) != (0, params.n - 1):
                    params = dataclasses.replace(params, n=hi - lo + 1, seed=params.seed + lo)
                missing.append((ri, lo, SampleRequest(request.prompt, params)))
            rows.append(row)
        hits = [sum(c is not None for c in row) for row in rows]
        if missing:
            try:
                outputs = run_inner([m[0] for m in missing], [m[2] for m in missing])
            except Exception as exc:
                # An engine that failed part of a batch (a server that died) hands
                # back what did finish: keep it, so a rerun computes only the rest.
                finished = getattr(exc, "finished", None) or {}
                self._store([(missing[i], o) for i, o in sorted(finished.items())])
                raise
            self._store(list(zip(missing, outputs)), rows)
        self._count(sum(hits), sum(len(row) for row in rows) - sum(hits))
        results = []
        for row, hit in zip(rows, hits):
            usage = Usage(cache_hits=hit, cache_misses=len(row) - hit)
            for _, u in row:  # type: ignore[misc]
                usage = usage + u
            results.append(SampleOutput([c for c, _ in row], usage))  # type: ignore[misc]
        return results

    def _store(self, done: list[tuple[tuple[int, int, SampleRequest], SampleOutput]],
               rows: list[list[tuple[Completion, Usage] | None]] | None = None) -> None:
        """Put fresh samples in the cache (and in `rows`, when given)."""
        fresh: dict[str, Any] = {}
        for (ri, lo, run), output in done:
            for offset, (completion, usage) in enumerate(zip(output.completions,
                                                             _split_usage(output))):
                if rows is not None:
                    rows[ri][lo + offset] = (completion, usage)
                if run.params.seed is not None:
                    key = _sample_key(self.model, run.prompt, run.params, offset)
                    fresh[key] = {"completion": dataclasses.asdict(completion),
                                  "usage": usage.as_dict()}
        if fresh:
            self.cache.put_many(fresh)

    # --- scoring ------------------------------------------------------------

    def score_next(self, requests: Sequence[NextTokenRequest]) -> list[ScoreOutput]:
        return [ScoreOutput(v, u) for v, u in self._scored(
            "next", list(requests), self.inner.score_next, lambda o: o.logprobs)]

    def score_continuations(self, requests: Sequence[ContinuationRequest]) -> list[ContinuationOutput]:
        return [ContinuationOutput(v, u) for v, u in self._scored(
            "continuation", list(requests), self.inner.score_continuations, lambda o: o.logprob)]

    def _scored(self, kind: str, requests: list[Any], run_inner: Callable[[list[Any]], list[Any]],
                value_of: Callable[[Any], Any]) -> list[tuple[Any, Usage]]:
        keys = [call_key(self.model, kind, r) for r in requests]
        found = self.cache.get_many(keys)
        # A repeated request in one batch is computed once.
        todo: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key not in found:
                todo.setdefault(key, i)
        fresh: dict[str, Any] = {}
        if todo:
            outputs = run_inner([requests[i] for i in todo.values()])
            fresh = {key: {"value": value_of(o), "usage": o.usage.as_dict()}
                     for key, o in zip(todo, outputs)}
            self.cache.put_many(fresh)
        results = []
        for key in keys:
            entry = fresh.get(key) or found[key]
            hit = key not in fresh
            usage = Usage.from_dict(entry["usage"]) + Usage(cache_hits=int(hit), cache_misses=int(not hit))
            fresh.pop(key, None)  # a repeat in this batch is a hit on the first
            found.setdefault(key, entry)
            results.append((entry["value"], usage))
        self._count(sum(u.cache_hits for _, u in results), sum(u.cache_misses for _, u in results))
        return results

    # --- the rest of the contract -------------------------------------------

    def tokenize(self, prompt: Prompt) -> list[int]:
        return self.inner.tokenize(prompt)

    def close(self) -> None:
        self.inner.close()
