"""Engines called from several threads at once.

The paged engine batches concurrent callers' requests together (one step serves
every caller's running sequences); the HF engine serves one call at a time.
Either way each caller gets exactly the outputs and the usage it would get alone.
"""

from __future__ import annotations

import threading
from typing import Callable

import pytest
import torch

from ttsc.kernels import cpu_ops
from ttsc.runtime.engines.base import (
    Engine,
    NextTokenRequest,
    Prompt,
    SampleOutput,
    SampleRequest,
    SamplingParams,
    ScoreOutput,
)
from ttsc.runtime.engines.hf import HFEngine
from ttsc.runtime.engines.paged.engine import PagedEngine
from ttsc.runtime.models import LoadedModel

MiB = 1 << 20
NEW_TOKENS = 24


def paged(loaded: LoadedModel) -> PagedEngine:
    return PagedEngine(loaded, dtype=torch.float32, kv_memory_bytes=16 * MiB)


def caller_requests(name: str) -> list[SampleRequest]:
    """32 sample requests of one caller: its own prompts (no blocks shared with the
    other caller's), fixed seeds and a fixed length."""
    return [SampleRequest(Prompt(raw=f"{name}{i}: the quick brown fox jumps over the lazy dog {i}"),
                          SamplingParams(temperature=0.9, max_tokens=NEW_TOKENS, seed=100 * i + len(name),
                                         ignore_eos=True))
            for i in range(32)]


def concurrently(*calls: Callable[[], list]) -> list[list]:
    """Run the calls on their own threads, released together; their results in order."""
    start = threading.Barrier(len(calls))
    results: list[list] = [[] for _ in calls]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # surfaced below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def tokens(outputs: list[SampleOutput]) -> list[list[list[int]]]:
    return [[c.token_ids for c in o.completions] for o in outputs]


needs_kernels = pytest.mark.skipif(cpu_ops.load() is None,
                                   reason="exact tokens next to other requests need the C++ CPU kernels")


@needs_kernels
def test_two_callers_get_what_they_get_alone(tiny_model: LoadedModel) -> None:
    a_reqs, b_reqs = caller_requests("alpha"), caller_requests("beta")
    a_alone, b_alone = paged(tiny_model).sample(a_reqs), paged(tiny_model).sample(b_reqs)
    engine = paged(tiny_model)
    a_got, b_got = concurrently(lambda: engine.sample(a_reqs), lambda: engine.sample(b_reqs))
    assert tokens(a_got) == tokens(a_alone)
    assert tokens(b_got) == tokens(b_alone)
    # Each request's usage is its own: what it was alone, request by request.
    assert [o.usage for o in a_got] == [o.usage for o in a_alone]
    assert [o.usage for o in b_got] == [o.usage for o in b_alone]
    assert all(o.usage.generated_tokens == NEW_TOKENS for o in a_got + b_got)
    assert engine.blocks.num_live == 0 and not engine.scheduler.running


def test_two_callers_share_the_engine_steps(tiny_model: LoadedModel) -> None:
    """Run together, the callers' requests decode in the same steps: fewer steps than
    one caller after the other, and steps holding more rows than either caller has."""
    a_reqs, b_reqs = caller_requests("alpha"), caller_requests("beta")
    one_after_other = paged(tiny_model)
    one_after_other.sample(a_reqs)
    one_after_other.sample(b_reqs)
    sequential = one_after_other.stats()
    engine = paged(tiny_model)
    concurrently(lambda: engine.sample(a_reqs), lambda: engine.sample(b_reqs))
    together = engine.stats()
    assert sequential["peak_decode_rows"] == 32  # one caller's requests at a time
    assert together["peak_decode_rows"] > 32  # both callers' rows in one step
    assert together["steps"] < sequential["steps"] - NEW_TOKENS // 2
    assert together["decode_tokens"] == sequential["decode_tokens"]  # the same work, fewer steps


def test_many_callers_mixed_calls(tiny_model: LoadedModel) -> None:
    """Four threads at once, sampling (seeded and unseeded) and scoring."""
    engine = paged(tiny_model)
    prompts = [Prompt.user(f"Is {i} + {i} = {2 * i}? Answer Yes or No.") for i in range(6)]
    scores = [NextTokenRequest(p, ("Yes", "No")) for p in prompts]
    unseeded = [SampleRequest(p, SamplingParams(n=3, temperature=1.0, max_tokens=6)) for p in prompts]
    seeded = caller_requests("gamma")[:8]
    want_scores = paged(tiny_model).score_next(scores)
    want_seeded = paged(tiny_model).sample(seeded)
    got = concurrently(lambda: engine.score_next(scores), lambda: engine.sample(unseeded),
                       lambda: engine.sample(seeded), lambda: engine.sample(unseeded))
    got_scores: list[ScoreOutput] = got[0]
    for a, b in zip(got_scores, want_scores):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
    if engine.cpu_kernels:  # batch-invariant: the seeded caller gets its tokens whatever else ran
        assert tokens(got[2]) == tokens(want_seeded)
    for outs in (got[1], got[3]):
        assert [len(o.completions) for o in outs] == [3] * 6
        assert all(o.usage.generated_tokens == sum(len(c.token_ids) for c in o.completions) for o in outs)
    assert engine.blocks.num_live == 0


def test_a_failed_step_fails_every_caller_and_the_engine_recovers(tiny_model: LoadedModel,
                                                                   monkeypatch) -> None:
    engine = paged(tiny_model)
    run = engine.runner.run
    failed = []

    def flaky(batch):
        if len(batch.sequences) > 8 and not failed:  # both callers' sequences are in this step
            failed.append(True)
            raise RuntimeError("simulated kernel failure")
        return run(batch)

    monkeypatch.setattr(engine.runner, "run", flaky)
    a_reqs, b_reqs = caller_requests("alpha")[:8], caller_requests("beta")[:8]
    outcomes: list[str] = []

    def call(reqs: list[SampleRequest]) -> list:
        try:
            engine.sample(reqs)
            outcomes.append("ok")
        except RuntimeError as exc:
            outcomes.append(str(exc))
        return []

    concurrently(lambda: call(a_reqs), lambda: call(b_reqs))
    assert len(outcomes) == 2 and all("simulated kernel failure" in o for o in outcomes)
    assert engine.blocks.num_live == 0 and not engine.scheduler.running and not engine.scheduler.waiting
    again = engine.sample(a_reqs)  # the engine still serves
    assert all(o.usage.generated_tokens == NEW_TOKENS for o in again)


def test_hf_engine_is_safe_from_threads(tiny_model: LoadedModel) -> None:
    """One call at a time on the torch thread (capabilities say so); each caller's
    results and usage as when alone."""
    a_reqs, b_reqs = caller_requests("alpha")[:8], caller_requests("beta")[:8]
    a_alone, b_alone = HFEngine(tiny_model).sample(a_reqs), HFEngine(tiny_model).sample(b_reqs)
    engine: Engine = HFEngine(tiny_model)
    a_got, b_got = concurrently(lambda: engine.sample(a_reqs), lambda: engine.sample(b_reqs))
    assert tokens(a_got) == tokens(a_alone) and tokens(b_got) == tokens(b_alone)
    assert [o.usage for o in a_got] == [o.usage for o in a_alone]
    assert [o.usage for o in b_got] == [o.usage for o in b_alone]
