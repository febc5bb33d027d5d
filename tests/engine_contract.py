"""The engine contract as executable checks: any engine must pass them.

Each `check_*` takes `make`, a zero-argument factory of a fresh engine, and
raises AssertionError on a violation. Checks that need the model behind the
engine (a reference greedy decode, `model.generate`) also take its
`LoadedModel`. `check_all` runs the engine-only ones; `check_all_with_model`
adds the model-aware ones. Use them from a test module, e.g.

    @pytest.mark.parametrize("check", ENGINE_CHECKS, ids=lambda c: c.__name__)
    def test_contract(check, tiny_model):
        check(lambda: MyEngine(tiny_model))

Conventions the checks hold engines to:
- completion i of a request with seed s is what seed s + i gives alone;
- a row's output depends only on its own request (not batch mates or order);
- `token_ids` exclude EOS; on a stop string `text` is cut before it;
- `logprobs` are log-softmax after temperature (raw distribution when greedy),
  so at temperature 1 they sum to `score_continuations` of the same tokens;
- usage: `generated_tokens` is the sum of completion lengths, prompt tokens
  computed + reused == requested, one call per request.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ttsc.runtime.engines.base import (
    Completion,
    ContinuationOutput,
    ContinuationRequest,
    Engine,
    NextTokenRequest,
    Prompt,
    SampleOutput,
    SampleRequest,
    SamplingParams,
    ScoreOutput,
    total_usage,
)
from ttsc.runtime.models import LoadedModel, tiny_random_model

EngineFactory = Callable[[], Engine]

PROMPTS = (
    Prompt.user("What is 2+3?"),
    Prompt.user("Is the proposed solution correct? Answer Yes or No.",
                system="You check answers."),
    Prompt(raw="The quick brown fox"),
    Prompt.user("Add the numbers.").continued("First, "),
)
LOGPROB_TOL = 2e-3  # float32 sums over a few tokens, batched vs unbatched


def completions_of(outputs: Sequence[SampleOutput]) -> list[list[Completion]]:
    return [o.completions for o in outputs]


def logprobs_of(outputs: Sequence[ScoreOutput]) -> list[list[float]]:
    return [o.logprobs for o in outputs]


def totals_of(outputs: Sequence[ContinuationOutput]) -> list[float]:
    return [o.logprob for o in outputs]


def greedy(max_tokens: int = 12, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, **kw)


def _texts(completions: Sequence[Completion]) -> list[tuple[str, list[int]]]:
    return [(c.text, c.token_ids) for c in completions]


def _round_trips(engine: Engine, prompt: Prompt, completion: Completion) -> bool:
    """Whether re-tokenizing prompt + text gives back exactly the generated tokens."""
    return (engine.tokenize(prompt.continued(completion.text))
            == engine.tokenize(prompt) + completion.token_ids)


# ------------------------------------------------------------- engine-only checks

def check_n_completions_in_order(make: EngineFactory) -> None:
    """n completions per request, requests in order, sample i == seed s + i alone."""
    engine = make()
    params = SamplingParams(n=3, temperature=1.0, max_tokens=6, seed=11)
    requests = [SampleRequest(PROMPTS[0], params),
                SampleRequest(PROMPTS[2], SamplingParams(n=1, temperature=0.7, max_tokens=4,
                                                         seed=5)),
                SampleRequest(PROMPTS[1], SamplingParams(n=2, temperature=0.0, max_tokens=4))]
    out = completions_of(engine.sample(requests))
    assert [len(cs) for cs in out] == [3, 1, 2]
    for i, completion in enumerate(out[0]):
        alone = completions_of(engine.sample([SampleRequest(PROMPTS[0], SamplingParams(
            n=1, temperature=1.0, max_tokens=6, seed=11 + i))]))[0][0]
        assert _texts([completion]) == _texts([alone]), f"sample {i} is not seed 11+{i}"
    assert len({tuple(c.token_ids) for c in out[0]}) > 1, "different seeds gave equal samples"
    assert completions_of(engine.sample([])) == []
    assert completions_of(engine.sample([SampleRequest(PROMPTS[0], SamplingParams(n=0))])) == [[]]


def check_seed_independent_of_batching(make: EngineFactory) -> None:
    """Same seed, same output, whatever shares the batch and in which order."""
    target = SampleRequest(PROMPTS[1], SamplingParams(n=4, temperature=0.9, top_p=0.95,
                                                      max_tokens=8, seed=123))
    others = [SampleRequest(p, SamplingParams(n=3, temperature=1.2, top_k=20, max_tokens=10,
                                              seed=7)) for p in PROMPTS]
    others.append(SampleRequest(PROMPTS[0], greedy(5)))
    alone = completions_of(make().sample([target]))[0]
    engine = make()
    first = completions_of(engine.sample(others[:2] + [target] + others[2:]))[2]
    last = completions_of(engine.sample(list(reversed(others)) + [target]))[-1]
    assert _texts(first) == _texts(alone), "batch mates changed a seeded sample"
    assert _texts(last) == _texts(alone), "request order changed a seeded sample"
    again = completions_of(make().sample([target]))[0]
    assert _texts(again) == _texts(alone), "a fresh engine gave another sample for one seed"


def check_greedy_is_deterministic(make: EngineFactory) -> None:
    """Temperature 0: n copies agree, and top_k=1 / tiny top_p sampling equals greedy."""
    engine = make()
    for prompt in PROMPTS:
        out = completions_of(engine.sample([SampleRequest(prompt, greedy(10, n=3)),
                             SampleRequest(prompt, SamplingParams(temperature=1.0, top_k=1,
                                                                  max_tokens=10, seed=3)),
                             SampleRequest(prompt, SamplingParams(temperature=0.5, top_p=1e-9,
                                                                  max_tokens=10, seed=4))]))
        ref = out[0][0]
        assert all(c.token_ids == ref.token_ids for c in out[0])
        assert out[1][0].token_ids == ref.token_ids, "top_k=1 differs from greedy"
        assert out[2][0].token_ids == ref.token_ids, "top_p~0 differs from greedy"


def check_max_tokens(make: EngineFactory) -> None:
    """max_tokens bounds every completion; ignore_eos forces exactly max_tokens."""
    engine = make()
    out = completions_of(engine.sample([SampleRequest(p, SamplingParams(n=2, temperature=1.0, max_tokens=k,
                                                         seed=k, ignore_eos=True))
                         for p, k in zip(PROMPTS, (1, 3, 7, 0))]))
    for completions, k in zip(out, (1, 3, 7, 0)):
        for c in completions:
            assert len(c.token_ids) == k and c.finish_reason == "length", (k, c)
    for c in completions_of(engine.sample([SampleRequest(PROMPTS[0], SamplingParams(
            n=6, temperature=1.0, max_tokens=5, seed=9))]))[0]:
        assert len(c.token_ids) <= 5
        assert c.finish_reason in ("length", "eos")
        assert (len(c.token_ids) == 5) == (c.finish_reason == "length")


def check_stop_strings(make: EngineFactory) -> None:
    """A stop string cuts the text before its first occurrence and reports "stop"."""
    engine = make()
    checked = 0
    for prompt in PROMPTS:
        full = completions_of(engine.sample([SampleRequest(prompt, greedy(24, ignore_eos=True))]))[0][0]
        if len(full.text) < 6:
            continue
        stop = full.text[len(full.text) // 2: len(full.text) // 2 + 2]
        cut = full.text.find(stop)
        never = "\x00never\x00"
        got = completions_of(engine.sample([SampleRequest(prompt, greedy(24, ignore_eos=True,
                                                          stop=(never, stop)))]))[0][0]
        assert got.finish_reason == "stop", (stop, got)
        assert got.text == full.text[:cut], (stop, got.text, full.text)
        assert got.token_ids == full.token_ids[:len(got.token_ids)]
        assert len(got.logprobs) == len(got.token_ids)
        # The earliest of several stop strings wins.
        early = full.text[1:3]
        both = completions_of(engine.sample([SampleRequest(prompt, greedy(24, ignore_eos=True,
                                                           stop=(stop, early)))]))[0][0]
        assert both.text == full.text[:min(cut, full.text.find(early))]
        checked += 1
    assert checked, "no prompt produced enough text to test stop strings"
    nothing = completions_of(engine.sample([SampleRequest(PROMPTS[0], greedy(5, ignore_eos=True,
                                                              stop=("\x00never\x00",)))]))[0][0]
    assert nothing.finish_reason == "length"


def check_logprobs_match_scores(make: EngineFactory) -> None:
    """Per-token logprobs: one per token, summing to score_continuations of the text."""
    engine = make()
    checked = 0
    for prompt in PROMPTS:
        out = completions_of(engine.sample([SampleRequest(prompt, SamplingParams(n=4, temperature=1.0,
                                                                  max_tokens=6, seed=21)),
                             SampleRequest(prompt, greedy(6))]))
        for c in out[0] + out[1]:
            assert len(c.logprobs) == len(c.token_ids)
            assert all(lp <= 1e-6 and math.isfinite(lp) for lp in c.logprobs)
            if not _round_trips(engine, prompt, c):
                continue  # another tokenization of the same text scores differently
            [score] = totals_of(engine.score_continuations([ContinuationRequest(prompt, c.text)]))
            assert abs(score - sum(c.logprobs)) < LOGPROB_TOL * max(1, len(c.logprobs)), \
                (c, score)
            checked += 1
    assert checked >= 4, f"only {checked} completions re-tokenized to their own tokens"
    # Greedy logprobs come from the raw distribution, not a one-hot.
    g = completions_of(engine.sample([SampleRequest(PROMPTS[0], greedy(4))]))[0][0]
    assert any(lp < -1e-4 for lp in g.logprobs)


def check_score_next_matches_continuations(make: EngineFactory) -> None:
    """score_next of single-token choices equals score_continuations of them."""
    engine = make()
    checked = 0
    for prompt in PROMPTS:
        choices = ("Yes", "No", " Yes", "5")
        [scores] = logprobs_of(engine.score_next([NextTokenRequest(prompt, choices)]))
        assert len(scores) == len(choices)
        assert all(s <= 1e-6 for s in scores)
        base = engine.tokenize(prompt)
        conts = totals_of(engine.score_continuations([ContinuationRequest(prompt, c) for c in choices]))
        for choice, s, cont in zip(choices, scores, conts):
            if len(engine.tokenize(prompt.continued(choice))) != len(base) + 1:
                continue
            assert abs(s - cont) < LOGPROB_TOL, (choice, s, cont)
            checked += 1
    assert checked >= 4
    # Batched scoring equals one request at a time.
    reqs = [NextTokenRequest(p, ("Yes", "No")) for p in PROMPTS]
    batched = logprobs_of(engine.score_next(reqs))
    for req, row in zip(reqs, batched):
        single = logprobs_of(engine.score_next([req]))[0]
        assert all(abs(a - b) < LOGPROB_TOL for a, b in zip(row, single))
    assert totals_of(engine.score_continuations([ContinuationRequest(PROMPTS[0], "")])) == [0.0]


def check_extend_continues(make: EngineFactory) -> None:
    """extend continues a candidate: greedy in two steps equals greedy in one."""
    engine = make()
    checked = 0
    for prompt in PROMPTS:
        full = completions_of(engine.sample([SampleRequest(prompt, greedy(12, ignore_eos=True))]))[0][0]
        for k in (3, 5, 7):
            head = completions_of(engine.sample([SampleRequest(prompt, greedy(k, ignore_eos=True))]))[0][0]
            assert head.token_ids == full.token_ids[:k]
            if not _round_trips(engine, prompt, head):
                continue
            [[tail]] = completions_of(engine.extend([(prompt, head.text)], greedy(12 - k, ignore_eos=True)))
            assert tail.token_ids == full.token_ids[k:], (k, head, tail, full)
            assert head.text + tail.text == full.text
            checked += 1
    assert checked >= 2, "too few cut points re-tokenized to their own tokens"
    params = SamplingParams(n=2, temperature=1.0, max_tokens=4, seed=8)
    ext = completions_of(engine.extend([(PROMPTS[0], "First"), (PROMPTS[2], " jumps")], params))
    direct = completions_of(engine.sample([SampleRequest(PROMPTS[0].continued("First"), params),
                            SampleRequest(PROMPTS[2].continued(" jumps"), params)]))
    assert [_texts(cs) for cs in ext] == [_texts(cs) for cs in direct]


def check_usage_adds_up(make: EngineFactory) -> None:
    """Each request's own usage accounts for what it asked: calls, prompt tokens
    and generated tokens."""
    engine = make()
    requests = [SampleRequest(p, SamplingParams(n=n, temperature=1.0, max_tokens=5, seed=n))
                for p, n in zip(PROMPTS, (1, 2, 3, 4))]
    outputs = engine.sample(requests)
    out = completions_of(outputs)
    for request, output in zip(requests, outputs):
        u = output.usage
        assert u.calls == 1
        assert u.generated_tokens == sum(len(c.token_ids) for c in output.completions)
        assert u.prompt_tokens == request.params.n * len(engine.tokenize(request.prompt))
        assert u.prompt_tokens_computed + u.prompt_tokens_reused == u.prompt_tokens
    used = total_usage(outputs)
    assert used.calls == len(requests)
    assert used.generated_tokens == sum(len(c.token_ids) for cs in out for c in cs)
    assert used.prompt_tokens == sum(r.params.n * len(engine.tokenize(r.prompt))
                                     for r in requests)
    assert used.prompt_tokens_computed + used.prompt_tokens_reused == used.prompt_tokens
    scored = (total_usage(engine.score_next([NextTokenRequest(PROMPTS[0], ("Yes", "No"))]))
              + total_usage(engine.score_continuations([ContinuationRequest(PROMPTS[1], "Yes"),
                                                        ContinuationRequest(PROMPTS[2], " jumps")])))
    assert scored.calls == 3 and scored.generated_tokens == 0
    assert scored.prompt_tokens > 0
    assert scored.prompt_tokens_computed + scored.prompt_tokens_reused == scored.prompt_tokens


def check_tokenize(make: EngineFactory) -> None:
    """tokenize is deterministic and the assistant prefix extends the prompt text."""
    engine = make()
    for prompt in PROMPTS:
        ids = engine.tokenize(prompt)
        assert ids and ids == engine.tokenize(prompt)
        assert all(isinstance(i, int) for i in ids)
    plain, prefixed = engine.tokenize(PROMPTS[0]), engine.tokenize(PROMPTS[0].continued("Sure"))
    assert len(prefixed) > len(plain)


ENGINE_CHECKS: list[Callable[[EngineFactory], None]] = [
    check_n_completions_in_order,
    check_seed_independent_of_batching,
    check_greedy_is_deterministic,
    check_max_tokens,
    check_stop_strings,
    check_logprobs_match_scores,
    check_score_next_matches_continuations,
    check_extend_continues,
    check_usage_adds_up,
    check_tokenize,
]


def check_all(make: EngineFactory) -> None:
    for check in ENGINE_CHECKS:
        check(make)


# ------------------------------------------------------------- model-aware checks

def reference_greedy(loaded: LoadedModel, prompt_ids: list[int], max_tokens: int,
                     eos_ids: frozenset[int] = frozenset()) -> list[int]:
    """Argmax decoding by full forward passes, no cache, no batching: the plain truth."""
    ids = list(prompt_ids)
    out: list[int] = []
    with torch.inference_mode():
        for _ in range(max_tokens):
            logits = loaded.model(torch.tensor([ids], device=loaded.device)).logits[0, -1]
            token = int(logits.float().argmax())
            if token in eos_ids:
                break
            out.append(token)
            ids.append(token)
    return out


def check_greedy_is_argmax(make: EngineFactory, loaded: LoadedModel) -> None:
    """Batched greedy decoding equals argmax decoding one sequence at a time."""
    engine = make()
    out = completions_of(engine.sample([SampleRequest(p, greedy(10)) for p in PROMPTS]))
    for prompt, [c] in zip(PROMPTS, out):
        expected = reference_greedy(loaded, engine.tokenize(prompt), 10, loaded.eos_token_ids)
        assert c.token_ids == expected, (prompt, c.token_ids, expected)


def check_greedy_matches_generate(make: EngineFactory, loaded: LoadedModel,
                                  max_tokens: int = 16) -> None:
    """Greedy decoding equals transformers `generate(do_sample=False)` token for token."""
    engine = make()
    out = completions_of(engine.sample([SampleRequest(p, greedy(max_tokens)) for p in PROMPTS]))
    eos = loaded.eos_token_ids
    for prompt, [c] in zip(PROMPTS, out):
        ids = torch.tensor([engine.tokenize(prompt)], device=loaded.device)
        with torch.inference_mode():
            gen = loaded.model.generate(ids, attention_mask=torch.ones_like(ids),
                                        do_sample=False, max_new_tokens=max_tokens,
                                        pad_token_id=loaded.tokenizer.pad_token_id)
        new = gen[0, ids.shape[1]:].tolist()
        for i, token in enumerate(new):  # generate keeps the EOS token; we do not
            if token in eos:
                new = new[:i]
                break
        assert c.token_ids == new, (prompt, c.token_ids, new)


def check_sampling_distribution(make: EngineFactory, loaded: LoadedModel) -> None:
    """First-token frequencies over many seeds follow softmax(logits / T), cut by top-k/p."""
    engine = make()
    prompt = PROMPTS[0]
    ids = torch.tensor([engine.tokenize(prompt)], device=loaded.device)
    with torch.inference_mode():
        logits = loaded.model(ids).logits[0, -1].float().cpu()
    n = 1500
    for temperature, top_k, top_p in ((1.0, 0, 1.0), (0.7, 3, 1.0), (1.0, 0, 0.6)):
        [samples] = completions_of(engine.sample([SampleRequest(prompt, SamplingParams(
            n=n, temperature=temperature, top_k=top_k, top_p=top_p, max_tokens=1, seed=1000,
            ignore_eos=True))]))
        probs = torch.softmax(logits / temperature, dim=-1)
        for s in samples[:20]:  # logprobs are after temperature, before any cut
            assert abs(s.logprobs[0] - math.log(float(probs[s.token_ids[0]]))) < LOGPROB_TOL
        ranked, order = probs.sort(descending=True)
        kept = order[(ranked.cumsum(0) - ranked < top_p)
                     & (torch.arange(probs.numel()) < (top_k or probs.numel()))]
        probs = torch.zeros_like(probs).index_fill(0, kept, 1.0) * probs
        probs /= probs.sum()
        counts = torch.bincount(torch.tensor([s.token_ids[0] for s in samples]),
                                minlength=probs.numel()).double()
        assert counts[probs == 0].sum() == 0, "sampled a token outside top-k / top-p"
        for token in probs.topk(3).indices.tolist():
            p = float(probs[token])
            sigma = math.sqrt(n * p * (1 - p))
            assert abs(counts[token] - n * p) < 5 * sigma + 1, (token, counts[token], n * p)


def eos_biased_model(seed: int = 1) -> LoadedModel:
    """A tiny random model whose EOS logit carries +100: every step prefers EOS."""
    loaded = tiny_random_model(seed)
    old = loaded.model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[loaded.tokenizer.eos_token_id] = 100.0
    head.requires_grad_(False)
    loaded.model.lm_head = head
    return loaded


def check_eos(make: EngineFactory, loaded: LoadedModel) -> None:
    """EOS ends a completion (finish "eos", EOS not returned) unless ignore_eos."""
    engine = make()
    out = completions_of(engine.sample([SampleRequest(PROMPTS[0], greedy(8)),
                         SampleRequest(PROMPTS[2], greedy(8, ignore_eos=True)),
                         SampleRequest(PROMPTS[1], SamplingParams(n=3, max_tokens=8, seed=2))]))
    stopped = out[0][0]
    assert stopped.finish_reason == "eos" and stopped.token_ids == [] and stopped.text == ""
    forced = out[1][0]
    assert forced.finish_reason == "length" and len(forced.token_ids) == 8
    assert all(c.finish_reason == "eos" for c in out[2])
    eos = loaded.tokenizer.eos_token_id
    assert all(t == eos for t in forced.token_ids), "the biased model should repeat EOS"


MODEL_CHECKS: list[Callable[[EngineFactory, LoadedModel], None]] = [
    check_greedy_is_argmax,
    check_greedy_matches_generate,
    check_sampling_distribution,
]


def check_all_with_model(make: EngineFactory, loaded: LoadedModel) -> None:
    check_all(make)
    for check in MODEL_CHECKS:
        check(make, loaded)
