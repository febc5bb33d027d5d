"""The OpenAI wire format, as `ttsc serve` reads and writes it.

`parse_request` turns a request body into a `StrategyCall` (which strategy,
its inputs, the settings that override the plan, streaming or not) or raises
`APIError`, which renders as the API's error object:

    {"error": {"message": ..., "type": "invalid_request_error", "param": ..., "code": ...}}

The builders make the response objects: a chat completion or a text
completion, and the chunks of a stream (the role first, the content, a last
chunk with `finish_reason`, the usage when asked for).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from ttsc.common.sampling import SETTINGS
from ttsc.runtime.engines.base import Usage

Endpoint = Literal["chat", "completions"]
OVERRIDES = ("n", "temperature", "max_tokens")  # request fields that override the plan


class APIError(Exception):
    """An error the API reports to the client: status and OpenAI error object."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


@dataclass
class StrategyCall:
    """One request, read: what to run and how to answer."""

    endpoint: Endpoint
    strategy: str
    inputs: dict[str, str]
    overrides: dict[str, Any] = field(default_factory=dict)  # n, temperature, max_tokens
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False


def decode_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    return body


def parse_request(endpoint: Endpoint, body: dict[str, Any], strategies: dict[str, list[str]]) -> StrategyCall:
    """Read a request. `strategies` maps each served strategy (a model name) to
    its parameters; the first parameter takes the user's text."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "you must provide a model parameter (a strategy name)", param="model")
    if model not in strategies:
        raise APIError(404, f"the model `{model}` does not exist; this server's models are its "
                            f"strategies: {', '.join(strategies)}", param="model",
                       code="model_not_found")
    params = strategies[model]
    text = _chat_text(body) if endpoint == "chat" else _prompt_text(body)
    inputs = _named_inputs(body)
    unknown = [k for k in inputs if k not in params]
    if unknown:
        raise APIError(400, f"strategy `{model}` has no parameter `{unknown[0]}` (it takes "
                            f"{', '.join(params)})", param="inputs")
    if params and params[0] not in inputs:
        inputs[params[0]] = text
    missing = [p for p in params if p not in inputs]
    if missing:
        raise APIError(400, f"strategy `{model}` needs `{missing[0]}` too: pass it in the "
                            f"request's `inputs` object (extra_body={{\"inputs\": {{...}}}})",
                       param="inputs")
    overrides = {}
    for name in OVERRIDES:
        value = body.get(name)
        if value is None:
            continue
        problem = SETTINGS[name].problem(value)
        if problem:
            raise APIError(400, f"`{name}` {problem} (got {value!r})", param=name)
        overrides[name] = int(value) if SETTINGS[name].integer else float(value)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise APIError(400, f"`seed` must be a non-negative integer (got {seed!r})", param="seed")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "`stream` must be true or false", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise APIError(400, "`stream_options` must be an object", param="stream_options")
    return StrategyCall(endpoint, model, inputs, overrides, seed, stream,
                        bool(options.get("include_usage")))


def _chat_text(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "`messages` must be a non-empty list of messages", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise APIError(400, f"messages[{i}] must be an object with a `role`", param="messages")
    users = [m for m in messages if m["role"] == "user"]
    if not users:
        raise APIError(400, "`messages` has no user message: the last user message is the "
                            "strategy's input", param="messages")
    return _content_text(users[-1].get("content"), f"messages[{messages.index(users[-1])}].content")


def _content_text(content: Any, where: str) -> str:
    """Message content as text: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        texts = [p.get("text") for p in content if p.get("type") == "text"]
        if texts and all(isinstance(t, str) for t in texts):
            return "".join(texts)
    raise APIError(400, f"`{where}` must be text (a string or text parts)", param="messages")


def _prompt_text(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise APIError(400, "`prompt` must be a string (one prompt per request)", param="prompt")
    return prompt


def _named_inputs(body: dict[str, Any]) -> dict[str, str]:
    inputs = body.get("inputs") or {}
    if not isinstance(inputs, dict) or not all(isinstance(v, (str, int, float)) for v in inputs.values()):
        raise APIError(400, "`inputs` must be an object of parameter names to text", param="inputs")
    return {str(k): str(v) for k, v in inputs.items()}


# -------------------------------------------------------------------- replies

def new_id(endpoint: Endpoint) -> str:
    return ("chatcmpl-" if endpoint == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def usage_object(u: Usage) -> dict[str, Any]:
    """Every token the strategy spent on this request: all its samples and
    judge calls. Prompt tokens served from a prefix cache are `cached_tokens`."""
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.generated_tokens,
            "total_tokens": u.prompt_tokens + u.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": u.prompt_tokens_reused}}


def completion_object(call: StrategyCall, rid: str, answer: str, usage: Usage,
                      ran: dict[str, Any]) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "logprobs": None}
    if call.endpoint == "chat":
        choice["message"] = {"role": "assistant", "content": answer}
        kind = "chat.completion"
    else:
        choice["text"] = answer
        kind = "text_completion"
    return {"id": rid, "object": kind, "created": int(time.time()), "model": call.strategy,
            "choices": [choice], "usage": usage_object(usage), "ttsc": ran}


def chunk_object(call: StrategyCall, rid: str, *, role: bool = False, content: str | None = None,
                 finish: bool = False) -> dict[str, Any]:
    """One streamed chunk: the role, a piece of content, or the end."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": "stop" if finish else None,
                              "logprobs": None}
    if call.endpoint == "chat":
        delta: dict[str, Any] = {}
        if role:
            delta = {"role": "assistant", "content": ""}
        elif content is not None:
            delta = {"content": content}
        choice["delta"] = delta
        kind = "chat.completion.chunk"
    else:
        choice["text"] = content or ""
        kind = "text_completion"
    return {"id": rid, "object": kind, "created": int(time.time()), "model": call.strategy,
            "choices": [choice]}


def usage_chunk(call: StrategyCall, rid: str, usage: Usage, ran: dict[str, Any]) -> dict[str, Any]:
    kind = "chat.completion.chunk" if call.endpoint == "chat" else "text_completion"
    return {"id": rid, "object": kind, "created": int(time.time()), "model": call.strategy,
            "choices": [], "usage": usage_object(usage), "ttsc": ran}


def sse(obj: dict[str, Any] | str) -> bytes:
    """One Server-Sent Event carrying a JSON object (or the literal [DONE])."""
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {data}\n\n".encode()
