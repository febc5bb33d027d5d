"""The engine contract: the one small interface every engine implements.

An engine turns prompts into completions and scores. Everything above it (the
executor, eval, search, serve) speaks only this interface, so the built-in torch
engine, vLLM and an OpenAI-compatible server are interchangeable.

Prompts stay structured (chat messages, or raw text) until they reach the
engine, because only the engine knows its tokenizer and chat template.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal, Sequence

from ttsc.dsl.errors import UserError

FinishReason = Literal["stop", "length", "eos"]


@dataclass(frozen=True)
class Prompt:
    """What the model is conditioned on.

    Either chat `messages` (rendered through the model's chat template with the
    generation prompt appended) or `raw` text used verbatim. `assistant_prefix`
    is text the assistant has already written: `extend` continues from it.
    """

    messages: tuple[tuple[str, str], ...] = ()  # (role, content)
    raw: str | None = None
    assistant_prefix: str = ""

    @staticmethod
    def user(content: str, system: str | None = None) -> "Prompt":
        msgs = ((("system", system),) if system else ()) + (("user", content),)
        return Prompt(messages=msgs)

    def continued(self, text: str) -> "Prompt":
        """The same prompt with `text` appended to what the assistant wrote."""
        return Prompt(self.messages, self.raw, self.assistant_prefix + text)


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k cut
    max_tokens: int = 128
    stop: tuple[str, ...] = ()
    seed: int | None = None  # sample i of a request uses seed + i
    ignore_eos: bool = False  # forced length, for benchmarks


def check_sampling(params: SamplingParams) -> None:
    """UserError listing every out-of-range sampling setting."""
    problems = []
    if params.n < 0:
        problems.append(f"n must be >= 0 (got {params.n})")
    if params.temperature < 0:
        problems.append(f"temperature must be >= 0 (got {params.temperature})")
    if not 0 < params.top_p <= 1:
        problems.append(f"top_p must be in (0, 1] (got {params.top_p})")
    if params.top_k < 0:
        problems.append(f"top_k must be >= 0 (got {params.top_k})")
    if params.max_tokens < 0:
        problems.append(f"max_tokens must be >= 0 (got {params.max_tokens})")
    if problems:
        raise UserError("invalid sampling settings: " + "; ".join(problems))


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
    calls: int = 0  # requests served (a request of n samples counts once)
    prompt_tokens: int = 0  # prompt tokens requested
    prompt_tokens_computed: int = 0  # prompt tokens the engine actually ran
    prompt_tokens_reused: int = 0  # prompt tokens served from a prefix cache
    generated_tokens: int = 0

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple())))

    def __sub__(self, other: "Usage") -> "Usage":
        return Usage(*(a - b for a, b in zip(self.as_tuple(), other.as_tuple())))

    def as_tuple(self) -> tuple[int, ...]:
        return (self.calls, self.prompt_tokens, self.prompt_tokens_computed,
                self.prompt_tokens_reused, self.generated_tokens)

    def as_dict(self) -> dict[str, int]:
        return {"calls": self.calls, "prompt_tokens": self.prompt_tokens,
                "prompt_tokens_computed": self.prompt_tokens_computed,
                "prompt_tokens_reused": self.prompt_tokens_reused,
                "generated_tokens": self.generated_tokens}


class Engine(ABC):
    """One model behind the contract. Batches are lists; engines batch them."""

    name: str = "engine"

    @abstractmethod
    def sample(self, requests: Sequence[SampleRequest]) -> list[list[Completion]]:
        """For each request, `params.n` completions, in order."""

    @abstractmethod
    def score_next(self, requests: Sequence[NextTokenRequest]) -> list[list[float]]:
        """For each request, the log-probability of each choice's first token."""

    @abstractmethod
    def score_continuations(self, requests: Sequence[ContinuationRequest]) -> list[float]:
        """For each request, sum of log-probabilities of the continuation tokens."""

    @abstractmethod
    def tokenize(self, prompt: Prompt) -> list[int]:
        """Token ids the engine would feed for this prompt (template applied)."""

    @property
    @abstractmethod
    def usage(self) -> Usage:
        """Cumulative usage since the engine was created."""

    def extend(self, candidates: Sequence[tuple[Prompt, str]],
               params: SamplingParams) -> list[list[Completion]]:
        """Continue existing candidates: each (prompt, text so far) gets n continuations."""
        return self.sample([SampleRequest(p.continued(t), params) for p, t in candidates])

    def close(self) -> None:
        """Release what the engine holds (memory, connections)."""

