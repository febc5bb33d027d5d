"""One sequence the engine runs: its tokens, its KV blocks, its sampling state."""

from __future__ import annotations

import itertools
from enum import Enum, auto
from typing import TYPE_CHECKING

from ttsc.runtime.engines.base import SamplingParams

if TYPE_CHECKING:
    from ttsc.runtime.engines.paged.radix import RadixNode


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


class SequenceKind(Enum):
    GENERATE = auto()  # samples tokens after the prompt
    SCORE = auto()  # only reads log-probabilities of given tokens, never decodes


_ids = itertools.count()


class Sequence:
    """Token ids `[0, num_tokens)`; KV is stored for `[0, num_cached_tokens)`.

    A generating sequence in decode has `num_cached_tokens == num_tokens - 1`:
    its last sampled token is what the next step feeds. A prefilling one has
    more tokens to run, possibly over several chunked steps.
    """

    def __init__(self, token_ids: list[int], params: SamplingParams, seed: int,
                 kind: SequenceKind = SequenceKind.GENERATE, num_forks: int = 0,
                 score_targets: list[list[int]] | None = None, score_start: int = 0):
        self.seq_id = next(_ids)
        self.token_ids = list(token_ids)
        self.num_prompt_tokens = len(token_ids)
        self.params = params
        self.seed = seed  # sampler stream: uniform(seed, num_completion_tokens)
        self.kind = kind
        self.status = SequenceStatus.WAITING
        self.num_cached_tokens = 0
        self.block_table: list[int] = []
        self.tree_node: RadixNode | None = None  # deepest radix node on this sequence's path
        self.logprobs: list[float] = []
        self.finish_reason: str | None = None
        self.searched_chars = 0  # stop strings were searched in the text up to here
        self.stop_text: str | None = None  # completion text cut before a stop string
        self.stop: str | None = None  # the stop string that cut it
        self.num_forks = num_forks  # siblings to fork off once the prompt is prefilled
        self.siblings: list[Sequence] = []  # filled in by the fork, leader first
        self.was_admitted = False
        # Scoring: for position score_start + i, the ids whose log-probs are wanted.
        self.score_targets = score_targets or []
        self.score_start = score_start
        self.scores: list[list[float]] = []
        # Accounting of this sequence's first admission (usage per request).
        self.num_radix_hit_tokens = 0
        self.num_prompt_computed = 0
        self.error: BaseException | None = None  # set when a failed engine step ended it
        # First-finish search: the request's samples (when it keeps only the
        # first k to finish), this one's place among them, and whether the
        # engine stopped it before it finished.
        self.first_group: list[Sequence] | None = None
        self.group_index = 0
        self.stopped = False

    # ------------------------------------------------------------ counts

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_completion_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def completion_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_cached_tokens

    @property
    def is_decoding(self) -> bool:
        return self.num_uncomputed_tokens == 1 and self.num_completion_tokens > 0

    @property
    def is_finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED

    @property
    def logits_start(self) -> int:
        """First position whose next-token distribution this sequence needs.

        Everything before it may come from the prefix cache; this position must
        be computed, because a cache holds KV, not logits.
        """
        if self.kind == SequenceKind.SCORE:
            return self.score_start
        return len(self.token_ids) - 1

    def num_blocks_for(self, num_tokens: int, block_size: int) -> int:
        return (num_tokens + block_size - 1) // block_size

    def __repr__(self) -> str:
        return (f"Sequence(id={self.seq_id}, tokens={self.num_tokens}, cached={self.num_cached_tokens}, "
                f"blocks={len(self.block_table)}, {self.status.name})")
