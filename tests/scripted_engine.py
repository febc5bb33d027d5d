"""A deterministic test double of the engine contract.

It answers from the prompt text alone, so executor tests can assert exactly
what a strategy returns: `answers` maps a substring of the prompt to the list
of sample texts to cycle through; `yes` maps a substring of a verifier prompt
to P(Yes); `logprob` gives a sample's per-token log-probability from its
text (the confidence ops read it).
"""

from __future__ import annotations

import math
import threading
from typing import Callable, Sequence

from ttsc.runtime.engines.base import (Completion, ContinuationOutput, ContinuationRequest, Engine,
                                       NextTokenRequest, Prompt, SampleOutput, SampleRequest,
                                       ScoreOutput, Usage)


def _text(prompt: Prompt) -> str:
    body = prompt.raw if prompt.raw is not None else "\n".join(c for _, c in prompt.messages)
    return body + prompt.assistant_prefix


class ScriptedEngine(Engine):
    name = "scripted"

    def __init__(self, answers: dict[str, list[str]] | None = None,
                 yes: dict[str, float] | None = None, finish: str = "eos",
                 logprob: Callable[[str], float] = lambda text: -0.1):
        self.answers = answers or {}
        self.logprob = logprob
        self.yes = yes or {}
        self.finish = finish
        self.batches: list[int] = []  # size of every sample() call
        self.requests: list[SampleRequest] = []  # every sample request, in arrival order
        self._lock = threading.Lock()

    def _pick(self, text: str, i: int) -> str:
        for key, outs in self.answers.items():
            if key in text:
                return outs[i % len(outs)]
        return "no idea"

    def sample(self, requests: Sequence[SampleRequest]) -> list[SampleOutput]:
        with self._lock:
            self.batches.append(len(requests))
            self.requests.extend(requests)
        out = []
        for r in requests:
            text = _text(r.prompt)
            comps = []
            for i in range(r.params.n):
                t = self._pick(text, i + (r.params.seed or 0) % 3)
                comps.append(Completion(t, [1] * len(t.split()), [self.logprob(t)] * len(t.split()),
                                        self.finish))
            prompt = len(text.split())
            out.append(SampleOutput(comps, Usage(
                calls=1, prompt_tokens=prompt, prompt_tokens_computed=prompt,
                generated_tokens=sum(len(c.token_ids) for c in comps))))
        return out

    def score_next(self, requests: Sequence[NextTokenRequest]) -> list[ScoreOutput]:
        out = []
        for r in requests:
            text = _text(r.prompt)
            p = next((v for k, v in self.yes.items() if k in text), 0.5)
            out.append(ScoreOutput([math.log(p), math.log(1 - p)],
                                   Usage(calls=1, prompt_tokens=len(text.split()))))
        return out

    def score_continuations(self, requests: Sequence[ContinuationRequest]) -> list[ContinuationOutput]:
        return [ContinuationOutput(-float(len(r.continuation)), Usage(calls=1)) for r in requests]

    def tokenize(self, prompt: Prompt) -> list[int]:
        return list(range(len(_text(prompt).split())))
