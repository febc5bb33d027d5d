"""The HTTP side of `ttsc serve`: an OpenAI-compatible API on FastAPI + uvicorn.

    POST /v1/chat/completions   the last user message is the strategy's input
    POST /v1/completions        the prompt is
    GET  /v1/models             every strategy of the file is a model
    GET  /health                200 while serving

A request's strategy runs on a worker thread (`Service.run` blocks), so
concurrent requests run at once and their engine calls batch together. With
`stream: true` the answer comes as Server-Sent Events: the role at once,
comments to keep the connection alive while the strategy runs, the answer,
the end, and the usage when `stream_options.include_usage` asks for it.

Errors are the API's error objects: a bad request, an unknown model or a wrong
key is a 4xx; an engine that fails a request is a 5xx for that request alone
(502 when an upstream server failed), and the server keeps serving. Each
request logs one line (strategy, status, tokens, seconds) to `ttsc.serve`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
import time
from typing import Any, AsyncIterator, Awaitable, Callable

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ttsc.common.errors import UserError
from ttsc.runtime.engines.http_pool import ServerError
from ttsc.runtime.serve.protocol import (APIError, Endpoint, StrategyCall, chunk_object,
                                         completion_object, decode_body, new_id, parse_request, sse,
                                         usage_chunk)
from ttsc.runtime.serve.service import Answer, Service

log = logging.getLogger("ttsc.serve")
KEEPALIVE_SECONDS = 10.0  # an SSE comment this often while a streamed strategy runs
MAX_WORKERS = 256  # requests running at once (each holds a worker thread)


def engine_failure(exc: BaseException) -> APIError:
    """A request the engine (or the strategy) could not finish: a 5xx."""
    if isinstance(exc, ServerError):
        return APIError(502, f"the upstream model server failed: {exc.message}", kind="server_error",
                        code="upstream_error")
    if isinstance(exc, UserError):
        return APIError(400, exc.message)
    return APIError(500, f"the strategy failed: {type(exc).__name__}: {exc}", kind="server_error")


def build_app(service: Service, *, api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="ttsc serve", docs_url=None, redoc_url=None, openapi_url=None)
    limiter = anyio.CapacityLimiter(MAX_WORKERS)
    created = int(time.time())

    def error_response(err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError) -> JSONResponse:
        return error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = (f"no route {request.method} {request.url.path}" if exc.status_code == 404
                   else str(exc.detail))
        return error_response(APIError(exc.status_code, message))

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), api_key):
            raise APIError(401, "incorrect or missing API key (send `Authorization: Bearer KEY`)",
                           code="invalid_api_key")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": list(service.strategies)}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        check_key(request)
        return {"object": "list", "data": [_model(name, created) for name in service.strategies]}

    @app.get("/v1/models/{name}")
    async def model(name: str, request: Request) -> dict[str, Any]:
        check_key(request)
        if name not in service.strategies:
            raise APIError(404, f"the model `{name}` does not exist", param="model",
                           code="model_not_found")
        return _model(name, created)

    async def complete(endpoint: Endpoint, request: Request) -> Any:
        start = time.perf_counter()
        strategy = "-"
        try:
            check_key(request)
            call = parse_request(endpoint, decode_body(await request.body()), service.strategies)
            strategy = call.strategy
            run = lambda: service.run(call.strategy, call.inputs, call.overrides, call.seed)  # noqa: E731
            if call.stream:
                return StreamingResponse(_stream(call, run, limiter, start, request.url.path),
                                         media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache"})
            try:
                answer = await anyio.to_thread.run_sync(run, limiter=limiter)
            except Exception as exc:  # this request fails; the server keeps serving
                raise engine_failure(exc) from exc
        except APIError as err:
            _log(request, strategy, err.status, None, start, err.message)
            return error_response(err)
        _log(request, strategy, 200, answer, start)
        return completion_object(call, new_id(endpoint), answer.text, answer.usage, answer.ran)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        return await complete("chat", request)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await complete("completions", request)

    return app


def _model(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "ttsc"}


async def _stream(call: StrategyCall, run: Callable[[], Answer], limiter: anyio.CapacityLimiter,
                  start: float, path: str) -> AsyncIterator[bytes]:
    """The events of a streamed answer. The strategy answers at its end, so the
    role goes first, comments keep the connection open meanwhile, and the
    answer follows in one content chunk."""
    rid = new_id(call.endpoint)
    if call.endpoint == "chat":
        yield sse(chunk_object(call, rid, role=True))
    task: Awaitable[Answer] = asyncio.ensure_future(anyio.to_thread.run_sync(run, limiter=limiter))
    while True:
        try:
            answer = await asyncio.wait_for(asyncio.shield(task), KEEPALIVE_SECONDS)
            break
        except asyncio.TimeoutError:
            yield b": running\n\n"
        except Exception as exc:  # the request fails after its headers went out
            err = engine_failure(exc)
            log.info("POST %s (stream) strategy=%s status=%d error=%s seconds=%.2f", path,
                     call.strategy, err.status, err.message, time.perf_counter() - start)
            yield sse(err.body())
            return
    yield sse(chunk_object(call, rid, content=answer.text))
    yield sse(chunk_object(call, rid, finish=True))
    if call.include_usage:
        yield sse(usage_chunk(call, rid, answer.usage, answer.ran))
    yield sse("[DONE]")
    u = answer.usage
    log.info("POST %s (stream) strategy=%s status=200 tokens=%d (prompt %d, cached %d, "
             "generated %d) seconds=%.2f", path, call.strategy, u.prompt_tokens + u.generated_tokens,
             u.prompt_tokens,
             u.prompt_tokens_reused, u.generated_tokens, time.perf_counter() - start)


def _log(request: Request, strategy: str, status: int, answer: Answer | None, start: float,
         error: str | None = None) -> None:
    seconds = time.perf_counter() - start
    if answer is None:
        log.info("%s %s strategy=%s status=%d error=%s seconds=%.2f", request.method,
                 request.url.path, strategy, status, error, seconds)
        return
    u = answer.usage
    log.info("%s %s strategy=%s status=%d tokens=%d (prompt %d, cached %d, generated %d) "
             "seconds=%.2f", request.method, request.url.path, strategy, status,
             u.prompt_tokens + u.generated_tokens, u.prompt_tokens, u.prompt_tokens_reused,
             u.generated_tokens, seconds)


def _graceful_server_class() -> type:
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """uvicorn's server, except that a stop signal ends it with status 0 once
        in-flight requests are done (uvicorn re-raises the signal afterwards,
        which kills the process with it). A second Ctrl-C forces the exit."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
                return
            log.info("stopping: finishing the requests in flight (Ctrl-C again forces)")
            self.should_exit = True

    return GracefulServer


def serve(service: Service, *, host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, shutdown_timeout: float = 30.0) -> None:
    """Serve until SIGINT or SIGTERM; then stop taking requests, give those in
    flight up to `shutdown_timeout` seconds to finish, and close the engines."""
    import socket

    import uvicorn

    try:  # a taken port is the user's to fix: say so before anything starts
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                        hint="pick another --port, or stop what is using this one") from None
    config = uvicorn.Config(build_app(service, api_key=api_key), host=host, port=port,
                            log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=shutdown_timeout)
    server = _graceful_server_class()(config)
    try:
        server.run()
    finally:
        service.close()
