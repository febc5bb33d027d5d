"""PagedEngine: the engine contract, exactness against transformers, prefix sharing, memory."""

from __future__ import annotations

import math

import pytest
import torch

import engine_contract as contract
from engine_contract import completions_of, logprobs_of, totals_of
from ttsc.common.errors import UserError
from ttsc.kernels import cpu_ops
from ttsc.runtime.engines.base import (
    ContinuationRequest,
    NextTokenRequest,
    Prompt,
    SampleRequest,
    SamplingParams,
    Usage,
)
from ttsc.runtime.engines.paged.block_manager import BlockManager
from ttsc.runtime.engines.paged.engine import PagedEngine
from ttsc.runtime.engines.paged.model import Linear, LlamaModel, rope_inv_freq
from ttsc.runtime.engines.paged.radix import RadixCache
from ttsc.runtime.engines.paged.sampler import RowSettings, sample, uniform
from ttsc.runtime.models import LoadedModel, tiny_random_model

MiB = 1 << 20


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tiny model's matrices are too small to share: a second OpenMP thread only
    adds synchronization, which stalls for milliseconds when the machine is busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fp32(loaded: LoadedModel, **kw) -> PagedEngine:
    kw.setdefault("kv_memory_bytes", 16 * MiB)
    return PagedEngine(loaded, dtype=torch.float32, **kw)


def cramped(loaded: LoadedModel, **kw) -> PagedEngine:
    """Small blocks, a pool of 40 blocks and 24-token steps: chunking, preemption, eviction."""
    block_bytes = 2 * loaded.model.config.num_hidden_layers * 2 * 16 * 4 * 4  # kv heads 2, dim 16
    return fp32(loaded, block_size=4, kv_memory_bytes=40 * block_bytes, max_batch_tokens=24, **kw)


def assert_clean(engine: PagedEngine) -> None:
    """Nothing is held after a call; block states and the radix tree are consistent."""
    engine.blocks.check_invariants()
    engine.radix.check_invariants()
    assert engine.blocks.num_live == 0
    assert not engine.scheduler.running and not engine.scheduler.waiting


# ------------------------------------------------------------------ the contract

# The torch path (what runs where the C++ kernels cannot be built).
@pytest.mark.parametrize("check", contract.ENGINE_CHECKS, ids=lambda c: c.__name__)
def test_contract(check, tiny_model: LoadedModel) -> None:
    check(lambda: fp32(tiny_model, cpu_kernels=False))


# The same checks on a pool too small for the work: chunked prefill, waiting,
# preemption and eviction happen all along.
@pytest.mark.parametrize("check", contract.ENGINE_CHECKS, ids=lambda c: c.__name__)
def test_contract_cramped(check, tiny_model: LoadedModel) -> None:
    check(lambda: cramped(tiny_model, cpu_kernels=False))


@pytest.mark.parametrize("check", contract.MODEL_CHECKS, ids=lambda c: c.__name__)
def test_contract_with_model(check, tiny_model: LoadedModel) -> None:
    check(lambda: fp32(tiny_model), tiny_model)


# The engine with its C++ CPU kernels (decode attention over the pool, fused
# norm, RoPE + store, SiLU, sampling), in fp32 so results are comparable, on
# roomy and cramped pools (block size 4: chunks of keys cross blocks).
@pytest.mark.parametrize("check", contract.ENGINE_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("make", [fp32, cramped], ids=["roomy", "cramped"])
def test_contract_cpu_kernels(check, make, tiny_model: LoadedModel) -> None:
    if cpu_ops.load() is None:
        pytest.skip("the C++ CPU kernels could not be built here")

    def engine() -> PagedEngine:
        e = make(tiny_model, cpu_kernels=True)
        assert e.cpu_kernels
        return e
    check(engine)


def test_contract_eos() -> None:
    biased = contract.eos_biased_model()
    contract.check_eos(lambda: fp32(biased), biased)


def test_cascade_kernel_path_agrees(tiny_model: LoadedModel) -> None:
    """The kernels package's cascade dispatcher (torch reference here) gives the same tokens."""
    reqs = [SampleRequest(p, SamplingParams(n=4, temperature=0.8, max_tokens=10, seed=5))
            for p in contract.PROMPTS]
    ours = completions_of(fp32(tiny_model).sample(reqs))
    kernel = completions_of(fp32(tiny_model, use_kernels=True).sample(reqs))
    assert [[c.token_ids for c in cs] for cs in ours] == [[c.token_ids for c in cs] for cs in kernel]


def test_kernel_scoring_and_sampling_paths_agree(tiny_model: LoadedModel) -> None:
    """With kernels on, score_next goes through the fused verifier-scoring
    dispatcher and sampling through the fused sampler (torch references here)."""
    plain, kernel = fp32(tiny_model), fp32(tiny_model, use_kernels=True)
    score = [NextTokenRequest(p, ("Yes", "No")) for p in contract.PROMPTS]
    for a, b in zip(logprobs_of(plain.score_next(score)), logprobs_of(kernel.score_next(score))):
        assert a == pytest.approx(b, abs=1e-5)
    greedy = [SampleRequest(p, SamplingParams(n=2, temperature=0, max_tokens=8)) for p in contract.PROMPTS]
    assert ([[c.token_ids for c in cs] for cs in completions_of(plain.sample(greedy))]
            == [[c.token_ids for c in cs] for cs in completions_of(kernel.sample(greedy))])
    cut = [SampleRequest(p, SamplingParams(n=3, temperature=0.9, top_k=5, top_p=0.9, max_tokens=8, seed=1))
           for p in contract.PROMPTS]
    for cs in completions_of(kernel.sample(cut)):
        for c in cs:
            assert len(c.token_ids) == len(c.logprobs) and all(lp <= 0 for lp in c.logprobs)


# ------------------------------------------------------- exactness vs transformers

def _greedy_reference(loaded: LoadedModel, ids: list[int], n: int) -> tuple[list[int], list[float]]:
    tokens, logprobs = [], []
    ids = list(ids)
    with torch.inference_mode():
        for _ in range(n):
            logp = torch.log_softmax(loaded.model(torch.tensor([ids])).logits[0, -1].float(), -1)
            token = int(logp.argmax())
            tokens.append(token)
            logprobs.append(float(logp[token]))
            ids.append(token)
    return tokens, logprobs


ARCHS = {
    "llama3-rope": dict(rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 64}),
    "tied-embeddings": dict(tie_word_embeddings=True, num_key_value_heads=1),
    "llama-biases": dict(attention_bias=True, mlp_bias=True),
    "qwen2-bias": "qwen2",
}


def _arch_model(kind) -> LoadedModel:
    if kind != "qwen2":
        loaded = tiny_random_model(seed=3, **kind)
    else:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        base = tiny_random_model(seed=3)
        cfg = Qwen2Config(vocab_size=base.model.config.vocab_size, hidden_size=64, intermediate_size=128,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=512, initializer_range=0.3,
                          tie_word_embeddings=False, eos_token_id=base.tokenizer.eos_token_id)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(3)
            model = Qwen2ForCausalLM(cfg).eval()
        loaded = LoadedModel("qwen2-tiny", model, base.tokenizer, torch.device("cpu"))
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(4)
        for name, param in loaded.model.named_parameters():
            if name.endswith(".bias"):  # biases start at zero; make them matter
                param.normal_(0, 0.5)
    return loaded


@pytest.mark.parametrize("kind", ARCHS.values(), ids=ARCHS.keys())
def test_greedy_and_logprobs_match_transformers(kind) -> None:
    loaded = _arch_model(kind)
    engine = fp32(loaded, cpu_kernels=False)  # the torch path; the kernels' twin test is below
    prompts = [Prompt.user("What is 2+3?"), Prompt(raw="The quick brown fox jumps over the lazy dog.")]
    out = completions_of(engine.sample([SampleRequest(p, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
                         for p in prompts]))
    for prompt, [c] in zip(prompts, out):
        tokens, logprobs = _greedy_reference(loaded, engine.tokenize(prompt), 12)
        assert c.token_ids == tokens
        assert max(abs(a - b) for a, b in zip(c.logprobs, logprobs)) < 1e-4


@pytest.mark.parametrize("kind", ARCHS.values(), ids=ARCHS.keys())
def test_cpu_kernels_match_transformers(kind) -> None:
    """fp32 through the C++ kernels: greedy tokens and logprobs still transformers'."""
    if cpu_ops.load() is None:
        pytest.skip("the C++ CPU kernels could not be built here")
    loaded = _arch_model(kind)
    engine = fp32(loaded, cpu_kernels=True)
    assert engine.cpu_kernels
    prompts = [Prompt.user("What is 2+3?"), Prompt(raw="The quick brown fox jumps over the lazy dog.")]
    out = completions_of(engine.sample([SampleRequest(p, SamplingParams(n=3, temperature=0, max_tokens=12, ignore_eos=True))
                         for p in prompts]))
    for prompt, samples in zip(prompts, out):
        tokens, logprobs = _greedy_reference(loaded, engine.tokenize(prompt), 12)
        for c in samples:  # forked greedy samples decode as a cascade group
            assert c.token_ids == tokens
            assert max(abs(a - b) for a, b in zip(c.logprobs, logprobs)) < 1e-4


def test_cpu_kernels_are_the_cpu_default(tiny_model: LoadedModel, monkeypatch) -> None:
    if cpu_ops.load() is None:
        pytest.skip("the C++ CPU kernels could not be built here")
    assert PagedEngine(tiny_model, dtype=torch.bfloat16, kv_memory_bytes=16 * MiB).cpu_kernels
    # fp32 too: the kernels are the batch-invariant path (test_batch_invariance.py), and
    # stay within 1e-4 of transformers (test_cpu_kernels_match_transformers).
    assert fp32(tiny_model).cpu_kernels
    assert not fp32(tiny_model, cpu_kernels=False).cpu_kernels
    assert not PagedEngine(tiny_model, dtype=torch.bfloat16, kv_memory_bytes=16 * MiB,
                           cpu_kernels=False).cpu_kernels
    monkeypatch.setenv("TTSC_CPU_KERNELS", "0")
    cpu_ops.load.cache_clear()
    try:
        assert not PagedEngine(tiny_model, dtype=torch.bfloat16, kv_memory_bytes=16 * MiB).cpu_kernels
    finally:
        monkeypatch.delenv("TTSC_CPU_KERNELS")
        cpu_ops.load.cache_clear()


def test_bf16_engine_tracks_fp32(tiny_model: LoadedModel) -> None:
    """The bf16 path (prepacked oneDNN weights on CPU, bf16 KV) stays close to fp32."""
    prompts = [Prompt.user("What is 2+3?"), Prompt(raw="The quick brown fox jumps")]
    reqs = [SampleRequest(p, contract.greedy(4, ignore_eos=True)) for p in prompts]
    exact = completions_of(fp32(tiny_model).sample(reqs))
    half = completions_of(PagedEngine(tiny_model, dtype=torch.bfloat16, kv_memory_bytes=16 * MiB).sample(reqs))
    for [a], [b] in zip(exact, half):
        assert a.token_ids[0] == b.token_ids[0]
        assert abs(a.logprobs[0] - b.logprobs[0]) < 0.1


def test_prepacked_linear_equals_f_linear() -> None:
    w, b = torch.randn(96, 64).bfloat16(), torch.randn(96).bfloat16()
    x = torch.randn(5, 64).bfloat16()
    lin = Linear(w, b)
    if lin.packed is None:
        pytest.skip("no oneDNN bf16 on this CPU")
    assert torch.equal(lin(x), torch.nn.functional.linear(x, w, b))


def test_rope_llama3_scaling_matches_transformers() -> None:
    loaded = _arch_model(ARCHS["llama3-rope"])
    ours = rope_inv_freq(LlamaModel.from_hf(loaded.model, torch.device("cpu"), torch.float32).cfg)
    theirs = loaded.model.model.rotary_emb.inv_freq
    assert torch.allclose(ours, theirs.float(), rtol=1e-6, atol=0)


def test_unsupported_architecture_is_a_user_error(tiny_model: LoadedModel) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=300))
    with pytest.raises(UserError, match="does not support `gpt2`"):
        PagedEngine(LoadedModel("gpt2", gpt2, tiny_model.tokenizer, torch.device("cpu")))


def test_forked_samples_score_as_transformers_does(tiny_model: LoadedModel) -> None:
    """Every fork's logprobs equal a full forward over its own tokens: no fork read another's KV."""
    engine = fp32(tiny_model, block_size=4)
    prompt = Prompt.user("Is the proposed solution correct? Answer Yes or No.")
    ids = engine.tokenize(prompt)
    [samples] = completions_of(engine.sample([SampleRequest(prompt, SamplingParams(
        n=6, temperature=1.3, max_tokens=14, ignore_eos=True, seed=4))]))
    assert len({tuple(s.token_ids) for s in samples}) == 6
    with torch.inference_mode():
        for s in samples:
            full = torch.tensor([ids + s.token_ids])
            logits = tiny_model.model(full).logits[0, len(ids) - 1:-1].float() / 1.3
            ref = torch.log_softmax(logits, -1).gather(1, torch.tensor(s.token_ids)[:, None])[:, 0]
            assert torch.allclose(torch.tensor(s.logprobs), ref, atol=1e-4)
    assert engine.stats()["cow_copies"] >= 5  # the shared partial block was copied, not recomputed
    assert_clean(engine)


def test_chunked_and_batched_prefill_match_one_shot(tiny_model: LoadedModel) -> None:
    """Long prompts cut into 40-token chunks, several per step, next to decoding rows."""
    prompts = [Prompt(raw="The quick brown fox jumps over the lazy dog. " * 12),
               Prompt.user("Is the proposed solution correct? Answer Yes or No. " * 5),
               Prompt.user("What is 2+3?")]
    reqs = [SampleRequest(p, SamplingParams(n=2, temperature=0.7, max_tokens=8, seed=3, ignore_eos=True))
            for p in prompts]
    whole = fp32(tiny_model)
    one_shot = completions_of(whole.sample(reqs))
    engine = fp32(tiny_model, block_size=8, max_batch_tokens=40)
    chunked = completions_of(engine.sample(reqs))
    for a, b in zip(one_shot, chunked):
        for x, y in zip(a, b):
            assert x.token_ids == y.token_ids
            assert max(abs(p - q) for p, q in zip(x.logprobs, y.logprobs)) < 1e-4
    longest = max(len(engine.tokenize(p)) for p in prompts)
    assert longest > 3 * 40  # so the long prompt really took several steps
    assert engine.stats()["steps"] >= whole.stats()["steps"] + 3
    assert_clean(engine)


# ----------------------------------------------------------------- prefix sharing

def test_radix_hits_and_misses_are_exact(tiny_model: LoadedModel) -> None:
    bs = 4
    engine = fp32(tiny_model, block_size=bs)
    prompt = Prompt(raw="The quick brown fox jumps over the lazy dog. " * 2)
    ids = engine.tokenize(prompt)
    n_tok = len(ids)
    params = SamplingParams(n=5, temperature=1.0, max_tokens=3, ignore_eos=True, seed=1)

    [output] = engine.sample([SampleRequest(prompt, params)])
    s = engine.stats()
    assert (s["radix_hits_tokens"], s["radix_miss_tokens"]) == (0, n_tok)
    assert s["prefill_tokens_computed"] == n_tok  # once, not 5 times
    assert s["prefill_tokens_requested"] == 5 * n_tok
    assert s["fork_shared_tokens"] == 4 * n_tok
    u = output.usage
    assert (u.prompt_tokens, u.prompt_tokens_computed, u.prompt_tokens_reused) == (5 * n_tok, n_tok, 4 * n_tok)

    # The same prompt again: all of it is cached but the last token (its logits
    # are needed), its partly filled last block too (stored completed by the
    # first call's samples: a cached block used in part is copied, not shared).
    completions_of(engine.sample([SampleRequest(prompt, params)]))
    s2 = engine.stats()
    hits = n_tok - 1
    assert s2["radix_hits_tokens"] - s["radix_hits_tokens"] == hits
    assert s2["radix_miss_tokens"] - s["radix_miss_tokens"] == n_tok - hits
    assert s2["prefill_tokens_computed"] - s["prefill_tokens_computed"] == n_tok - hits

    # A prompt sharing only a prefix: hits are exactly the shared tokens.
    other = Prompt(raw="The quick brown fox jumps over the lazy dog. The end.")
    other_ids = engine.tokenize(other)
    common = next(i for i, (a, b) in enumerate(zip(ids, other_ids)) if a != b)
    logprobs_of(engine.score_next([NextTokenRequest(other, ("Yes", "No"))]))
    s3 = engine.stats()
    assert s3["radix_hits_tokens"] - s2["radix_hits_tokens"] == common
    assert s3["radix_miss_tokens"] - s2["radix_miss_tokens"] == len(other_ids) - common
    assert_clean(engine)


def test_prefix_cache_off_computes_every_prompt(tiny_model: LoadedModel) -> None:
    """The no-sharing baseline: same tokens as with the cache, every prompt token computed."""
    prompt = Prompt(raw="The quick brown fox jumps over the lazy dog. " * 2)
    reqs = [SampleRequest(prompt, SamplingParams(n=5, temperature=1.0, max_tokens=4, ignore_eos=True, seed=1))]
    cached, plain = fp32(tiny_model, block_size=4), fp32(tiny_model, block_size=4, prefix_cache=False)
    cached_usage, plain_usage = Usage(), Usage()
    for _ in range(2):  # the second time the cache holds the whole prompt
        a, b = cached.sample(reqs), plain.sample(reqs)
        assert [c.token_ids for c in a[0].completions] == [c.token_ids for c in b[0].completions]
        cached_usage, plain_usage = cached_usage + a[0].usage, plain_usage + b[0].usage
    n_tok = len(plain.tokenize(prompt))
    u = plain_usage
    assert (u.prompt_tokens, u.prompt_tokens_computed, u.prompt_tokens_reused) == (10 * n_tok, 10 * n_tok, 0)
    assert plain.stats()["radix_hits_tokens"] == 0 and plain.stats()["prefill_tokens_computed"] == 10 * n_tok
    assert cached_usage.prompt_tokens_computed < 2 * n_tok
    assert_clean(plain)


def test_verifier_calls_share_the_question(tiny_model: LoadedModel) -> None:
    """Candidates scored against one question: the question is computed once."""
    engine = fp32(tiny_model, block_size=4)
    question = "Problem: What is 2+3? Think step by step.\nProposed solution: "
    cands = ["5", "6", "The answer is 5.", "First, add the numbers."]
    reqs = [ContinuationRequest(Prompt(raw=question), c) for c in cands]
    first = totals_of(engine.score_continuations(reqs[:1]))
    totals_of(engine.score_continuations(reqs[1:]))
    q_len = len(engine.tokenize(Prompt(raw=question)))
    assert engine.stats()["radix_hits_tokens"] >= 3 * ((q_len - 2) // 4 * 4)
    fresh = [totals_of(fp32(tiny_model).score_continuations([r]))[0] for r in reqs]
    assert first[0] == pytest.approx(fresh[0], abs=1e-4)
    again = totals_of(engine.score_continuations(reqs))
    assert again == pytest.approx(fresh, abs=1e-4)


def test_extend_reuses_the_candidate_prefix(tiny_model: LoadedModel) -> None:
    engine = fp32(tiny_model, block_size=4)
    prompt = Prompt.user("The quick brown fox")
    p_len = len(engine.tokenize(prompt))
    [[head]] = completions_of(engine.sample([SampleRequest(prompt, contract.greedy(16, ignore_eos=True))]))
    before = engine.stats()["radix_hits_tokens"]
    completions_of(engine.extend([(prompt, head.text)], contract.greedy(4, ignore_eos=True)))
    # Blocks of the prompt and of the generated text were cached while decoding:
    # everything up to where re-tokenizing the text departs from the generated ids.
    new_ids = engine.tokenize(prompt.continued(head.text))
    old_ids = engine.tokenize(prompt) + head.token_ids
    same = next((i for i, (a, b) in enumerate(zip(new_ids, old_ids)) if a != b), len(new_ids))
    expected = min(same, p_len + 15, len(new_ids) - 1) // 4 * 4
    assert expected >= p_len // 4 * 4 + 8  # the generated blocks do count here
    assert engine.stats()["radix_hits_tokens"] - before == expected


def test_greedy_forks_deduplicate_blocks(tiny_model: LoadedModel) -> None:
    """Identical greedy samples fill identical blocks; the radix tree keeps one copy."""
    engine = fp32(tiny_model, block_size=4)
    out = completions_of(engine.sample([SampleRequest(contract.PROMPTS[0], contract.greedy(16, n=4, ignore_eos=True))]))
    assert len({tuple(c.token_ids) for c in out[0]}) == 1
    assert engine.stats()["dedup_blocks"] >= 3 * 3
    assert_clean(engine)


def test_lru_eviction_of_unreferenced_blocks() -> None:
    blocks = BlockManager(num_blocks=4, block_size=2, block_bytes=10)
    radix = RadixCache(blocks)
    paths = {}
    for name, tokens in (("a", (1, 2, 3, 4)), ("b", (5, 6, 7, 8))):
        node = radix.root
        for i in range(2):
            b = blocks.allocate()
            node = radix.insert(node, tokens[2 * i:2 * i + 2], b)
        paths[name] = node
    for b in range(4):
        blocks.decref(b)  # both sequences finished: all four blocks cached, idle
    assert blocks.num_free == 0 and blocks.num_allocatable == 4
    assert [n.block_id for n in radix.match([1, 2, 3, 4])[0]] == [0, 1]  # touch "a"
    new = blocks.allocate()  # evicts the least recently used leaf: the end of "b"
    assert new == 3 and radix.match([5, 6, 7, 8]) == ([radix.node_of_block[2]], 2)
    held = [n.block_id for n in radix.match([1, 2, 3, 4])[0]]
    for b in held:
        blocks.incref(b)  # referenced blocks are never evicted
    assert blocks.allocate() == 2
    with pytest.raises(MemoryError):
        blocks.allocate()
    blocks.check_invariants()
    radix.check_invariants()


def test_freed_blocks_are_reused_first() -> None:
    """Last freed, first reused: a long-lived engine keeps to pool pages it has touched."""
    blocks = BlockManager(num_blocks=8, block_size=2, block_bytes=10)
    got = [blocks.allocate() for _ in range(3)]
    assert got == [0, 1, 2]  # a fresh pool from its start
    blocks.decref(1)
    blocks.decref(0)
    assert [blocks.allocate(), blocks.allocate(), blocks.allocate()] == [0, 1, 3]
    blocks.check_invariants()


def test_radix_clear_frees_idle_blocks_only() -> None:
    blocks = BlockManager(num_blocks=4, block_size=2, block_bytes=10)
    radix = RadixCache(blocks)
    node = radix.root
    for key in ((1, 2), (3, 4), (5, 6)):
        node = radix.insert(node, key, blocks.allocate())
    blocks.decref(2)  # the leaf is idle; its parents are still held
    assert radix.clear() == 1 and radix.match([1, 2, 3, 4, 5, 6])[1] == 4
    blocks.decref(1)
    blocks.decref(0)
    assert radix.clear() == 2 and radix.match([1, 2])[1] == 0 and radix.num_nodes == 0
    assert blocks.num_free == 4
    blocks.check_invariants()
    radix.check_invariants()


def test_reset_prefix_cache_computes_the_prompt_again(tiny_paged) -> None:
    prompt = Prompt(raw="The quick brown fox jumps over the lazy dog. " * 2)
    request = [SampleRequest(prompt, SamplingParams(n=3, max_tokens=3, ignore_eos=True, seed=1))]
    n_tok = len(tiny_paged.tokenize(prompt))
    first = tiny_paged.sample(request)[0]
    assert tiny_paged.reset_prefix_cache() > 0
    again = tiny_paged.sample(request)[0]
    assert again.usage.prompt_tokens_computed == first.usage.prompt_tokens_computed == n_tok
    assert completions_of([again]) == completions_of([first])  # same seeds, same tokens
    assert tiny_paged.stats()["kv_live_bytes"] == 0
    assert_clean(tiny_paged)


# ------------------------------------------------------------------------ memory

def test_memory_cap_holds_under_a_burst(tiny_model: LoadedModel) -> None:
    prompts = [Prompt.user(f"Question {i}: what is {i} + {2 * i}?") for i in range(12)]
    reqs = [SampleRequest(p, SamplingParams(n=3, temperature=0.9, max_tokens=20, ignore_eos=True,
                                            seed=i)) for i, p in enumerate(prompts)]
    reqs += [SampleRequest(p, contract.greedy(12)) for p in prompts[:6]]
    roomy = completions_of(fp32(tiny_model).sample(reqs))
    engine = cramped(tiny_model)
    tight = completions_of(engine.sample(reqs))
    assert [[c.token_ids for c in cs] for cs in tight] == [[c.token_ids for c in cs] for cs in roomy]
    s = engine.stats()
    assert s["kv_peak_bytes"] <= s["kv_cap_bytes"] <= s["kv_requested_bytes"]
    assert s["kv_peak_bytes"] == s["kv_cap_bytes"]  # the pool was full: requests had to wait
    assert s["preemptions"] > 0 and s["radix_evictions"] > 0
    assert_clean(engine)


def test_request_larger_than_the_cap_is_a_user_error(tiny_model: LoadedModel) -> None:
    engine = cramped(tiny_model)
    with pytest.raises(UserError, match="KV cache"):
        completions_of(engine.sample([SampleRequest(contract.PROMPTS[0], SamplingParams(max_tokens=500))]))
    with pytest.raises(UserError, match="fewer than 2 KV blocks"):
        fp32(tiny_model, kv_memory_bytes=100)


def test_kv_bytes_are_exact(tiny_model: LoadedModel) -> None:
    cfg = tiny_model.model.config
    engine = fp32(tiny_model, block_size=8, kv_memory_bytes=MiB)
    per_block = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * 8 * 16 * 4
    assert engine.blocks.block_bytes == per_block
    assert engine.runner.kv_pool.numel() * 4 == engine.stats()["kv_cap_bytes"] == MiB // per_block * per_block
    completions_of(engine.sample([SampleRequest(Prompt(raw="x" * 40), contract.greedy(9, ignore_eos=True))]))
    fed = len(engine.tokenize(Prompt(raw="x" * 40))) + 8  # the last sampled token is never fed
    assert engine.stats()["kv_peak_live_bytes"] == -(-fed // 8) * per_block


# ----------------------------------------------------------------------- sampler

def test_uniform_stream_is_deterministic_and_uniform() -> None:
    draws = [uniform(7, k) for k in range(4000)]
    assert draws == [uniform(7, k) for k in range(4000)]
    assert draws != [uniform(8, k) for k in range(4000)]
    assert all(0.0 <= u < 1.0 for u in draws)
    assert abs(sum(draws) / len(draws) - 0.5) < 0.02


def test_top_p_beyond_the_candidate_window() -> None:
    """A flat distribution where top_p needs more than the first 1024 candidates."""
    v = 2048
    logits = -0.001 * torch.arange(v, dtype=torch.float32).repeat(2, 1)  # token i is the i-th likeliest
    probs = torch.softmax(logits[0], -1)
    allowed = int(((probs.cumsum(0) - probs) < 0.9).sum())  # the nucleus: tokens [0, allowed)
    assert allowed > 1500
    seen = set()
    for k in range(100):
        tokens, logprobs = sample(logits, [RowSettings(1.0, 0, 0.9, seed, k) for seed in (1, 2)])
        seen.update(tokens)
        for t, lp in zip(tokens, logprobs):
            assert math.isclose(lp, float(probs[t].log()), abs_tol=1e-5)
    assert max(seen) < allowed and max(seen) > 1024


# ------------------------------------------------------------------- real model

@pytest.mark.slow
def test_embedded_model_greedy_matches_transformers() -> None:
    from ttsc.runtime.models import load_model

    loaded = load_model("smollm2-135m")
    engine = PagedEngine(loaded, dtype=torch.float32, kv_memory_bytes=64 * MiB)
    prompts = [Prompt.user("What is 7 + 5?"), Prompt.user("Name a color.", system="Be brief.")]
    out = completions_of(engine.sample([SampleRequest(p, contract.greedy(8, n=2)) for p in prompts]))
    for prompt, cs in zip(prompts, out):
        ids = torch.tensor([engine.tokenize(prompt)])
        with torch.inference_mode():
            gen = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                        max_new_tokens=8, pad_token_id=loaded.tokenizer.pad_token_id)
        expected = gen[0, ids.shape[1]:].tolist()
        eos = loaded.eos_token_ids
        expected = expected[:next((i for i, t in enumerate(expected) if t in eos), len(expected))]
        assert all(c.token_ids == expected for c in cs)
