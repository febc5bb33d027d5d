"""Batch invariance: a request's samples do not depend on what shares its batch.

Same seed, same tokens and the same log-probabilities (bit for bit), whether a
request runs alone or among other requests, other callers, with its prompt cut
into prefill chunks, after the prefix cache was warmed by other prompts, or
after a preemption made it recompute. This holds on the paged engine's C++ CPU
kernels path, in fp32 and bf16 (runtime/engines/paged/engine.py says why and
where it does not hold).
"""

from __future__ import annotations

import threading

import pytest
import torch

from ttsc.kernels import cpu_ops
from ttsc.runtime.engines.base import (
    ContinuationRequest,
    Prompt,
    SampleOutput,
    SampleRequest,
    SamplingParams,
)
from ttsc.runtime.engines.paged.engine import PagedEngine
from ttsc.runtime.engines.paged.model import Linear
from ttsc.runtime.models import LoadedModel

pytestmark = pytest.mark.skipif(cpu_ops.load() is None, reason="the C++ CPU kernels could not be built here")

MiB = 1 << 20
DTYPES = [torch.float32, torch.bfloat16]
SYSTEM = "You check answers carefully and explain each step."
QUESTION = "What is 12 + 30? Think step by step."


def engine(loaded: LoadedModel, dtype: torch.dtype, **kw) -> PagedEngine:
    kw.setdefault("kv_memory_bytes", 16 * MiB)
    e = PagedEngine(loaded, dtype=dtype, **kw)
    assert e.cpu_kernels
    return e


def target() -> SampleRequest:
    return SampleRequest(Prompt.user(QUESTION, system=SYSTEM),
                         SamplingParams(n=4, temperature=0.8, max_tokens=24, seed=11, ignore_eos=True))


def mates(k: int) -> list[SampleRequest]:
    """Batch mates of every kind: a shared system prompt (cascade groups across
    requests), long raw prompts (chunked prefill), top-p and top-k rows, greedy
    rows, and the target's own prompt with other seeds (its blocks shared)."""
    out = []
    for i in range(k):
        kind = i % 4
        if kind == 0:
            out.append(SampleRequest(Prompt.user(f"What is {i} + {2 * i}? Think step by step.", system=SYSTEM),
                                     SamplingParams(n=3, temperature=1.0, max_tokens=10 + i, seed=i,
                                                    ignore_eos=True)))
        elif kind == 1:
            out.append(SampleRequest(Prompt(raw="The quick brown fox jumps over the lazy dog. " * (1 + i % 5)),
                                     SamplingParams(temperature=0.7, top_p=0.9, max_tokens=20, seed=i)))
        elif kind == 2:
            out.append(SampleRequest(Prompt.user("Name a color.", system=SYSTEM),
                                     SamplingParams(n=2, temperature=0, max_tokens=8)))
        else:
            out.append(SampleRequest(Prompt.user(QUESTION, system=SYSTEM),
                                     SamplingParams(n=5, temperature=1.2, top_k=20, max_tokens=16, seed=100 + i)))
    return out


def bits(out: SampleOutput) -> list[tuple[list[int], list[float]]]:
    return [(c.token_ids, c.logprobs) for c in out.completions]


def in_batch(e: PagedEngine, before: list[SampleRequest], after: list[SampleRequest]) -> SampleOutput:
    return e.sample(before + [target()] + after)[len(before)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_samples_are_the_same_bits_in_any_batch(tiny_model: LoadedModel, dtype: torch.dtype) -> None:
    alone = bits(engine(tiny_model, dtype).sample([target()])[0])
    assert len({tuple(t) for t, _ in alone}) > 1  # real sampling, not four copies of one greedy path
    for k in (1, 2, 3, 5, 8, 16):
        got = in_batch(engine(tiny_model, dtype), mates(k)[:k // 2], mates(k)[k // 2:])
        assert bits(got) == alone, f"{k} batch mates changed the samples"
    # Prompts cut into 24-token prefill chunks next to decoding rows, 4-token blocks
    # (cascade groups then round to 16 tokens), a pool so small that sequences wait
    # and get preempted and recompute.
    cramped = engine(tiny_model, dtype, block_size=4, max_batch_tokens=24, kv_memory_bytes=40 * 2048)
    got = in_batch(cramped, mates(6), [])
    assert cramped.stats()["preemptions"] > 0
    assert bits(got) == alone, "chunked prefill, small blocks or preemption changed the samples"
    # The prefix cache already holds the system prompt and the question from earlier calls.
    warm = engine(tiny_model, dtype)
    warm.sample(mates(4))
    hits = warm.stats()["radix_hits_tokens"]
    assert bits(in_batch(warm, [], mates(3))) == alone, "a warm prefix cache changed the samples"
    assert warm.stats()["radix_hits_tokens"] > hits


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_samples_are_the_same_bits_next_to_another_caller(tiny_model: LoadedModel, dtype: torch.dtype) -> None:
    alone = bits(engine(tiny_model, dtype).sample([target()])[0])
    e = engine(tiny_model, dtype)
    start = threading.Barrier(2)
    other: list[SampleOutput] = []

    def caller() -> None:
        start.wait()
        other.extend(e.sample(mates(8)))

    thread = threading.Thread(target=caller)
    thread.start()
    start.wait()
    got = e.sample([target()])[0]
    thread.join()
    assert len(other) == 8
    assert bits(got) == alone


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_scores_are_the_same_bits_in_any_batch(tiny_model: LoadedModel, dtype: torch.dtype) -> None:
    prompt = Prompt.user(QUESTION, system=SYSTEM)
    scored = ContinuationRequest(prompt, "First, add the numbers. Then, check the result. Finally, 42.")
    alone = engine(tiny_model, dtype).score_continuations([scored])[0].logprob
    others = [ContinuationRequest(prompt, f"The answer is {i}.") for i in range(6)]
    e = engine(tiny_model, dtype, max_batch_tokens=32)
    e.sample(mates(3))
    assert e.score_continuations(others[:3] + [scored] + others[3:])[3].logprob == alone


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(960, 576), (3072, 576), (576, 1536), (128, 64), (320, 64)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
def test_linear_rows_do_not_depend_on_the_row_count(dtype: torch.dtype, shape: tuple[int, int]) -> None:
    """The engine's matrix products (smollm2-135m's and the tiny model's shapes):
    each row the same bits for 1 to 70 rows and a few prefill-sized counts."""
    g = torch.Generator().manual_seed(0)
    lin = Linear((torch.randn(*shape, generator=g) * 0.05).to(dtype))
    if lin.packed is None:
        pytest.skip("no oneDNN prepacking here")
    x = torch.randn(600, shape[1], generator=g).to(dtype)
    reference = torch.cat([lin(x[i:i + 2]) for i in range(0, 600, 2)])
    for m in [*range(1, 71), 127, 300, 600]:
        assert torch.equal(lin(x[:m]), reference[:m]), f"{m} rows"
    assert torch.equal(lin(x[599:600]), reference[599:600])  # a lone row in the middle of nowhere


# ----------------------------------------------------------------- real model

QUESTIONS = [(3, 4), (12, 30), (7, 8), (25, 17), (9, 9), (41, 2), (5, 6), (13, 29)]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_embedded_model_samples_are_the_same_bits_in_any_batch(dtype: torch.dtype) -> None:
    """smollm2-135m, 8 questions x 4 samples x 40 tokens at temperature 0.7: each
    request alone, all in one call, in twos next to a long prompt, and in small
    prefill chunks. (Before the batch-invariant kernels, 7 of these 32 bf16
    samples drew other tokens alone than together.)"""
    from ttsc.runtime.models import load_model

    loaded = load_model("smollm2-135m")
    reqs = [SampleRequest(Prompt.user(f"What is {a} + {b}? Give the final answer as 'Answer: <number>'."),
                          SamplingParams(n=4, temperature=0.7, max_tokens=40, seed=1000 * a + b))
            for a, b in QUESTIONS]
    alone_engine = engine(loaded, dtype, kv_memory_bytes=64 * MiB)
    alone = [bits(alone_engine.sample([r])[0]) for r in reqs]
    together = [bits(o) for o in engine(loaded, dtype, kv_memory_bytes=64 * MiB).sample(reqs)]
    assert together == alone
    long_prompt = SampleRequest(Prompt(raw="Count: " + " ".join(str(i) for i in range(300))),
                                SamplingParams(n=2, temperature=1.0, max_tokens=30, seed=5))
    chunked = engine(loaded, dtype, kv_memory_bytes=64 * MiB, max_batch_tokens=96)
    pairs = [bits(o) for i in range(0, len(reqs), 2)
             for o in chunked.sample([long_prompt, *reqs[i:i + 2]])[1:]]
    assert pairs == alone


def test_products_run_in_slices_where_more_rows_would_round_otherwise(monkeypatch) -> None:
    """On AMX CPUs a bf16 product runs in slices of 32 rows (model.Linear):
    each row is what its slice's own product gives, a lone last row included."""
    from ttsc.runtime.engines.paged import model

    monkeypatch.setattr(model, "has_amx", lambda: True)
    g = torch.Generator().manual_seed(0)
    lin = Linear((torch.randn(960, 576, generator=g) * 0.05).bfloat16())
    if lin.packed is None:
        pytest.skip("no oneDNN prepacking here")
    assert lin.max_rows == model.AMX_MAX_ROWS == 32
    x = torch.randn(97, 576, generator=g).bfloat16()  # three slices of 32, then one row
    slices = torch.cat([lin._product(x[i:i + 32]) for i in range(0, 97, 32)])
    assert torch.equal(lin(x), slices)
    assert torch.equal(lin(x[96:]), slices[96:])
    assert Linear(torch.randn(64, 576, generator=g)).max_rows is None  # fp32: one product
