"""What an engine can do, and what each op needs of the engine that serves it.

Engines declare a `Capabilities`; the compiler checks every LLM op against the
capabilities of its model's engine (an op the engine cannot serve is a
compile-time error naming the op, the model and what is missing), and the
compiler and the runtime fall back, with a stated reason, where a capability
only improves a prediction (no tokenizer: prompt tokens are estimated).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

# Why each capability matters, for error messages and `--explain`.
MEANING = {
    "token_ids": "token ids of generated text",
    "logprobs": "per-token log-probabilities of generated text",
    "next_token_scores": "log-probabilities of chosen next tokens (P(Yes) for a judge)",
    "continuation_scores": "log-probabilities of a given continuation",
    "assistant_prefix": "continuing text the assistant already wrote",
    "tokenizer": "the model's tokenizer (exact prompt token counts, prefix sharing)",
}


@dataclass(frozen=True)
class Capabilities:
    token_ids: bool = True
    logprobs: bool = True
    next_token_scores: bool = True
    continuation_scores: bool = True
    assistant_prefix: bool = True
    tokenizer: bool = True
    max_concurrency: int = 256  # requests (rows) the engine serves at once
    prefix_cache: bool = True  # a shared prompt prefix is computed once

    def missing(self, needs: tuple[str, ...]) -> list[str]:
        return [n for n in needs if not getattr(self, n)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Capabilities":
        names = {f.name for f in fields(Capabilities)}
        return Capabilities(**{k: v for k, v in d.items() if k in names})


# What each LLM op needs beyond sampling text.
OP_NEEDS: dict[str, tuple[str, ...]] = {
    "generate": (), "unit_tests": (), "critique": (), "fuse": (), "refine": (), "rank": (),
    "extend": ("assistant_prefix",),
    "verify": ("next_token_scores",),
    "score": ("next_token_scores",),
    "knockout": ("next_token_scores",), "debate": (),  # the strategy library's ops
}


def op_needs(op: str, attrs: dict[str, Any] | None = None) -> tuple[str, ...]:
    """The capabilities an op (with these attributes) needs of its engine."""
    return OP_NEEDS.get(op, ())
