"""Objects shaped like vLLM's outputs, for the translation tests on machines
without vLLM (vLLM needs Linux and a CUDA GPU; CI has neither).

The dataclasses mirror the documented fields of `vllm.logprobs.Logprob`,
`vllm.outputs.CompletionOutput` and `vllm.outputs.RequestOutput` that the
translation reads; `ScriptedLLM` answers `generate` the way `vllm.LLM` does
(one RequestOutput per prompt, in order) from a fixed rule, so the engine's
own bookkeeping (seeds per sample, batching, usage, fallbacks) can be checked.
It is a stand-in for vLLM's interface, not for its numbers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Sequence


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: Sequence[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None
    prompt_logprobs: list[dict[int, Logprob] | None] | None
    outputs: list[CompletionOutput]
    finished: bool = True
    num_cached_tokens: int | None = None


@dataclass
class ModelConfig:
    max_model_len: int
    dtype: str = "torch.float32"
    eos_token_ids: list[int] = field(default_factory=list)

    def try_get_generation_config(self) -> dict[str, Any]:
        return {"eos_token_id": self.eos_token_ids}


class ScriptedLLM:
    """`generate(prompts, params)` like vllm.LLM's, answering from a rule:
    sampled tokens come from random.Random((seed, prompt)); every logprob is
    -(1 + position) / 10; the top log-probabilities of a next-token request
    are tokens 40.. in order; prompt logprobs are -0.25 per token; a prompt
    reuses the longest whole 4-token blocks it shares with an earlier one."""

    BLOCK = 4

    def __init__(self, tokenizer: Any, max_model_len: int = 96, extra_eos: int = 7):
        self.tokenizer = tokenizer
        self.model_config = ModelConfig(max_model_len, eos_token_ids=[tokenizer.eos_token_id, extra_eos])
        self.calls: list[list[dict[str, Any]]] = []  # every generate call's settings
        self.seen: list[list[int]] = []

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def generate(self, prompts: list[dict[str, list[int]]], params: list[dict[str, Any]],
                 use_tqdm: bool = True) -> list[RequestOutput]:
        assert len(prompts) == len(params) and not use_tqdm
        self.calls.append(list(params))
        return [self._one(str(i), p["prompt_token_ids"], s) for i, (p, s) in enumerate(zip(prompts, params))]

    def _cached(self, ids: list[int]) -> int:
        best = 0
        for old in self.seen:
            k = 0
            while k < min(len(old), len(ids)) and old[k] == ids[k]:
                k += 1
            best = max(best, k // self.BLOCK * self.BLOCK)
        self.seen.append(list(ids))
        return min(best, len(ids) - 1)

    def _one(self, rid: str, ids: list[int], s: dict[str, Any]) -> RequestOutput:
        assert s["n"] == 1 and s["max_tokens"] >= 1
        cached = self._cached(ids)
        prompt_lp = None
        if s.get("prompt_logprobs") is not None:
            prompt_lp = [None] + [{t: Logprob(-0.25)} for t in ids[1:]]
            cached = 0  # vLLM does not read the prefix cache for prompt logprobs
        rng = random.Random(repr((s.get("seed"), ids)))
        tokens, logprobs = [], []
        finish, stop_reason = "length", None
        for pos in range(s["max_tokens"]):
            token = rng.randrange(10, 300)
            if not s.get("ignore_eos") and rng.random() < 0.15:
                token = self.tokenizer.eos_token_id
            entry = {token: Logprob(-(1 + pos) / 10)}
            if s.get("logprobs"):
                entry.update({40 + k: Logprob(-(2 + k) / 10) for k in range(s["logprobs"])})
            tokens.append(token)
            logprobs.append(entry)
            if token == self.tokenizer.eos_token_id:
                finish = "stop"
                break
        out = CompletionOutput(0, "<vllm's own text>", tokens, None, logprobs, finish, stop_reason)
        return RequestOutput(rid, None, list(ids), prompt_lp, [out], True, cached)
