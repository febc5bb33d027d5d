"""Difficulty-aware allocation across a data set, in rounds.

A one-shot allocation (allocation/pilot.py: allocate_by_pilot) must fix each
input's n from a pilot of one or two samples, which says little about how
hard the input is. Here the decision is revisited after every round, as
adaptive self-consistency (Aggarwal et al., 2023) and PETS's online setting
do, but under one token budget for the whole data set:

1. every input draws `start` samples;
2. each round, CP-SAT (compiler.allocator.allocate_across_inputs) plans a
   final total among the checkpoints for every input still open, maximizing
   the predicted number of right votes within the tokens left;
3. inputs planned at "no more" stop; the others draw up to their next
   checkpoint only, and the plan is made again from what they drew.

The prediction is a table fitted on a dev set: the probability that the vote
over the first t' samples is right, given the vote state after t samples
(how many samples, the top answer's count, the runner-up's count, and how
many of the top answer's samples the model was confident in: mean token
log-probability at least a threshold chosen on the dev set). Nothing in the
state names an input, so the table carries over to unseen inputs of the same
model, prompt and temperature.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

from ttsc.compiler.allocator import allocate_across_inputs
from ttsc.runtime.allocation.votes import vote_is_right

CHECKPOINTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
FIT_ORDERS = 40  # random orders of each dev input's samples the table is counted over
PRIOR = 5.0  # weight of the coarse state's figure when a fine state was seen rarely
SCALE = 1000  # CP-SAT wants integers: probabilities in thousandths
CONFIDENT_CAP = 2  # confident samples of the top answer, counted up to this


class Sample(NamedTuple):
    answer: str | None
    tokens: float  # generated tokens
    mean_logprob: float = 0.0


State = tuple[int, int, int, int]  # (samples, top count, runner-up count, confident top samples)


def vote_state(samples: Sequence[Sample], confident: float | None) -> State:
    """What the table reads of an input's samples so far (empty answers cast no vote)."""
    top = Counter(s.answer for s in samples if s.answer not in (None, "")).most_common(2)
    sure = 0
    if top and confident is not None:
        sure = min(CONFIDENT_CAP, sum(s.answer == top[0][0] and s.mean_logprob >= confident
                                      for s in samples))
    return (len(samples), top[0][1] if top else 0, top[1][1] if len(top) > 1 else 0, sure)


def _coarse(s: State) -> tuple[int, int, int, int]:
    """The state with the margin capped: the backoff for rarely seen states."""
    return (s[0], min(s[1] - s[2], 4), int(s[1] == 0), s[3])


@dataclass
class VoteValues:
    """P(the vote over the first t' samples is right | state after t samples),
    for t <= t' among `checkpoints`; per state, right counts per t' and
    (last) how often the state was seen."""

    checkpoints: tuple[int, ...]
    confident: float | None  # mean-logprob threshold of a confident sample; None: unused
    fine: dict[tuple, list[float]] = field(default_factory=dict)
    coarse: dict[tuple, list[float]] = field(default_factory=dict)

    def value(self, state: State, total: int) -> float:
        k = self.checkpoints.index(total)
        c = self.coarse.get(_coarse(state))
        base = c[k] / c[-1] if c else 0.0
        f = self.fine.get(state)
        return (f[k] + PRIOR * base) / (f[-1] + PRIOR) if f else base

    def to_json(self) -> dict:
        return {"checkpoints": list(self.checkpoints), "confident": self.confident,
                "fine": [[list(s), v] for s, v in self.fine.items()],
                "coarse": [[list(s), v] for s, v in self.coarse.items()]}

    @classmethod
    def from_json(cls, data: dict) -> "VoteValues":
        return cls(tuple(data["checkpoints"]), data["confident"],
                   {tuple(s): v for s, v in data["fine"]},
                   {tuple(s): v for s, v in data["coarse"]})


def fit_vote_values(samples: Sequence[Sequence[Sample]], correct: Sequence[Sequence[bool]],
                    confident: float | None = None, checkpoints: Sequence[int] = CHECKPOINTS,
                    orders: int = FIT_ORDERS, seed: int = 3) -> VoteValues:
    """The table from dev samples: `samples[i]` are input i's samples (at
    least max(checkpoints)) and `correct[i]` whether each is right."""
    cps = tuple(checkpoints)
    for i, s in enumerate(samples):
        if len(s) < cps[-1]:
            raise ValueError(f"input {i} has {len(s)} samples; the checkpoints need {cps[-1]}")
    rng = random.Random(seed)
    values = VoteValues(cps, confident)
    for s_all, c_all in zip(samples, correct):
        for _ in range(orders):
            order = rng.sample(range(len(s_all)), cps[-1])
            s = [s_all[j] for j in order]
            right = [vote_is_right([x.answer for x in s[:t]], [c_all[j] for j in order[:t]])
                     for t in cps]
            for k, t in enumerate(cps):
                state = vote_state(s[:t], confident)
                for table, key in ((values.fine, state), (values.coarse, _coarse(state))):
                    row = table.setdefault(key, [0.0] * (len(cps) + 1))
                    row[-1] += 1
                    for k2 in range(k, len(cps)):
                        row[k2] += right[k2]
    return values


# draw([(input, count), ...]) -> each listed input's next `count` samples (one
# engine batch per round).
Draw = Callable[[list[tuple[int, int]]], list[list[Sample]]]


@dataclass
class RoundsResult:
    samples: list[list[Sample]]  # per input, every sample drawn, in order
    tokens: float  # the prompts once, plus every drawn sample's generated tokens

    @property
    def answers(self) -> list[list[str | None]]:
        return [[s.answer for s in ss] for ss in self.samples]


class Rounds:
    """The state of an allocation in rounds over `m` inputs: what each input
    drew, which checkpoint it reached, which inputs are still open.

    `first()` is the first round's draws; after the draws are `add`ed,
    `next(tokens_left)` plans the following round with CP-SAT (inputs planned
    at "no more" close) until it returns no draws. Whoever draws (a simulation
    over sample pools, or `ttsc eval` over a real engine) keeps the books of
    what the draws cost.
    """

    def __init__(self, values: VoteValues, m: int, start: int = 1):
        cps = values.checkpoints
        if start not in cps:
            raise ValueError(f"start must be a checkpoint ({', '.join(map(str, cps))}), not {start}")
        self.values = values
        self.samples: list[list[Sample]] = [[] for _ in range(m)]
        self.start = start
        self._k = [cps.index(start)] * m
        self.open = [i for i in range(m) if self._k[i] < len(cps) - 1]

    def first(self) -> list[tuple[int, int]]:
        return [(i, self.start) for i in range(len(self.samples))]

    def add(self, i: int, samples: Sequence[Sample]) -> None:
        self.samples[i] += samples

    def total(self, i: int) -> int:
        """The samples input i has once its planned draws are in."""
        return self.values.checkpoints[self._k[i]]

    def next(self, tokens_left: float) -> list[tuple[int, int]]:
        """The next round's draws: (input, how many more samples)."""
        cps = self.values.checkpoints
        if not self.open:
            return []
        utilities, costs = [], []
        for i in self.open:
            mine = self.samples[i]
            # Whole tokens per sample: inputs with one state and one length
            # form one class, which keeps each CP-SAT solve small.
            per_sample = max(1, round(sum(s.tokens for s in mine) / len(mine))) if mine else 1
            state = vote_state(mine, self.values.confident)
            ahead = range(self._k[i], len(cps))
            utilities.append([round(SCALE * self.values.value(state, cps[j])) for j in ahead])
            costs.append([(cps[j] - cps[self._k[i]]) * per_sample for j in ahead])
        picks = allocate_across_inputs(utilities, costs, max(0, int(tokens_left)), scale=1)
        go = [i for i, p in zip(self.open, picks) if p > 0]
        draws = [(i, cps[self._k[i] + 1] - cps[self._k[i]]) for i in go]
        for i in go:
            self._k[i] += 1
        self.open = [i for i in go if self._k[i] < len(cps) - 1]
        return draws


def allocate_in_rounds(values: VoteValues, draw: Draw, prompt_tokens: Sequence[float],
                       budget: float, start: int = 1) -> RoundsResult:
    """Draw samples for each input (one per entry of `prompt_tokens`) in
    rounds until CP-SAT plans no more or every input reached the last
    checkpoint. `budget` is in tokens: each input's prompt once, plus every
    sample's generated tokens; a planned sample costs the mean length of that
    input's samples so far. The first `start` samples of every input are
    drawn whatever the budget; after that, stopping is always feasible, so the
    spend stays within the budget up to the difference between planned and
    drawn lengths."""
    rounds = Rounds(values, len(prompt_tokens), start)
    tokens = float(sum(prompt_tokens))
    requests = rounds.first()
    while requests:
        for (i, _), got in zip(requests, draw(requests)):
            rounds.add(i, got)
            tokens += sum(s.tokens for s in got)
        requests = rounds.next(budget - tokens)
    return RoundsResult(rounds.samples, tokens)


def simulate_on_pools(values: VoteValues, samples: Sequence[Sequence[Sample]],
                      correct: Sequence[Sequence[bool]], prompt_tokens: Sequence[float],
                      budget: float, orders: int, seed: int = 17) -> tuple[float, float, float]:
    """Mean (vote accuracy, tokens, samples per input) of allocate_in_rounds
    when each input's samples come from its pool in random order, over
    `orders` orders (the same orders for every budget, so figures at two
    budgets differ by the budget, not by the draw)."""
    m = len(samples)
    rng = random.Random(seed)
    acc = tokens = drawn = 0.0
    for _ in range(orders):
        order = [rng.sample(range(len(s)), len(s)) for s in samples]
        at = [0] * m

        def draw(requests: list[tuple[int, int]]) -> list[list[Sample]]:
            out = []
            for i, count in requests:
                out.append([samples[i][j] for j in order[i][at[i]:at[i] + count]])
                at[i] += count
            return out

        got = allocate_in_rounds(values, draw, prompt_tokens, budget)
        for i, answers in enumerate(got.answers):
            acc += vote_is_right(answers, [correct[i][j] for j in order[i][:at[i]]])
        tokens += got.tokens
        drawn += sum(at)
    return acc / (orders * m), tokens / orders, drawn / (orders * m)
