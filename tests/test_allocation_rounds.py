"""Allocation across a data set in rounds: the vote-state table and the
CP-SAT-planned rounds, on synthetic pools whose difficulty is known."""

from __future__ import annotations

import json
import random

import pytest

from ttsc.runtime.allocation.votes import vote_is_right
from ttsc.runtime.allocation.rounds import (CHECKPOINTS, Sample, VoteValues, allocate_in_rounds,
                                                fit_vote_values, simulate_on_pools, vote_state)

POOL = CHECKPOINTS[-1]


def easy(rng: random.Random) -> tuple[list[Sample], list[bool]]:
    """Every sample gives the right answer, confidently."""
    return [Sample("7", 4.0, -0.01) for _ in range(POOL)], [True] * POOL


def contested(rng: random.Random) -> tuple[list[Sample], list[bool]]:
    """The right answer is the plurality, but one sample in three at best:
    votes over more samples are right more often."""
    answers = ["5"] * 14 + ["3"] * 9 + ["4"] * 9
    rng.shuffle(answers)
    return [Sample(a, 4.0, -0.9) for a in answers], [a == "5" for a in answers]


def hopeless(rng: random.Random) -> tuple[list[Sample], list[bool]]:
    """Never right, whatever the vote."""
    return [Sample(str(100 + rng.randrange(50)), 4.0, -2.0) for _ in range(POOL)], [False] * POOL


def pools(kinds: list, seed: int = 0) -> tuple[list[list[Sample]], list[list[bool]]]:
    rng = random.Random(seed)
    drawn = [kind(rng) for kind in kinds]
    return [d[0] for d in drawn], [d[1] for d in drawn]


MIX = [easy, contested, hopeless] * 4


@pytest.fixture(scope="module")
def values() -> VoteValues:
    samples, correct = pools(MIX * 2, seed=1)
    return fit_vote_values(samples, correct, confident=-0.5, orders=20)


def test_vote_state_counts_votes_and_confident_top_samples():
    s = [Sample("5", 3, -0.1), Sample("5", 3, -0.9), Sample("4", 3, -0.1), Sample(None, 3, 0.0),
         Sample("5", 3, -0.2)]
    assert vote_state(s, confident=-0.5) == (5, 3, 1, 2)  # "5" three times, twice confidently
    assert vote_state(s, confident=None) == (5, 3, 1, 0)
    assert vote_state([Sample(None, 3), Sample("", 3)], confident=-0.5) == (2, 0, 0, 0)
    many = [Sample("1", 1, 0.0)] * 6
    assert vote_state(many, confident=-1.0) == (6, 6, 0, 2)  # counted up to the cap


def test_table_predicts_easy_and_hopeless_states(values):
    # A unanimous, confident start: right now and later.
    assert values.value((4, 4, 0, 2), 4) > 0.95
    assert values.value((4, 4, 0, 2), 32) > 0.95
    # Scattered answers, none confident (the hopeless pools): never right.
    assert values.value((4, 1, 1, 0), 32) < 0.2
    # The contested pools: more samples make the vote right more often.
    assert values.value((4, 2, 1, 0), 32) > values.value((4, 2, 1, 0), 4)


def test_table_round_trips_through_json(values):
    back = VoteValues.from_json(json.loads(json.dumps(values.to_json())))
    for state in list(values.fine)[:50]:
        for t in CHECKPOINTS[CHECKPOINTS.index(state[0]):]:
            assert back.value(state, t) == values.value(state, t)


def test_fit_needs_enough_samples():
    samples, correct = pools([easy])
    with pytest.raises(ValueError, match="input 0 has 8 samples"):
        fit_vote_values([samples[0][:8]], [correct[0][:8]])


def _draw_from(samples: list[list[Sample]], calls: list[list[tuple[int, int]]]):
    at = [0] * len(samples)

    def draw(requests):
        calls.append(list(requests))
        out = []
        for i, count in requests:
            out.append(samples[i][at[i]:at[i] + count])
            at[i] += count
        return out
    return draw


def test_rounds_spend_on_contested_inputs_not_easy_or_hopeless(values):
    samples, correct = pools(MIX, seed=2)
    calls: list = []
    prompts = [10.0] * len(samples)
    budget = sum(prompts) + 4.0 * 6 * len(samples)  # uniform n=6's tokens
    got = allocate_in_rounds(values, _draw_from(samples, calls), prompts, budget)
    n = [len(s) for s in got.samples]
    by_kind = {k.__name__: [n[i] for i, kind in enumerate(MIX) if kind is k] for k in set(MIX)}
    mean = {k: sum(v) / len(v) for k, v in by_kind.items()}
    assert max(by_kind["easy"]) <= 2
    assert mean["contested"] > 2 * mean["hopeless"] >= 2
    # One engine batch per round: the first for every input, none naming an input twice.
    assert sorted(i for i, _ in calls[0]) == list(range(len(samples)))
    assert all(len({i for i, _ in c}) == len(c) for c in calls)
    assert got.tokens == pytest.approx(sum(prompts) + 4.0 * sum(n))
    assert got.tokens <= budget


def test_rounds_stop_at_the_budget(values):
    samples, _ = pools(MIX, seed=3)
    prompts = [10.0] * len(samples)
    tight = sum(prompts) + 4.0 * len(samples)  # the first sample of each, nothing more
    got = allocate_in_rounds(values, _draw_from(samples, []), prompts, tight)
    assert [len(s) for s in got.samples] == [1] * len(samples)
    middle = sum(prompts) + 4.0 * 6 * len(samples)
    got = allocate_in_rounds(values, _draw_from(samples, []), prompts, middle)
    assert got.tokens <= middle
    assert max(len(s) for s in got.samples) > 1


def test_start_must_be_a_checkpoint(values):
    with pytest.raises(ValueError, match="start must be a checkpoint"):
        allocate_in_rounds(values, _draw_from([], []), [], 100.0, start=5)


def test_simulation_beats_uniform_at_its_tokens(values):
    """On a mix of easy, contested and hopeless inputs, the rounds reach a
    higher vote accuracy than uniform n=6 at uniform n=6's tokens."""
    samples, correct = pools(MIX, seed=4)
    prompts = [10.0] * len(samples)
    budget = sum(prompts) + 4.0 * 6 * len(samples)
    acc, tokens, _ = simulate_on_pools(values, samples, correct, prompts, budget, orders=8)
    rng = random.Random(0)
    hits = 0
    for a, c in zip(samples, correct):
        for _ in range(50):
            pick = rng.sample(range(POOL), 6)
            hits += vote_is_right([a[j].answer for j in pick], [c[j] for j in pick])
    uniform = hits / (50 * len(samples))
    assert tokens <= budget
    assert acc > uniform + 0.05
