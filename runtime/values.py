"""Run-time values that flow between ops."""

from __future__ import annotations

from dataclasses import dataclass

from ttsc.common.prompts import Prompt


@dataclass(frozen=True)
class Candidate:
    """One generated text, with what it was generated from (so `extend` can
    continue it) and whether the model ended it."""

    text: str
    prompt: Prompt
    finished: bool = True
    tokens: int = 0
    logprob_sum: float | None = None  # log-probability of its generated tokens, if known

    @property
    def mean_logprob(self) -> float | None:
        """Mean log-probability per generated token: how sure the model was."""
        if self.logprob_sum is None or not self.tokens:
            return None
        return self.logprob_sum / self.tokens
