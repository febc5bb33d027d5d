"""The engine contract: the one small interface every engine implements.

An engine turns prompts into completions and scores. Everything above it (the
executor, eval, search, serve) speaks only this interface, so the built-in torch
engines, vLLM and an OpenAI-compatible server are interchangeable.

- Prompts stay structured (chat messages, or raw text) until they reach the
  engine, because only the engine knows its tokenizer and chat template.
- Every request's result carries that request's own `Usage`: callers add
  them up, so two callers sharing an engine each see exactly what they used.
- Engines are thread-safe: several callers may call at once, and an engine
  that batches (the paged engine) serves their requests in the same batches.
- `capabilities` says what the engine can do; the compiler and the runtime
  ask before they rely on it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import Literal, Sequence

from ttsc.common.capabilities import Capabilities
from ttsc.common.prompts import Prompt
from ttsc.common.sampling import SamplingParams, check_sampling

__all__ = ["Capabilities", "Completion", "ContinuationOutput", "ContinuationRequest", "Engine",
           "FinishReason", "NextTokenRequest", "Prompt", "SampleOutput", "SampleRequest",
           "SamplingParams", "ScoreOutput", "Usage", "check_sampling", "first_finished", "matched_stop",
           "total_usage"]

FinishReason = Literal["stop", "length", "eos"]


@dataclass(frozen=True)
class SampleRequest:
    prompt: Prompt
    params: SamplingParams = SamplingParams()


@dataclass
class Completion:
    text: str  # generated text, stop string excluded
    token_ids: list[int]
    logprobs: list[float]  # log-probability of each generated token (after temperature)
    finish_reason: FinishReason
    stop: str | None = None  # the stop string that ended it ("stop"), when the engine knows


@dataclass(frozen=True)
class NextTokenRequest:
    """Log-probabilities of a few candidate next tokens, without sampling.

    Each choice is a string; its first token (as the engine tokenizes it right
    after the prompt) is what is scored. The verifier op uses ("Yes", "No").
    """

    prompt: Prompt
    choices: tuple[str, ...]


@dataclass(frozen=True)
class ContinuationRequest:
    """Total log-probability of `continuation` written after `prompt`."""

    prompt: Prompt
    continuation: str


@dataclass
class Usage:
    """What serving some requests cost. Every field is a count; usages add."""

    calls: int = 0  # requests served (a request of n samples counts once)
    prompt_tokens: int = 0  # prompt tokens requested (once per sample)
    prompt_tokens_computed: int = 0  # prompt tokens the engine actually ran
    prompt_tokens_reused: int = 0  # prompt tokens served from a prefix cache
    generated_tokens: int = 0
    cache_hits: int = 0  # samples and scores answered from the call cache
    cache_misses: int = 0  # samples and scores the call cache had to compute
    # First-finish search (generate(..., first=k)): samples the engine stopped
    # once k had finished, and the tokens they did not generate, counted up to
    # their max_tokens (at most what was saved: how far they would have run is
    # unknown). Their tokens generated before the stop are in generated_tokens.
    samples_stopped: int = 0
    tokens_saved: int = 0

    @property
    def tokens_computed(self) -> int:
        """The headline cost: prompt tokens computed plus generated tokens."""
        return self.prompt_tokens_computed + self.generated_tokens

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple())))

    def as_tuple(self) -> tuple[int, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @staticmethod
    def from_dict(d: dict[str, int]) -> "Usage":
        names = {f.name for f in fields(Usage)}
        return Usage(**{k: int(v) for k, v in d.items() if k in names})


def total_usage(outputs: Sequence["SampleOutput | ScoreOutput | ContinuationOutput"]) -> Usage:
    total = Usage()
    for out in outputs:
        total = total + out.usage
    return total


@dataclass
class SampleOutput:
    """One sample request's `params.n` completions, in order, and its usage."""

    completions: list[Completion]
    usage: Usage = field(default_factory=Usage)


@dataclass
class ScoreOutput:
    """One next-token request's log-probability per choice, and its usage."""

    logprobs: list[float]
    usage: Usage = field(default_factory=Usage)


@dataclass
class ContinuationOutput:
    """One continuation's total log-probability, and its usage."""

    logprob: float
    usage: Usage = field(default_factory=Usage)


def first_finish_key(c: Completion, index: int) -> tuple[bool, int, int]:
    """How early a sample finished, for first-finish search: samples decode
    in lockstep, so the first to finish has the fewest tokens (ties by
    position); one cut by max_tokens did not finish and ranks after all that did."""
    return (c.finish_reason == "length", len(c.token_ids), index)


def first_finished(completions: list[Completion], k: int | None) -> list[Completion]:
    """The k completions that finished first (`first_finish_key`), in that
    order; all of them when k is None or there are no more than k. The paged
    engine stops the others and returns k already; for engines that generate
    all n this is the fallback (their usage counts all n: they computed them)."""
    if k is None or len(completions) <= k:
        return list(completions)
    order = sorted(range(len(completions)), key=lambda i: first_finish_key(completions[i], i))
    return [completions[i] for i in order[:int(k)]]


def find_stop(text: str, stops: Sequence[str], searched: int) -> int | None:
    """Where the first of `stops` starts in decoded `text`, or None. The search
    starts a margin before `searched` (how far an earlier call searched),
    because a decoded tail can change as a character's bytes complete. For
    engines that stop on strings themselves, token by token."""
    start = max(0, searched - max(len(s) for s in stops) - 4)
    hits = [p for p in (text.find(s, start) for s in stops if s) if p >= 0]
    return min(hits) if hits else None


def matched_stop(text: str, cut: int, stops: Sequence[str]) -> str:
    """Which of `stops` starts at `cut` in `text` (find_stop's answer); the
    longest, where one stop string begins another."""
    return max((s for s in stops if s and text.startswith(s, cut)), key=len)


class Engine(ABC):
    """One model behind the contract. Batches are lists; engines batch them."""

    name: str = "engine"
    capabilities: Capabilities = Capabilities()

    @abstractmethod
    def sample(self, requests: Sequence[SampleRequest]) -> list[SampleOutput]:
        """For each request, `params.n` completions, in order, with its usage."""

    @abstractmethod
    def score_next(self, requests: Sequence[NextTokenRequest]) -> list[ScoreOutput]:
        """For each request, the log-probability of each choice's first token."""

    @abstractmethod
    def score_continuations(self, requests: Sequence[ContinuationRequest]) -> list[ContinuationOutput]:
        """For each request, the sum of log-probabilities of the continuation tokens."""

    @abstractmethod
    def tokenize(self, prompt: Prompt) -> list[int]:
        """Token ids the engine would feed for this prompt (template applied)."""

    def extend(self, candidates: Sequence[tuple[Prompt, str]],
               params: SamplingParams) -> list[SampleOutput]:
        """Continue existing candidates: each (prompt, text so far) gets n continuations."""
        return self.sample([SampleRequest(p.continued(t), params) for p, t in candidates])

    def close(self) -> None:
        """Release what the engine holds (memory, connections)."""
