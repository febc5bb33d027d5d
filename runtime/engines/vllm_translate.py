"""Our engine contract <-> vLLM's, as plain functions that never import vllm.

The vLLM engine (runtime/engines/vllm.py) is a thin loop around these: it
builds requests with the `*_request` functions, hands them to `vllm.LLM.generate`
and reads the `RequestOutput`s back with the `read_*` functions. Keeping the
translation here means it is tested on every machine (tests/test_vllm_translate.py,
with objects shaped like vLLM's), not only where vLLM installs.

What is sent:
- every prompt as token ids (`{"prompt_token_ids": [...]}`, vLLM's
  `TokensPrompt`), tokenized by us with vLLM's own tokenizer and chat
  template, so `tokenize` is exactly what the model sees;
- one vLLM request per sample: sample i of a request with seed s is sent
  with n=1 and seed s + i, which is our contract (vLLM's own n>1 draws every
  sample from one generator, so sample i would depend on n). vLLM fans n>1
  out into single-sample requests itself, and prefix caching computes the
  shared prompt once, so nothing is lost;
- `logprobs=0`: the log-probability of each sampled token, nothing else.

What is read back (fields of vLLM's `RequestOutput` and `CompletionOutput`):
`prompt_token_ids`, `num_cached_tokens` (prompt tokens served by the prefix
cache), `prompt_logprobs`, and per completion `token_ids`, `logprobs`,
`finish_reason` ("length" or "stop") and `stop_reason` (the stop string, a
stop token id, or None for EOS).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ttsc.runtime.engines.base import Completion, FinishReason, SamplingParams, Usage, matched_stop

# vLLM's value for "no top-k cut": -1 is accepted by every vLLM release (newer
# ones also take 0, older ones only -1).
NO_TOP_K = -1
# Top log-probabilities asked for a next-token score; vLLM's default cap
# (`max_logprobs`) is 20. A choice outside them is scored exactly by a second
# request (see `read_next_token`).
TOP_LOGPROBS = 20


@dataclass(frozen=True)
class VllmRequest:
    """One request as `vllm.LLM.generate` takes it: a prompt and its settings
    (keyword arguments of `vllm.SamplingParams`)."""

    prompt_ids: list[int]
    settings: dict[str, Any]

    @property
    def prompt(self) -> dict[str, list[int]]:
        """vLLM's `TokensPrompt` (a TypedDict, so a plain dict is one)."""
        return {"prompt_token_ids": list(self.prompt_ids)}


class VllmOutputError(RuntimeError):
    """vLLM answered in a way the translation cannot read (an aborted request,
    logprobs missing): a bug or an unsupported vLLM version, not a user mistake."""


# ------------------------------------------------------------------ requests


def sample_requests(prompt_ids: list[int], params: SamplingParams, base_seed: int,
                    max_tokens: int) -> list[VllmRequest]:
    """One single-sample request per sample: sample i gets seed base_seed + i.
    `max_tokens` is the request's own, already cut to the model's context."""
    settings = {
        "n": 1,
        "temperature": float(params.temperature),
        "top_p": float(params.top_p),
        "top_k": params.top_k if params.top_k > 0 else NO_TOP_K,
        "max_tokens": max_tokens,
        "stop": list(params.stop) or None,
        "ignore_eos": params.ignore_eos,
        "logprobs": 0,  # the sampled token's log-probability only
    }
    return [VllmRequest(prompt_ids, {**settings, "seed": base_seed + i}) for i in range(params.n)]


def next_token_request(prompt_ids: list[int], top: int = TOP_LOGPROBS) -> VllmRequest:
    """One step at temperature 1 with the `top` likeliest next tokens' log-probabilities.

    Temperature 1 and no top-k/top-p cut make vLLM's log-probabilities the
    model's own distribution whichever `logprobs_mode` the engine runs; the
    sampled token itself is never used (seeded, so runs repeat).
    """
    return VllmRequest(prompt_ids, {"n": 1, "temperature": 1.0, "top_p": 1.0, "top_k": NO_TOP_K,
                                    "max_tokens": 1, "logprobs": top, "seed": 0})


def prompt_logprob_request(ids: list[int]) -> VllmRequest:
    """Score the tokens of `ids` themselves: `prompt_logprobs=0` returns the
    log-probability of each prompt token given the ones before it."""
    return VllmRequest(ids, {"n": 1, "temperature": 1.0, "max_tokens": 1, "prompt_logprobs": 0,
                             "seed": 0})


# ------------------------------------------------------------------ outputs


def token_logprobs(position_logprobs: Sequence[Mapping[int, Any]] | None,
                   token_ids: Sequence[int]) -> list[float]:
    """The log-probability of each token, from vLLM's per-position
    {token id: Logprob} maps (each holds at least the token itself)."""
    if position_logprobs is None:
        raise VllmOutputError("vLLM returned no logprobs although they were asked for")
    if len(position_logprobs) < len(token_ids):
        raise VllmOutputError(f"vLLM returned {len(position_logprobs)} logprobs for "
                              f"{len(token_ids)} tokens")
    out = []
    for i, token in enumerate(token_ids):
        entry = position_logprobs[i].get(token)
        if entry is None:
            raise VllmOutputError(f"vLLM's logprobs at position {i} lack the token {token}")
        out.append(float(entry.logprob))
    return out


def read_completion(out: Any, *, decode: Callable[[list[int]], str],
                    eos_ids: frozenset[int], stop: Sequence[str]) -> Completion:
    """One vLLM `CompletionOutput` as our Completion.

    - finish "length" stays "length"; "stop" with a stop string is "stop";
      "stop" with no stop string (EOS, or a stop token of the generation
      config) is "eos", and that last token is dropped with its logprob;
    - `text` is decoded by us from the token ids (`decode`, the same way as
      the torch engines) and cut before the earliest stop string, so it does
      not depend on vLLM's detokenizer settings.
    """
    ids = list(out.token_ids)
    logprobs = token_logprobs(out.logprobs, ids)
    reason: FinishReason
    if out.finish_reason == "length":
        reason = "length"
    elif out.finish_reason == "stop" and isinstance(out.stop_reason, str):
        reason = "stop"
    elif out.finish_reason == "stop":
        reason = "eos"
        ends = set(eos_ids) | ({out.stop_reason} if isinstance(out.stop_reason, int) else set())
        if ids and ids[-1] in ends:
            ids, logprobs = ids[:-1], logprobs[:-1]
    else:
        raise VllmOutputError(f"vLLM ended a request with finish_reason={out.finish_reason!r}")
    text = decode(ids)
    matched = None
    if reason == "stop":
        hits = [p for p in (text.find(s) for s in stop if s) if p >= 0]
        matched = matched_stop(text, min(hits), stop) if hits else out.stop_reason
        text = text[:min(hits)] if hits else out.text
    return Completion(text, ids, logprobs, reason, matched)


def prompt_usage(output: Any) -> Usage:
    """What the prompt of one vLLM request cost, from its own output:
    `num_cached_tokens` of its prompt tokens came from the prefix cache."""
    prompt = len(output.prompt_token_ids or ())
    reused = min(prompt, int(output.num_cached_tokens or 0))
    return Usage(prompt_tokens=prompt, prompt_tokens_computed=prompt - reused,
                 prompt_tokens_reused=reused)


def read_samples(outputs: Sequence[Any], *, decode: Callable[[list[int]], str],
                 eos_ids: frozenset[int], stop: Sequence[str]) -> tuple[list[Completion], Usage]:
    """The completions of one of our requests (one vLLM output per sample, in
    seed order) and the request's usage: one call, every sample's prompt
    tokens split into computed and reused, every generated token."""
    completions: list[Completion] = []
    usage = Usage(calls=1)
    for output in outputs:
        if len(output.outputs) != 1:
            raise VllmOutputError(f"expected one completion per vLLM request, got {len(output.outputs)}")
        completion = read_completion(output.outputs[0], decode=decode, eos_ids=eos_ids, stop=stop)
        completions.append(completion)
        usage = usage + prompt_usage(output) + Usage(generated_tokens=len(completion.token_ids))
    return completions, usage


def read_next_token(output: Any, choice_ids: Sequence[int]) -> list[float | None]:
    """Each choice token's log-probability from the top log-probabilities of
    the first generated position; None for a choice outside them."""
    [completion] = output.outputs
    if not completion.logprobs:
        raise VllmOutputError("vLLM returned no next-token logprobs although they were asked for")
    top = completion.logprobs[0]
    return [float(top[t].logprob) if t in top else None for t in choice_ids]


def read_prompt_logprobs(output: Any, start: int) -> float:
    """The summed log-probability of prompt tokens start.. (vLLM's
    `prompt_logprobs` has None for the first token, which nothing predicts)."""
    ids = list(output.prompt_token_ids)
    scores = output.prompt_logprobs
    if scores is None or len(scores) != len(ids):
        raise VllmOutputError("vLLM returned no prompt logprobs although they were asked for")
    total = 0.0
    for i in range(max(start, 1), len(ids)):
        entry = (scores[i] or {}).get(ids[i])
        if entry is None:
            raise VllmOutputError(f"vLLM's prompt logprobs at position {i} lack the token {ids[i]}")
        total += float(entry.logprob)
    return total


# ------------------------------------------------------------------ engine arguments


def engine_arguments(model: str, supported: set[str], *, seed: int, dtype: str,
                     options: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Keyword arguments for `vllm.LLM` and notes on what this vLLM lacks.

    `supported` is the set of `vllm.EngineArgs` field names of the installed
    release. Prefix caching is always on. Where the release has
    `logprobs_mode`, logprobs are read after temperature ("processed_logprobs",
    our contract); older releases report them before it, which the notes say.
    """
    args: dict[str, Any] = {"model": model, "enable_prefix_caching": True, "seed": seed,
                            "dtype": dtype}
    notes: list[str] = []
    if "logprobs_mode" in supported:
        args["logprobs_mode"] = "processed_logprobs"
    else:
        notes.append("this vLLM has no logprobs_mode: sampled-token logprobs are before temperature")
    unknown = [k for k in options if supported and k not in supported]
    if unknown:
        raise KeyError(unknown[0])
    args.update(options)
    return args, notes
