"""A pool of HTTP endpoints serving one model: the transport of the `openai` engine.

Every request goes to the endpoint with the fewest requests in flight, each
endpoint serving at most `max_concurrency` at once (the rest wait their turn).
A request that fails in a way worth repeating (429, a 5xx, a refused or broken
connection, a timeout) is retried with exponential backoff and jitter, on
another endpoint when the pool has one, honouring the server's `Retry-After`.
After the last retry it fails with a `ServerError` naming the endpoint.
Anything else (a 4xx, an answer that is not JSON) fails at once.

The pool runs its own asyncio event loop on a daemon thread, so synchronous
callers on any number of threads share one set of connections:
`pool.run(coroutine)` runs a coroutine there (one that awaits `pool.post`
for each request of a batch, say) and blocks until it returns.

The API key goes into one header of the HTTP client and nowhere else: not in
`repr`, not in an error, not in a log line.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import httpx

from ttsc.common.errors import UserError

log = logging.getLogger("ttsc.openai")

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 120.0  # seconds; a longer Retry-After fails instead of stalling the run


class ServerError(UserError):
    """A request the server (or the network to it) did not answer.

    `endpoint` is the URL that failed last; `status` its HTTP status, if any.
    `finished` holds, by position, the results of the same batch that did
    complete, so that a caller can keep them (the call cache stores them).
    """

    def __init__(self, endpoint: str, message: str, *, status: int | None = None,
                 hint: str | None = None):
        super().__init__(f"{endpoint}: {message}", hint=hint)
        self.endpoint = endpoint
        self.status = status
        self.finished: dict[int, Any] = {}


@dataclass(frozen=True)
class Reply:
    body: Any  # the decoded JSON
    endpoint: str  # the base URL that answered
    attempts: int  # HTTP calls it took (1 when the first one succeeded)


@dataclass
class _Endpoint:
    url: str  # base URL, e.g. http://host:8000/v1
    client: httpx.AsyncClient
    slots: asyncio.Semaphore
    in_flight: int = 0
    cool_until: float = 0.0  # monotonic time before which it is avoided after a failure


@dataclass
class PoolStats:
    """Counts over the pool's life (for benchmarks and logs)."""

    http_calls: int = 0
    retries: int = 0
    failures: int = 0  # requests that failed after their last retry
    by_endpoint: dict[str, int] = field(default_factory=dict)


def root_url(base: str) -> str:
    """The server root of an OpenAI base URL (`http://h:8000/v1` -> `http://h:8000`),
    where servers such as llama.cpp put their own routes (/tokenize, /health)."""
    base = base.rstrip("/")
    return base[:-3] if base.endswith("/v1") else base


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds the server asked to wait (`Retry-After`: seconds or an HTTP date)."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: half the step fixed, half random."""
    step = min(cap, base * 2 ** attempt)
    return step / 2 + random.uniform(0, step / 2)


def _error_text(response: httpx.Response) -> str:
    """The server's own error message when it sent one (OpenAI-style or plain)."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason_phrase
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message") or err)[:300]
        return str(err)[:300]
    return str(body)[:300]


class EndpointPool:
    def __init__(self, urls: Sequence[str], *, api_key: str | None = None, timeout: float = 600.0,
                 connect_timeout: float = 10.0, max_concurrency: int = 16, retries: int = 4,
                 backoff: float = 0.5, max_backoff: float = 30.0):
        if not urls:
            raise ValueError("an endpoint pool needs at least one URL")
        self.urls = [u.rstrip("/") for u in urls]
        self.max_concurrency = max_concurrency
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.stats = PoolStats()
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ttsc-openai-pool",
                                        daemon=True)
        self._thread.start()
        self._closed = False
        self._endpoints: list[_Endpoint] = self.run(self._open())

    def __repr__(self) -> str:
        return f"EndpointPool({self.urls}, max_concurrency={self.max_concurrency})"

    async def _open(self) -> list[_Endpoint]:
        limits = httpx.Limits(max_connections=self.max_concurrency,
                              max_keepalive_connections=self.max_concurrency)
        return [_Endpoint(url, httpx.AsyncClient(headers=self._headers, timeout=self._timeout,
                                                 limits=limits),
                          asyncio.Semaphore(self.max_concurrency)) for url in self.urls]

    # ------------------------------------------------------------ public calls

    def run(self, coro: Any) -> Any:
        """Run a coroutine on the pool's loop and wait for its result (any thread)."""
        if self._closed:
            coro.close()
            raise RuntimeError("the endpoint pool is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def post(self, path: str, body: Any, *, at_root: bool = False,
                   retries: int | None = None) -> Reply:
        """POST JSON to `path` under the base URL (or the server root); ServerError
        after the last retry."""
        return await self._request("POST", path, body, at_root, retries)

    async def get(self, path: str, *, at_root: bool = False, retries: int | None = None) -> Reply:
        return await self._request("GET", path, None, at_root, retries)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        async def shut() -> None:
            for ep in self._endpoints:
                await ep.client.aclose()
        try:
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    # ---------------------------------------------------------------- internals

    def _pick(self, avoid: _Endpoint | None) -> _Endpoint:
        """The endpoint with the fewest requests in flight, skipping cooling ones
        (and the one that just failed) when another is available."""
        now = time.monotonic()
        usable = [e for e in self._endpoints if e.cool_until <= now and e is not avoid]
        if not usable:
            usable = [e for e in self._endpoints if e is not avoid] or self._endpoints
            return min(usable, key=lambda e: e.cool_until)
        return min(usable, key=lambda e: e.in_flight)

    async def _request(self, method: str, path: str, body: Any, at_root: bool,
                       retries: int | None) -> Reply:
        retries = self.retries if retries is None else retries
        endpoint: _Endpoint | None = None
        problem = "no attempt made"
        for attempt in range(retries + 1):
            endpoint = self._pick(avoid=endpoint if len(self._endpoints) > 1 else None)
            url = (root_url(endpoint.url) if at_root else endpoint.url) + path
            wait: float | None = None
            endpoint.in_flight += 1
            try:
                async with endpoint.slots:
                    self.stats.http_calls += 1
                    self.stats.by_endpoint[endpoint.url] = self.stats.by_endpoint.get(endpoint.url, 0) + 1
                    response = await endpoint.client.request(method, url, json=body)
            except httpx.TimeoutException:
                problem = f"no answer within {self._timeout.read:g} s (timeout)"
            except httpx.TransportError as exc:
                problem = f"connection failed ({type(exc).__name__}: {exc or 'no detail'})"
            else:
                if response.status_code < 400:
                    try:
                        return Reply(response.json(), endpoint.url, attempt + 1)
                    except ValueError:
                        snippet = response.text.strip()[:80]
                        raise ServerError(endpoint.url, f"{method} {path} answered with something "
                                          f"that is not JSON ({snippet!r})",
                                          status=response.status_code,
                                          hint="is this URL an OpenAI-compatible API (it usually "
                                               "ends in /v1)?") from None
                message = f"HTTP {response.status_code}: {_error_text(response)}"
                if response.status_code not in RETRY_STATUS:
                    raise ServerError(endpoint.url, f"{method} {path} was refused: {message}",
                                      status=response.status_code)
                problem = message
                wait = retry_after(response.headers)
            finally:
                endpoint.in_flight -= 1
            if attempt == retries:
                break
            if wait is not None and wait > MAX_RETRY_AFTER:
                problem += f" (asked to retry after {wait:.0f} s, longer than {MAX_RETRY_AFTER:.0f} s)"
                break
            delay = wait if wait is not None else backoff_delay(attempt, self.backoff, self.max_backoff)
            endpoint.cool_until = time.monotonic() + delay
            self.stats.retries += 1
            log.warning("%s %s%s: %s; retry %d/%d in %.1f s", method, endpoint.url, path, problem,
                        attempt + 1, retries, delay)
            await asyncio.sleep(delay)
        self.stats.failures += 1
        assert endpoint is not None
        tried = "" if len(self._endpoints) == 1 else f" (pool of {len(self._endpoints)})"
        raise ServerError(endpoint.url, f"{method} {path} failed after {retries + 1} attempt(s)"
                          f"{tried}: {problem}",
                          hint="is the server running and reachable? see the log above for "
                               "each retry")

