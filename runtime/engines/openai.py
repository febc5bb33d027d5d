"""The `openai` engine: any OpenAI-compatible server (vLLM, SGLang, llama.cpp, ...).

Spec: `openai:URL#MODEL`, e.g. `openai:http://127.0.0.1:8080/v1#smollm2`.
Several comma-separated URLs serving the same model form one pool
(`openai:http://a:8000/v1,http://b:8000/v1#llama`): requests go to the least
busy one, and a failed request is retried on another.

How the contract maps onto the API:
- chat prompts go to /chat/completions, raw prompts to /completions; a chat
  prompt continuing an assistant reply (extend) is rendered with the server's
  own chat template (llama.cpp's /apply-template) and sent to /completions.
- sample i of a seeded request uses seed + i, as the contract says. llama.cpp
  seeds choice i of one request that way itself, and computes the prompt once
  for all its choices, so there the samples go out as one request (per at
  most as many samples as it has slots); elsewhere one request per sample.
- per-token log-probabilities come from the server's `logprobs`; they are the
  server's own distribution (before temperature, as servers report them).
  Token ids come with them where the server reports ids (llama.cpp does).
- `score_next` reads the choices' first tokens from the top log-probabilities
  of a one-token greedy request; a choice outside the top ones is scored by
  a second request that forces its token (where the server reports ids and
  takes `logit_bias`), else by an upper bound (the smallest top logprob, or the
  mass left outside the top ones, whichever is smaller).
- `score_continuations` needs the log-probabilities of given tokens, which
  these servers do not return for a prompt (llama.cpp refuses `echo`). Where
  the server has a tokenizer route and reports token ids (llama.cpp), each
  continuation token is forced in turn with a logit bias and its unbiased
  logprob read back; elsewhere the engine declares `continuation_scores=False`
  and raises a clear error.
- `tokenize` uses the server's /tokenize and /apply-template (llama.cpp); a
  server without them has `tokenizer=False` and `tokenize` raises.

What the engine can do is probed once, cheaply, on first need: the model list
(an unknown model is an error naming the endpoint), the tokenizer routes,
llama.cpp's slot count, and one one-token request with log-probabilities.

Usage is the server's reported usage of each request: prompt tokens (and the
cached part of them, `prompt_tokens_details.cached_tokens`) and completion
tokens. The API key comes from the `api_key` option or OPENAI_API_KEY; it is
sent as a bearer header and kept nowhere else (not in a spec, a plan, a cache
key or a log).
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

from ttsc.common.capabilities import Capabilities
from ttsc.common.errors import UserError
from ttsc.common.prompts import Prompt
from ttsc.runtime.engines.base import (Completion, ContinuationOutput, ContinuationRequest, Engine,
                                       FinishReason, NextTokenRequest, SampleOutput, SampleRequest,
                                       SamplingParams, ScoreOutput, Usage, check_sampling)
from ttsc.runtime.engines.http_pool import EndpointPool, Reply, ServerError

FORCE_BIAS = 100.0  # logit bias that makes a token the greedy choice
TOP_LOGPROBS = 20  # alternatives asked for when scoring choices (OpenAI's chat maximum)
TEMPLATE_CACHE = 4096  # rendered chat prompts kept (a judge's prompts repeat within a request)


def _env_number(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not a number") from None


@dataclass(frozen=True)
class Token:
    """One generated position as the server reports it."""

    text: str
    id: int | None
    logprob: float
    top: tuple[tuple[str, int | None, float], ...]  # (text, id, logprob) alternatives
    is_end: bool = False  # an end-of-sequence token as llama.cpp lists it: no text, no bytes


@dataclass(frozen=True)
class ServerFacts:
    """What the probe found out about the server."""

    models: tuple[str, ...] | None  # served model ids (None: no model list)
    tokenizer: bool  # /tokenize and /apply-template answer
    logprobs: bool  # per-token logprobs come back
    token_ids: bool  # they carry token ids
    top_logprobs: bool  # alternatives come back too
    slots: int | None  # llama.cpp's parallel slots (its /props); None elsewhere


def parse_tokens(logprobs: Any) -> list[Token]:
    """The per-token entries of a choice's `logprobs`, in either of the two
    shapes servers send: chat-style `{"content": [{token, logprob, top_logprobs,
    id?}]}` (chat completions; llama.cpp uses it for completions too), or the
    legacy completions shape `{"tokens", "token_logprobs", "top_logprobs"}`."""
    if not logprobs:
        return []
    if isinstance(logprobs.get("content"), list):
        out = []
        for e in logprobs["content"]:
            top = tuple((t.get("token", ""), _id(t), float(t["logprob"]))
                        for t in e.get("top_logprobs") or [])
            out.append(Token(e.get("token", ""), _id(e), float(e["logprob"]), top,
                             is_end=e.get("token") == "" and e.get("bytes") == []))
        return out
    tokens = logprobs.get("tokens") or []
    lps = logprobs.get("token_logprobs") or []
    tops = logprobs.get("top_logprobs") or [None] * len(tokens)
    return [Token(t, None, float(lp if lp is not None else -math.inf),
                  tuple((k, None, float(v)) for k, v in (top or {}).items()))
            for t, lp, top in zip(tokens, lps, tops)]


def _id(entry: dict) -> int | None:
    value = entry.get("id")
    return int(value) if isinstance(value, int) else None


def _messages(prompt: Prompt) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in prompt.messages]


class OpenAIEngine(Engine):
    """An OpenAI-compatible server (or a pool of them) behind the engine contract."""

    name = "openai"

    def __init__(self, urls: Sequence[str] | str, model: str, *, api_key: str | None = None,
                 timeout: float | None = None, max_concurrency: int | None = None,
                 retries: int | None = None, backoff: float = 0.5,
                 top_logprobs: int = TOP_LOGPROBS):
        if isinstance(urls, str):
            urls = [u for u in urls.split(",") if u.strip()]
        self.urls = [u.strip().rstrip("/") for u in urls]
        self.model = model
        self.top_logprobs = top_logprobs
        self.pool = EndpointPool(
            self.urls, api_key=api_key if api_key is not None else os.environ.get("OPENAI_API_KEY"),
            timeout=timeout if timeout is not None else _env_number("TTSC_OPENAI_TIMEOUT", 600),
            max_concurrency=int(max_concurrency if max_concurrency is not None
                                else _env_number("TTSC_OPENAI_CONCURRENCY", 16)),
            retries=int(retries if retries is not None else _env_number("TTSC_OPENAI_RETRIES", 4)),
            backoff=backoff)
        self._facts: ServerFacts | None = None
        self._probe_lock = threading.Lock()
        self._templates: OrderedDict[tuple, str] = OrderedDict()  # rendered chat prompts, by messages

    def __repr__(self) -> str:
        return f"OpenAIEngine({','.join(self.urls)}#{self.model})"

    @property
    def spec(self) -> str:
        return f"openai:{','.join(self.urls)}#{self.model}"

    # ------------------------------------------------------------ capabilities

    @property
    def facts(self) -> ServerFacts:
        with self._probe_lock:
            if self._facts is None:
                self._facts = self.pool.run(self._probe())
            return self._facts

    @property
    def _probed(self) -> ServerFacts:
        """The facts, inside the pool's coroutines: every public method probes
        before it starts them (waiting there for the probe would block the loop)."""
        assert self._facts is not None, "the server is probed before any request"
        return self._facts

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        f = self.facts
        return Capabilities(token_ids=f.token_ids, logprobs=f.logprobs,
                            next_token_scores=f.top_logprobs,
                            continuation_scores=f.tokenizer and f.token_ids,
                            assistant_prefix=f.tokenizer, tokenizer=f.tokenizer,
                            max_concurrency=self.pool.max_concurrency * len(self.urls),
                            prefix_cache=False)

    async def _probe(self) -> ServerFacts:
        models = await self._models()
        tokenizer = await self._has_tokenizer()
        slots = await self._slots()
        reply = await self.pool.post("/chat/completions", {
            "model": self.model, "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 1, "temperature": 0, "logprobs": True, "top_logprobs": 2})
        tokens = parse_tokens(self._choices(reply)[0].get("logprobs"))
        return ServerFacts(models=models, tokenizer=tokenizer, logprobs=bool(tokens),
                           token_ids=bool(tokens) and all(t.id is not None for t in tokens),
                           top_logprobs=bool(tokens) and all(t.top for t in tokens), slots=slots)

    async def _models(self) -> tuple[str, ...] | None:
        try:
            reply = await self.pool.get("/models")
        except ServerError as exc:
            if exc.status in (404, 405):  # a server without a model list
                return None
            raise
        data = reply.body.get("data") if isinstance(reply.body, dict) else None
        if not isinstance(data, list):
            raise ServerError(reply.endpoint, "GET /models answered without a `data` list",
                              hint="is this URL an OpenAI-compatible API (it usually ends in /v1)?")
        served = tuple(str(m.get("id")) for m in data if isinstance(m, dict))
        aliases = {a for m in data if isinstance(m, dict) for a in m.get("aliases") or []}
        if served and self.model not in served and self.model not in aliases:
            raise ServerError(reply.endpoint, f"serves no model `{self.model}`",
                              hint="it serves: " + ", ".join(served))
        return served

    async def _slots(self) -> int | None:
        """llama.cpp's parallel slots, from its /props route."""
        try:
            props = await self.pool.get("/props", at_root=True, retries=0)
        except ServerError:
            return None
        slots = props.body.get("total_slots") if isinstance(props.body, dict) else None
        return slots if isinstance(slots, int) and slots > 0 else None

    async def _has_tokenizer(self) -> bool:
        """Whether the server has llama.cpp's /tokenize and /apply-template routes."""
        try:
            tok = await self.pool.post("/tokenize", {"content": "Hi"}, at_root=True, retries=0)
            tpl = await self.pool.post("/apply-template",
                                       {"messages": [{"role": "user", "content": "Hi"}]},
                                       at_root=True, retries=0)
        except ServerError:
            return False
        return (isinstance(tok.body, dict) and isinstance(tok.body.get("tokens"), list)
                and isinstance(tpl.body, dict) and isinstance(tpl.body.get("prompt"), str))

    # ----------------------------------------------------------------- sampling

    def sample(self, requests: Sequence[SampleRequest]) -> list[SampleOutput]:
        for r in requests:
            check_sampling(r.params)
        if not requests:
            return []
        self.facts  # probe before the first request (an unknown model fails here)
        return self._all(requests, self._sample_one)

    def _all(self, requests: Sequence[Any], one: Any) -> list[Any]:
        """Run `one(request)` for every request concurrently; a failure raises the
        first ServerError, carrying the outputs that did finish (`finished`)."""
        async def run() -> list[Any]:
            return await asyncio.gather(*(one(r) for r in requests), return_exceptions=True)

        results = self.pool.run(run())
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            first = errors[0]
            if isinstance(first, ServerError):
                first.finished = {i: r for i, r in enumerate(results)
                                  if not isinstance(r, BaseException)}
            raise first
        return results

    async def _sample_one(self, request: SampleRequest) -> SampleOutput:
        p = request.params
        if p.n == 0:
            return SampleOutput([], Usage())
        if p.max_tokens == 0:
            return SampleOutput([Completion("", [], [], "length") for _ in range(p.n)],
                                Usage(calls=1))
        path, body = await self._route(request.prompt)
        body.update(self._sampling_body(p, logprobs=1, chat=path == "/chat/completions"))
        replies = await _all_or_first_error(self.pool.post(path, {**body, **part})
                                            for part in self._split(p))
        completions: list[Completion] = []
        usage = Usage(calls=1)
        for reply in replies:
            choices = self._choices(reply)
            got = [self._completion(c, p) for c in choices]
            completions += got
            listed = any(parse_tokens(c.get("logprobs")) for c in choices)
            usage = usage + self._usage(reply, len(choices),
                                        sum(len(c.logprobs) for c in got) if listed else None)
        if len(completions) != p.n:
            raise ServerError(replies[0].endpoint, f"asked for {p.n} completion(s), got "
                              f"{len(completions)}")
        return SampleOutput(completions, usage)

    def _split(self, p: SamplingParams) -> list[dict[str, Any]]:
        """How a request's n samples go out: the `n` and `seed` of each HTTP request.

        Unseeded: one request with `n`. Seeded: llama.cpp gives choice i of a
        request seeded s the seed s + i, as the contract does, and computes the
        prompt once for all of them, so one request per at most `slots` samples
        (it waits for as many free slots); elsewhere one request per sample."""
        if p.seed is None:
            return [{"n": p.n}] if p.n > 1 else [{}]
        chunk = self._probed.slots or 1
        return [{"seed": p.seed + i, **({"n": min(chunk, p.n - i)} if min(chunk, p.n - i) > 1 else {})}
                for i in range(0, p.n, chunk)]

    def _sampling_body(self, p: SamplingParams, logprobs: int, chat: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"max_tokens": p.max_tokens, "temperature": p.temperature}
        if p.top_p < 1.0:
            body["top_p"] = p.top_p
        if p.top_k:
            body["top_k"] = p.top_k  # not OpenAI's own, but vLLM, SGLang and llama.cpp take it
        if p.stop:
            body["stop"] = list(p.stop)
        if p.ignore_eos:
            body["ignore_eos"] = True  # likewise an extension
        if chat:
            body.update(logprobs=True, top_logprobs=logprobs)
        else:
            body["logprobs"] = logprobs
        return body

    async def _route(self, prompt: Prompt) -> tuple[str, dict[str, Any]]:
        """Which endpoint serves `prompt`, and the body's prompt part."""
        if prompt.raw is not None:
            return "/completions", {"model": self.model, "prompt": prompt.raw + prompt.assistant_prefix}
        if not prompt.assistant_prefix:
            return "/chat/completions", {"model": self.model, "messages": _messages(prompt)}
        if not self._probed.tokenizer:
            raise UserError(f"{self.urls[0]}: cannot continue an assistant reply (extend): the "
                            "server has no chat-template route (llama.cpp's /apply-template)",
                            hint="serve the model with llama.cpp, or use a raw prompt")
        return "/completions", {"model": self.model, "prompt": await self._render(prompt)}

    def _choices(self, reply: Reply) -> list[dict[str, Any]]:
        body = reply.body
        choices = body.get("choices") if isinstance(body, dict) else None
        if not isinstance(choices, list) or not choices:
            raise ServerError(reply.endpoint, "answered without `choices`")
        return sorted(choices, key=lambda c: c.get("index", 0))

    def _completion(self, choice: dict[str, Any], p: SamplingParams) -> Completion:
        if "message" in choice:
            text = (choice.get("message") or {}).get("content") or ""
        else:
            text = choice.get("text") or ""
        tokens = parse_tokens(choice.get("logprobs"))
        finish = self._finish(choice, p, tokens)
        if tokens and tokens[-1].is_end:
            tokens = tokens[:-1]  # llama.cpp lists the end-of-sequence token; the contract does not
        ids = [t.id for t in tokens]
        token_ids = [int(i) for i in ids if i is not None] if None not in ids else []
        matched = choice.get("stop_reason", choice.get("matched_stop"))
        stop = matched if finish == "stop" and isinstance(matched, str) else None
        return Completion(text, token_ids, [t.logprob for t in tokens], finish, stop)

    @staticmethod
    def _finish(choice: dict[str, Any], p: SamplingParams, tokens: list[Token]) -> FinishReason:
        """The contract's finish reason. OpenAI says "stop" both for the end of
        sequence and for a stop string. Servers that tell them apart say which
        stop matched (vLLM `stop_reason`, SGLang `matched_stop`); llama.cpp lists
        the end-of-sequence token (no text, no bytes) last, and drops a stop
        string's tokens."""
        if choice.get("finish_reason") == "length":
            return "length"
        matched = choice.get("stop_reason", choice.get("matched_stop"))
        if isinstance(matched, str):
            return "stop"
        if isinstance(matched, int) or (tokens and tokens[-1].is_end) or not p.stop:
            return "eos"
        return "stop"

    def _usage(self, reply: Reply, n_choices: int, generated: int | None) -> Usage:
        """What one HTTP reply of `n_choices` samples cost: its prompt once per
        sample as requested, computed once less what the server had cached (its
        samples share the prompt's computation), and the `generated` tokens of
        its completions (the contract's count: no end-of-sequence or stop-string
        tokens), or the server's count where it listed no tokens."""
        u = reply.body.get("usage") or {}
        prompt = int(u.get("prompt_tokens") or 0)
        cached = min(prompt, int(((u.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0))
        requested = prompt * n_choices
        return Usage(prompt_tokens=requested, prompt_tokens_computed=prompt - cached,
                     prompt_tokens_reused=requested - (prompt - cached),
                     generated_tokens=int(u.get("completion_tokens") or 0) if generated is None
                     else generated)

    # ------------------------------------------------------------------ scoring

    def score_next(self, requests: Sequence[NextTokenRequest]) -> list[ScoreOutput]:
        if not requests:
            return []
        if not self.facts.top_logprobs:
            raise UserError(f"{self.urls[0]}: the server returns no top log-probabilities, so "
                            "`verify` and `score` cannot run on it")
        return self._all(requests, self._score_one)

    async def _score_one(self, request: NextTokenRequest) -> ScoreOutput:
        path, body = await self._route(request.prompt)
        chat = path == "/chat/completions"
        body.update(self._sampling_body(SamplingParams(temperature=0.0, max_tokens=1),
                                        logprobs=self.top_logprobs, chat=chat))
        reply = await self.pool.post(path, body)
        tokens = parse_tokens(self._choices(reply)[0].get("logprobs"))
        if not tokens:
            raise ServerError(reply.endpoint, "answered without log-probabilities")
        top = tokens[0].top
        usage = self._usage(reply, 1, 0) + Usage(calls=1)  # a score generates nothing
        facts = self._probed
        ids = (await self._first_ids(request) if facts.tokenizer and facts.token_ids
               else [None] * len(request.choices))
        scores = []
        for choice, token_id in zip(request.choices, ids):
            if token_id is None:
                scores.append(self._by_text(choice, top))
                continue
            found = [lp for _, i, lp in top if i == token_id]
            if found:
                scores.append(found[0])
                continue
            # Outside the top ones: make it the greedy choice with a logit bias;
            # the server reports its unbiased logprob.
            forced = await self.pool.post(path, {**body, "logit_bias": {str(token_id): FORCE_BIAS}})
            usage = usage + self._usage(forced, 1, 0)
            first = parse_tokens(self._choices(forced)[0].get("logprobs"))[:1]
            scores.append(first[0].logprob if first and first[0].id == token_id
                          else _upper_bound(top))
        return ScoreOutput(scores, usage)

    @staticmethod
    def _by_text(choice: str, top: tuple[tuple[str, int | None, float], ...]) -> float:
        """Without token ids: the alternative whose text is the longest prefix of
        the choice (how a tokenizer would start it)."""
        best = max((t for t in top if t[0] and choice.startswith(t[0])),
                   key=lambda t: len(t[0]), default=None)
        return best[2] if best is not None else _upper_bound(top)

    async def _first_ids(self, request: NextTokenRequest) -> list[int | None]:
        """Each choice's first token id as the server tokenizes it after the prompt."""
        base = await self._tokenize(request.prompt)
        fulls = await _all_or_first_error(self._tokenize(request.prompt.continued(c))
                                          for c in request.choices)
        out: list[int | None] = []
        for choice, full in zip(request.choices, fulls):
            if len(full) > len(base) and full[:len(base)] == base:
                out.append(full[len(base)])
            else:  # the choice merged with the prompt's last token: tokenize it alone
                alone = await self._tokenize(Prompt(raw=choice), special=False)
                out.append(alone[0] if alone else None)
        return out

    def score_continuations(self, requests: Sequence[ContinuationRequest]) -> list[ContinuationOutput]:
        if not requests:
            return []
        if not self.capabilities.continuation_scores:
            raise UserError(f"{self.urls[0]}: this server cannot score a given continuation: it "
                            "returns no log-probabilities of prompt tokens, and no token ids to "
                            "force them with", hint="run this op on a local model (the torch engines)")
        return self._all(requests, self._continuation_one)

    async def _continuation_one(self, request: ContinuationRequest) -> ContinuationOutput:
        """Teacher forcing, one request per continuation token: the prompt as token
        ids up to that token, the token forced with a logit bias, its unbiased
        logprob read back. The server's prompt cache makes each one cheap."""
        if not request.continuation:
            return ContinuationOutput(0.0, Usage(calls=1))
        base = await self._tokenize(request.prompt)
        full = await self._tokenize(request.prompt.continued(request.continuation))
        start = 0
        while start < min(len(base), len(full)) and base[start] == full[start]:
            start += 1
        start = max(start, 1)  # the first token has no context to score it in
        replies = await _all_or_first_error(self.pool.post("/completions", {
            "model": self.model, "prompt": full[:i], "max_tokens": 1, "temperature": 0,
            "logprobs": 1, "logit_bias": {str(full[i]): FORCE_BIAS}}) for i in range(start, len(full)))
        total, usage = 0.0, Usage(calls=1)
        for i, reply in zip(range(start, len(full)), replies):
            tokens = parse_tokens(self._choices(reply)[0].get("logprobs"))
            if not tokens or tokens[0].id != full[i]:
                raise ServerError(reply.endpoint, f"a logit bias of {FORCE_BIAS:g} did not force "
                                  f"token {full[i]}, so its log-probability is unknown")
            total += tokens[0].logprob
            usage = usage + self._usage(reply, 1, 0)
        return ContinuationOutput(total, usage)

    # ---------------------------------------------------------------- tokenizer

    def tokenize(self, prompt: Prompt) -> list[int]:
        if not self.facts.tokenizer:
            raise UserError(f"{self.urls[0]}: this server has no tokenizer route (llama.cpp's "
                            "/tokenize and /apply-template), so ttsc cannot count its tokens",
                            hint="token counts are estimated for this engine")
        return self.pool.run(self._tokenize(prompt))

    async def _tokenize(self, prompt: Prompt, special: bool = True) -> list[int]:
        text = prompt.raw + prompt.assistant_prefix if prompt.raw is not None else await self._render(prompt)
        reply = await self.pool.post("/tokenize", {"content": text, "add_special": special,
                                                   "parse_special": special}, at_root=True)
        return [int(t) for t in reply.body["tokens"]]

    async def _render(self, prompt: Prompt) -> str:
        """The chat prompt as the server's template writes it, plus the assistant prefix."""
        key = prompt.messages
        text = self._templates.get(key)
        if text is None:
            reply = await self.pool.post("/apply-template", {"messages": _messages(prompt)},
                                         at_root=True)
            text = self._templates[key] = reply.body["prompt"]
            if len(self._templates) > TEMPLATE_CACHE:
                self._templates.popitem(last=False)
        return text + prompt.assistant_prefix

    def close(self) -> None:
        self.pool.close()


async def _all_or_first_error(coros: Any) -> list[Any]:
    """Await all (none is left running behind the caller's back), then raise the
    first error if any."""
    results = await asyncio.gather(*coros, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def _upper_bound(top: tuple[tuple[str, int | None, float], ...]) -> float:
    """A bound on the logprob of a token missing from the top alternatives."""
    if not top:
        return -math.inf
    smallest = min(lp for _, _, lp in top)
    left = 1.0 - sum(math.exp(lp) for _, _, lp in top)
    return min(smallest, math.log(left)) if left > 0 else smallest
