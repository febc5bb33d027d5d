"""A small OpenAI-compatible HTTP server on loopback, for fault tests.

It answers /v1/models and /v1/chat/completions (and /v1/completions) with a
fixed reply, "Answer: 7", one token per character, with log-probabilities
(no token ids, no tokenizer route: a plain OpenAI-style server). A test
scripts its faults with `plan`: a function of the request's number (0-based,
counting completion requests only) returning one of

    None                 answer normally
    ("status", code, retry_after)   an error status (Retry-After header if given)
    ("hang", seconds)    answer nothing for that long
    ("garbage",)         200 with a body that is not JSON
    ("truncate",)        promise a long body, send a few bytes, close
    ("die",)             stop the whole server (later connections are refused)

Every request is recorded in `seen` (path, headers, JSON body).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

Action = tuple | None
REPLY = "Answer: 7"


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.0"  # one request per connection: a stopped server refuses the next

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        fake = self.server.fake
        fake.record(self.path, dict(self.headers), None)
        if self.path == "/v1/models":
            self._send(200, json.dumps({"object": "list", "data": [
                {"id": m, "object": "model"} for m in fake.models]}).encode())
        else:
            self._send(404, b'{"error": {"message": "not found"}}')

    def do_POST(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        fake.record(self.path, dict(self.headers), body)
        if self.path not in ("/v1/chat/completions", "/v1/completions"):
            self._send(404, b'{"error": {"message": "not found"}}')
            return
        action = fake.next_action()
        with fake._lock:
            fake.in_flight += 1
            fake.most_in_flight = max(fake.most_in_flight, fake.in_flight)
        try:
            self._answer(fake, action, body)
        finally:
            with fake._lock:
                fake.in_flight -= 1

    def _answer(self, fake: "FakeOpenAIServer", action: Action, body: dict[str, Any]) -> None:
        if action is None:
            self._send(200, json.dumps(fake.reply(self.path, body)).encode())
        elif action[0] == "status":
            headers = {"Retry-After": str(action[2])} if action[2] is not None else {}
            self._send(action[1], json.dumps({"error": {"message": f"scripted {action[1]}",
                                                        "type": "server_error"}}).encode(), headers)
        elif action[0] == "hang":
            time.sleep(action[1])
            self._send(200, json.dumps(fake.reply(self.path, body)).encode())
        elif action[0] == "garbage":
            self._send(200, b"<html>not an API</html>")
        elif action[0] == "truncate":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "5000")
            self.end_headers()
            self.wfile.write(b'{"choices": [')
            self.wfile.flush()
            self.close_connection = True
        elif action[0] == "die":
            self.close_connection = True
            threading.Thread(target=fake.stop, daemon=True).start()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: "FakeOpenAIServer"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up on a hung or cut reply is what the tests want


class FakeOpenAIServer:
    def __init__(self, plan: Callable[[int], Action] = lambda i: None, *,
                 models: tuple[str, ...] = ("fake",), port: int = 0):
        self.plan = plan
        self.models = models
        self.seen: list[tuple[str, dict[str, str], Any]] = []
        self.completions = 0  # completion requests received
        self.in_flight = 0  # completion requests being answered now
        self.most_in_flight = 0  # the most at once so far
        self._lock = threading.Lock()
        self._port = port
        self._httpd: _Server | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    def spec(self, model: str = "fake") -> str:
        return f"openai:{self.url}#{model}"

    def record(self, path: str, headers: dict[str, str], body: Any) -> None:
        with self._lock:
            self.seen.append((path, headers, body))

    def next_action(self) -> Action:
        with self._lock:
            index = self.completions
            self.completions += 1
        return self.plan(index)

    def reply(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        n_max = int(body.get("max_tokens") or 16)
        text = REPLY[:n_max]
        finish = "stop" if len(text) == len(REPLY) else "length"
        entries = [{"token": ch, "logprob": -0.25, "top_logprobs": [{"token": ch, "logprob": -0.25}]}
                   for ch in text]
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish,
                                  "logprobs": {"content": entries}}
        if path.endswith("chat/completions"):
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {"id": "cmpl-fake", "object": "chat.completion", "model": body.get("model"),
                "choices": [choice],
                "usage": {"prompt_tokens": 10, "completion_tokens": len(text),
                          "total_tokens": 10 + len(text)}}

    def start(self) -> "FakeOpenAIServer":
        self._httpd = _Server(("127.0.0.1", self._port), _Handler)
        self._httpd.fake = self
        self._port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
