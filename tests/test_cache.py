import hashlib
import math
import random
import sqlite3
from typing import Sequence

import pytest

from ttsc.runtime.cache import CachedEngine, CallCache, call_key
from ttsc.runtime.engines.base import (Completion, ContinuationOutput, ContinuationRequest, Engine,
                                       NextTokenRequest, Prompt, SampleOutput, SampleRequest,
                                       SamplingParams, ScoreOutput, Usage, total_usage)


class SeededEngine(Engine):
    """A tiny deterministic engine: sample i of seed s depends only on (prompt, s + i).

    Records every batch it is asked for, so tests can see what missed the cache.
    """

    name = "seeded"

    def __init__(self):
        self.batches: list[list] = []
        self.extend_batches: list[list] = []

    def _draw(self, prompt: Prompt, seed: int | None) -> Completion:
        state = repr((prompt, seed)).encode() if seed is not None else None
        rng = random.Random(hashlib.sha256(state).digest() if state else None)
        ids = [rng.randrange(100) for _ in range(3)]
        return Completion(" ".join(map(str, ids)), ids, [-rng.random() for _ in ids], "length")

    def sample(self, requests: Sequence[SampleRequest]) -> list[SampleOutput]:
        self.batches.append(list(requests))
        out = []
        for r in requests:
            seeds = [None if r.params.seed is None else r.params.seed + i for i in range(r.params.n)]
            out.append(SampleOutput([self._draw(r.prompt, s) for s in seeds],
                                    Usage(calls=1, prompt_tokens=2 * r.params.n,
                                          prompt_tokens_computed=2,
                                          prompt_tokens_reused=2 * r.params.n - 2,
                                          generated_tokens=3 * r.params.n)))
        return out

    def extend(self, candidates, params):
        self.extend_batches.append(list(candidates))
        return super().extend(candidates, params)

    def score_next(self, requests: Sequence[NextTokenRequest]) -> list[ScoreOutput]:
        self.batches.append(list(requests))
        return [ScoreOutput([-float(len(c)) for c in r.choices[:-1]] + [-math.inf], Usage(calls=1))
                for r in requests]

    def score_continuations(self, requests: Sequence[ContinuationRequest]) -> list[ContinuationOutput]:
        self.batches.append(list(requests))
        return [ContinuationOutput(-0.5 * len(r.continuation), Usage(calls=1)) for r in requests]

    def tokenize(self, prompt: Prompt) -> list[int]:
        return [ord(c) for c in prompt.messages[-1][1]]


def completions(outputs: list[SampleOutput]) -> list[list[Completion]]:
    return [o.completions for o in outputs]


def work(usage: Usage) -> Usage:
    """A usage without its cache counts: what computing the calls cost."""
    return Usage(**{**usage.as_dict(), "cache_hits": 0, "cache_misses": 0})


def request(text: str, n: int = 2, seed: int | None = 7, **kw) -> SampleRequest:
    return SampleRequest(Prompt.user(text), SamplingParams(n=n, seed=seed, **kw))


@pytest.fixture
def cache(tmp_path):
    c = CallCache(tmp_path / "calls.sqlite")
    yield c
    c.close()


def test_call_cache_get_put(cache, tmp_path):
    assert cache.get("k") is None
    cache.put("k", {"a": [1, 2.5, None], "b": "text"})
    cache.put_many({f"x{i}": i for i in range(1200)})  # more than one IN (...) chunk
    assert cache.get("k") == {"a": [1, 2.5, None], "b": "text"}
    assert cache.get_many(["x3", "missing", "x1199"]) == {"x3": 3, "x1199": 1199}
    assert len(cache) == 1201
    mode = sqlite3.connect(tmp_path / "calls.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_key_depends_on_model_kind_and_every_field():
    base = request("q")
    keys = {
        call_key("m", "sample", base),
        call_key("m2", "sample", base),
        call_key("m", "next", base),
        call_key("m", "sample", request("q", seed=8)),
        call_key("m", "sample", request("q", temperature=0.5)),
        call_key("m", "sample", request("q", stop=("\n",))),
        call_key("m", "sample", SampleRequest(Prompt.user("q", system="s"), base.params)),
        call_key("m", "sample", SampleRequest(Prompt(raw="q"), base.params)),
    }
    assert len(keys) == 8
    assert call_key("m", "sample", request("q")) == call_key("m", "sample", base)


def test_second_run_is_served_from_cache(cache):
    inner = SeededEngine()
    engine = CachedEngine(inner, cache, model="toy")
    batch = [request("a"), request("b", n=3)]
    first = engine.sample(batch)
    assert len(inner.batches) == 1 and engine.hits == 0 and engine.misses == 5
    assert total_usage(first).cache_misses == 5
    second = engine.sample(batch)
    assert completions(second) == completions(first)
    assert len(inner.batches) == 1 and engine.hits == 5
    # A replayed call reports what computing it cost, and that it was a hit.
    assert work(total_usage(second)) == work(total_usage(first))
    assert total_usage(second).calls == 2 and total_usage(second).cache_hits == 5
    assert [work(o.usage) for o in second] == [o.usage for o in inner.sample(batch)]


def test_cache_persists_across_engines(tmp_path):
    path = tmp_path / "c.sqlite"
    first_cache = CallCache(path)
    first = CachedEngine(SeededEngine(), first_cache, model="toy").sample([request("a")])
    first_cache.close()
    inner = SeededEngine()
    again = CachedEngine(inner, CallCache(path), model="toy").sample([request("a")])
    assert completions(again) == completions(first) and inner.batches == []


def test_misses_go_to_the_inner_engine_in_one_batch(cache):
    inner = SeededEngine()
    engine = CachedEngine(inner, cache, model="toy")
    engine.sample([request("a")])
    out = engine.sample([request("a"), request("b"), request("c")])
    assert len(inner.batches) == 2
    assert [r.prompt.messages[-1][1] for r in inner.batches[1]] == ["b", "c"]
    assert completions(out) == completions(inner.sample([request("a"), request("b"), request("c")]))


def test_more_samples_reuse_the_ones_already_drawn(cache):
    inner = SeededEngine()
    engine = CachedEngine(inner, cache, model="toy")
    few = engine.sample([request("a", n=2)])[0].completions
    many = engine.sample([request("a", n=5)])[0].completions
    assert many[:2] == few
    # Only the new tail was asked for, with the seeds it would have had.
    tail = inner.batches[1][0].params
    assert (tail.n, tail.seed) == (3, 9)
    assert many == inner.sample([request("a", n=5)])[0].completions
    assert engine.hits == 2


def test_unseeded_requests_are_not_cached(cache):
    inner = SeededEngine()
    engine = CachedEngine(inner, cache, model="toy")
    engine.sample([request("a", seed=None)])
    engine.sample([request("a", seed=None)])
    assert len(inner.batches) == 2 and engine.hits == 0 and len(cache) == 0


def test_model_spec_separates_entries(cache):
    inner = SeededEngine()
    CachedEngine(inner, cache, model="one").sample([request("a")])
    CachedEngine(inner, cache, model="two").sample([request("a")])
    assert len(inner.batches) == 2


def test_scores_are_cached(cache):
    inner = SeededEngine()
    engine = CachedEngine(inner, cache, model="toy")
    next_requests = [NextTokenRequest(Prompt.user("Is it right?"), ("Yes", "No"))]
    cont_requests = [ContinuationRequest(Prompt.user("q"), "abc"),
                     ContinuationRequest(Prompt.user("q"), "abcd")]
    def logprobs(outputs):
        return [o.logprobs for o in outputs]

    def totals(outputs):
        return [o.logprob for o in outputs]

    assert logprobs(engine.score_next(next_requests)) == [[-3.0, -math.inf]]
    assert totals(engine.score_continuations(cont_requests)) == [-1.5, -2.0]
    calls = len(inner.batches)
    assert logprobs(engine.score_next(next_requests)) == [[-3.0, -math.inf]]
    assert totals(engine.score_continuations(cont_requests[::-1])) == [-2.0, -1.5]
    assert len(inner.batches) == calls and engine.hits == 3


def test_extend_uses_the_inner_extend_and_the_sample_cache(cache):
    inner = SeededEngine()
    engine = CachedEngine(inner, cache, model="toy")
    params = SamplingParams(n=2, seed=1)
    candidates = [(Prompt.user("q"), "step 1."), (Prompt.user("q"), "step A.")]
    out = engine.extend(candidates, params)
    assert len(inner.extend_batches) == 1
    # An extension is the sample of the continued prompt: the same cache entries.
    again = engine.sample([SampleRequest(Prompt.user("q").continued("step 1."), params)])
    assert completions(again) == completions(out[:1]) and engine.hits == 2
    assert completions(engine.extend(candidates, params)) == completions(out)
    assert len(inner.extend_batches) == 1


def test_tokenize_passes_through(cache):
    engine = CachedEngine(SeededEngine(), cache, model="toy")
    assert engine.tokenize(Prompt.user("ab")) == [97, 98]


def test_repeated_score_requests_are_computed_once(cache):
    inner = SeededEngine()
    engine = CachedEngine(inner, cache, model="toy")
    a, b = ContinuationRequest(Prompt.user("q"), "ab"), ContinuationRequest(Prompt.user("q"), "abc")
    assert [o.logprob for o in engine.score_continuations([a, b, a])] == [-1.0, -1.5, -1.0]
    assert inner.batches == [[a, b]]


def test_split_usage_adds_up_when_every_sample_computed_part_of_its_prompt():
    """A server with a per-slot prompt cache computes part of each sample's
    prompt: the split still adds up to the request's usage, no sample's share
    exceeds its prompt, and samples without token ids still count their tokens."""
    from ttsc.runtime.cache import _split_usage

    completions = [Completion("ab", [], [-0.1, -0.2], "eos"), Completion("abc", [], [-0.1] * 3, "length")]
    usage = Usage(calls=1, prompt_tokens=100, prompt_tokens_computed=60, prompt_tokens_reused=40,
                  generated_tokens=5)
    parts = _split_usage(SampleOutput(completions, usage))
    total = parts[0] + parts[1]
    assert total == usage
    assert all(p.prompt_tokens_computed <= p.prompt_tokens for p in parts)
    assert [p.generated_tokens for p in parts] == [2, 3]
