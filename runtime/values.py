"""Run-time values that flow between ops."""

from __future__ import annotations

from dataclasses import dataclass

from ttsc.common.prompts import Prompt


@dataclass(frozen=True)
class Candidate:
    """One generated text, with what it was generated from (so `extend` can
    continue it) and how it ended.

    - `finished`: the model ended it (end of sequence). A candidate cut by a
      stop string is a completed step, not a finished answer: `extend`
      continues it and `all_done` waits for it.
    - `stop`: the stop string that cut it, which `text` leaves out (what the
      user sees stays clean); `extend` puts it back between the old text and
      the new, so the model continues after the separator it wrote.
    - `logprobs`: the log-probability of each generated token, when the
      engine reported them (the `confidence` op reads them).
    - `root`: which sample of the `generate` call it descends from (extend
      keeps its parent's): the subtree `top(..., groups=G)` files it under
      (DVTS).
    """

    text: str
    prompt: Prompt
    finished: bool = True
    tokens: int = 0
    logprobs: tuple[float, ...] | None = None
    stop: str | None = None
    root: int = 0

    @property
    def logprob_sum(self) -> float | None:
        """Log-probability of its generated tokens, if known."""
        return None if self.logprobs is None else float(sum(self.logprobs))

    @property
    def mean_logprob(self) -> float | None:
        """Mean log-probability per generated token: how sure the model was."""
        if self.logprobs is None or not self.tokens:
            return None
        return self.logprob_sum / self.tokens

    @property
    def continued_text(self) -> str:
        """The text a continuation follows: the text and the stop string that cut it."""
        return self.text + (self.stop or "")
