"""Kernels: every Triton kernel against its torch reference, and the references
against plain definitions.

Without a GPU the Triton kernels run under the Triton interpreter, which only
works when TRITON_INTERPRET=1 is set before triton is first imported (triton
decides then whether its own library is compiled or interpreted). Run alone,
this module sets it in time; in a full test session something else usually
imports triton first, and `test_interpreted_kernels_in_fresh_process` reruns
the Triton tests (ids containing "triton") in a fresh interpreter process instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

_SETS_INTERPRET = not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ
if _SETS_INTERPRET:
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

from ttsc.common.errors import UserError  # noqa: E402
from ttsc.kernels.aggregate import compile_aggregate, vote_reference  # noqa: E402
from ttsc.kernels.aggregate_codegen import AggregateSpec, render_source  # noqa: E402
from ttsc.kernels.cascade_attention import (attention_reference_per_sequence,  # noqa: E402
                                            cascade_attention, cascade_attention_reference)
from ttsc.kernels.dispatch import interpreter_ready, triton_importable, use_triton  # noqa: E402
from ttsc.kernels.sampling import sample, sample_reference, uniform_from_seeds  # noqa: E402
from ttsc.kernels.verifier_scoring import choice_logprobs, choice_logprobs_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRITON_HERE = triton_importable() and (DEVICE == "cuda" or interpreter_ready())
needs_triton = pytest.mark.skipif(
    not TRITON_HERE, reason="triton was imported before TRITON_INTERPRET=1 could be set: "
                            "test_interpreted_kernels_in_fresh_process runs these")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _leave_environment_as_found():
    yield
    if _SETS_INTERPRET:
        os.environ.pop("TRITON_INTERPRET", None)


def test_interpreted_kernels_in_fresh_process():
    if TRITON_HERE or not triton_importable():
        pytest.skip("the Triton tests run in this process" if TRITON_HERE else "Triton is not installed")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-P", "-m", "pytest", __file__, "-q", "-k", "triton"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout.splitlines()[-1]


@pytest.mark.skipif(not triton_importable(), reason="Triton is not installed")
def test_kernels_compile_for_a_gpu_without_one():
    # The interpreter forgives what the compiler rejects; compile for real (sm_90 cubins).
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-P", "-m", "ttsc.kernels.compile_check", "--arch", "90"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stdout.count("ok ") >= 7


# ---------------------------------------------------------------- cascade attention


def _attention_inputs(n, hq, hkv, d, lp, ls, lens=None, dtype=torch.float32, device=DEVICE, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    if lens is None:
        lens = torch.randint(0, ls + 1, (n,), generator=g)
    return (rnd(n, hq, d), rnd(lp, hkv, d), rnd(lp, hkv, d), rnd(n, ls, hkv, d), rnd(n, ls, hkv, d),
            torch.as_tensor(lens).to(device))


ATTENTION_CASES = {
    "one sequence": dict(n=1, hq=4, hkv=4, d=64, lp=37, ls=5),
    "gqa 9 over 3 heads": dict(n=5, hq=9, hkv=3, d=64, lp=300, ls=20),
    "no prefix, mqa": dict(n=3, hq=6, hkv=1, d=32, lp=0, ls=7),
    "empty suffixes": dict(n=4, hq=8, hkv=2, d=64, lp=40, ls=0, lens=[0, 0, 0, 0]),
    "some empty suffixes": dict(n=4, hq=8, hkv=2, d=64, lp=70, ls=9, lens=[0, 9, 3, 0]),
    "head dim 48": dict(n=2, hq=4, hkv=2, d=48, lp=50, ls=6),
    "rows over several blocks": dict(n=33, hq=8, hkv=2, d=16, lp=40, ls=3),
}


@pytest.mark.parametrize("case", ATTENTION_CASES.values(), ids=ATTENTION_CASES.keys())
def test_cascade_reference_matches_per_sequence_attention(case):
    inputs = _attention_inputs(**case, device="cpu")
    expected = attention_reference_per_sequence(*inputs)
    torch.testing.assert_close(cascade_attention_reference(*inputs), expected, atol=1e-5, rtol=1e-5)


@needs_triton
@pytest.mark.parametrize("case", ATTENTION_CASES.values(), ids=ATTENTION_CASES.keys())
def test_triton_cascade_matches_reference(case):
    inputs = _attention_inputs(**case)
    expected = attention_reference_per_sequence(*[t.cpu() for t in inputs])
    out = cascade_attention(*inputs, backend="triton")
    assert out.shape == expected.shape and out.dtype == expected.dtype
    torch.testing.assert_close(out.cpu(), expected, atol=2e-5, rtol=2e-5)


@needs_triton
def test_triton_cascade_long_prefix_fp16():
    inputs = _attention_inputs(n=4, hq=6, hkv=3, d=64, lp=1500, ls=33, dtype=torch.float16, seed=1)
    expected = attention_reference_per_sequence(*[t.cpu().float() for t in inputs[:5]], inputs[5].cpu())
    out = cascade_attention(*inputs, backend="triton")
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.cpu().float(), expected, atol=3e-3, rtol=3e-3)


@needs_triton
def test_triton_cascade_reads_strided_kv_and_custom_scale():
    # The paged engine passes permuted views of its pool, not contiguous tensors.
    q, pk, pv, sk, sv, lens = _attention_inputs(n=3, hq=4, hkv=2, d=32, lp=20, ls=8, seed=2)
    pk_t, sk_t = pk.transpose(0, 1).contiguous().transpose(0, 1), sk.permute(0, 2, 1, 3).contiguous()
    sk_view = sk_t.permute(0, 2, 1, 3)
    assert not pk_t.is_contiguous() and not sk_view.is_contiguous()
    out = cascade_attention(q, pk_t, pv, sk_view, sv, lens, 0.3, backend="triton")
    expected = attention_reference_per_sequence(*[t.cpu() for t in (q, pk, pv, sk, sv, lens)], scale=0.3)
    torch.testing.assert_close(out.cpu(), expected, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_sequence_without_any_key_gets_zeros(backend):
    inputs = _attention_inputs(n=2, hq=2, hkv=1, d=16, lp=0, ls=3, lens=[0, 2])
    out = cascade_attention(*inputs, backend=backend).cpu()
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    torch.testing.assert_close(out[1], attention_reference_per_sequence(*[t.cpu() for t in inputs])[1])


def test_cascade_rejects_bad_shapes():
    q, pk, pv, sk, sv, lens = _attention_inputs(n=2, hq=6, hkv=3, d=16, lp=4, ls=2, device="cpu")
    with pytest.raises(ValueError, match="multiple of KV heads"):
        cascade_attention(q[:, :4], pk, pv, sk, sv, lens)
    with pytest.raises(ValueError, match="suffix_lens"):
        cascade_attention(q, pk, pv, sk, sv, lens[:1])
    with pytest.raises(ValueError, match="unknown kernel backend"):
        cascade_attention(q, pk, pv, sk, sv, lens, backend="cuda")


def test_auto_backend_uses_the_reference_off_cuda():
    assert use_triton("auto", "cpu") is False
    assert use_triton("torch", DEVICE) is False
    inputs = _attention_inputs(n=2, hq=4, hkv=2, d=16, lp=5, ls=3, device="cpu")
    assert torch.equal(cascade_attention(*inputs), cascade_attention_reference(*inputs))


# ---------------------------------------------------------------- sampling

# (temperature, top_k, top_p) per row: greedy, plain, top-k 1, top-p tiny, mixes.
SAMPLING_ROWS = [(0.0, 0, 1.0), (1.0, 0, 1.0), (0.7, 1, 1.0), (1.0, 0, 1e-6), (1.3, 50, 0.9),
                 (0.5, 5, 0.5), (2.0, 0, 0.8), (1.0, 999, 0.95), (0.9, 3, 1.0), (0.0, 7, 0.3)]


def _sampling_batch(v, seed=0, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(len(SAMPLING_ROWS), v, generator=g) * 3).to(device)
    temperature, top_k, top_p = (torch.tensor(col).to(device) for col in zip(*SAMPLING_ROWS))
    seeds = (torch.arange(len(SAMPLING_ROWS)) * 7919 + seed).to(device)
    return logits, temperature, top_k, top_p, seeds


@needs_triton
@pytest.mark.parametrize("v,ties", [(1000, False), (5000, False), (300, True)],
                         ids=["one tile", "several tiles", "many ties"])
def test_triton_sample_matches_reference(v, ties):
    args = _sampling_batch(v)
    if ties:  # logits on a coarse grid: top-k and top-p thresholds fall inside runs of equal values
        args = ((args[0] * 2).round() / 2, *args[1:])
    tokens, logprobs = sample(*args, backend="triton")
    ref_tokens, ref_logprobs = sample_reference(*[a.cpu() for a in args])
    assert tokens.dtype == torch.int64 and logprobs.dtype == torch.float32
    assert torch.equal(tokens.cpu(), ref_tokens)
    torch.testing.assert_close(logprobs.cpu(), ref_logprobs, atol=1e-5, rtol=1e-5)


@needs_triton
def test_triton_sample_with_masked_vocab_and_low_precision_logits():
    logits, temperature, top_k, top_p, seeds = _sampling_batch(700, seed=3)
    logits[:, :300] = float("-inf")  # grammar-masked tokens, a whole leading tile for small blocks
    logits[1, 301:] = float("-inf")  # a row with a single allowed token
    logits = logits.half()
    tokens, logprobs = sample(logits, temperature, top_k, top_p, seeds, backend="triton")
    ref_tokens, ref_logprobs = sample_reference(logits.cpu(), temperature.cpu(), top_k.cpu(), top_p.cpu(),
                                                seeds.cpu())
    assert torch.equal(tokens.cpu(), ref_tokens)
    assert (tokens.cpu() >= 300).all() and tokens[1].item() == 300
    torch.testing.assert_close(logprobs.cpu(), ref_logprobs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_sample_rows_do_not_depend_on_the_batch(backend):
    logits, temperature, top_k, top_p, seeds = _sampling_batch(300, seed=5)
    tokens, logprobs = sample(logits, temperature, top_k, top_p, seeds, backend=backend)
    for b in (1, 4, 7):
        t, lp = sample(logits[b:b + 1], temperature[b:b + 1], top_k[b:b + 1], top_p[b:b + 1],
                       seeds[b:b + 1], backend=backend)
        assert t.item() == tokens[b].item() and lp.item() == logprobs[b].item()


def test_sample_semantics_greedy_top1_and_logprobs():
    logits, temperature, top_k, top_p, seeds = _sampling_batch(400, device="cpu")
    tokens, logprobs = sample_reference(logits, temperature, top_k, top_p, seeds)
    argmax = logits.argmax(dim=1)
    for row in (0, 2, 3, 9):  # greedy, top_k=1, top_p tiny, greedy despite top-k/p settings
        assert tokens[row] == argmax[row]
    scaled = logits / torch.where(temperature > 0, temperature, torch.ones_like(temperature))[:, None]
    expected = torch.log_softmax(scaled, dim=1).gather(1, tokens[:, None])[:, 0]
    torch.testing.assert_close(logprobs, expected, atol=1e-5, rtol=1e-5)


def test_sample_distribution_follows_top_k_and_top_p():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, 1.5]])
    n = 40_000
    seeds = torch.arange(n)

    def freqs(t, k, p):
        tokens, _ = sample_reference(logits.expand(n, -1), t, k, p, seeds)
        return torch.bincount(tokens, minlength=6).float() / n

    probs = torch.softmax(logits[0] / 0.8, 0)
    torch.testing.assert_close(freqs(0.8, 0, 1.0), probs, atol=0.01, rtol=0)
    top3 = torch.zeros(6)
    top3[[0, 1, 5]] = probs[[0, 1, 5]] / probs[[0, 1, 5]].sum()
    torch.testing.assert_close(freqs(0.8, 3, 1.0), top3, atol=0.01, rtol=0)
    # top-p 0.5 at temperature 1: token 0 holds 0.37, tokens {0, 5} hold 0.59 -> keep two.
    p1 = torch.softmax(logits[0], 0)
    nucleus = torch.zeros(6)
    nucleus[[0, 5]] = p1[[0, 5]] / p1[[0, 5]].sum()
    torch.testing.assert_close(freqs(1.0, 0, 0.5), nucleus, atol=0.01, rtol=0)


def test_seeds_decide_the_draw():
    logits = torch.zeros(3, 1000)
    a, _ = sample_reference(logits, 1.0, 0, 1.0, torch.tensor([1, 1, 2]))
    assert a[0] == a[1] and a[0] != a[2]
    u = uniform_from_seeds(torch.tensor([0, 1, -1, 2**40 + 3, 2**62]))
    assert ((u >= 0) & (u < 1)).all() and len(set(u.tolist())) == 5
    assert abs(uniform_from_seeds(torch.arange(20_000)).mean().item() - 0.5) < 0.01


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_sample_takes_the_callers_uniforms(backend):
    # u = 0 draws the first kept token in vocabulary order, u -> 1 the last one.
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0, -5.0]]).expand(2, -1).to(DEVICE)
    tokens, _ = sample(logits, 1.0, 3, 1.0, None, uniforms=torch.tensor([0.0, 0.9999]), backend=backend)
    assert tokens.tolist() == [1, 3]


def test_sample_rejects_mismatched_settings():
    with pytest.raises(ValueError, match="top_k must have one value per row"):
        sample(torch.zeros(3, 10), 1.0, torch.tensor([1, 2]), 1.0, 0)


# ---------------------------------------------------------------- verifier scoring


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("b,v,c,dtype", [(1, 100, 2, torch.float32), (5, 5000, 3, torch.float32),
                                         (3, 777, 2, torch.float16)])
def test_choice_logprobs_match_log_softmax(backend, b, v, c, dtype):
    g = torch.Generator().manual_seed(b * v)
    logits = (torch.randn(b, v, generator=g) * 4).to(dtype)
    logits[0, : v // 3] = float("-inf")
    ids = torch.randint(v // 3, v, (b, c), generator=g)
    out = choice_logprobs(logits.to(DEVICE), ids.to(DEVICE), backend=backend).cpu()
    expected = torch.log_softmax(logits.double(), dim=1).gather(1, ids).float()
    assert out.shape == (b, c) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(choice_logprobs_reference(logits, ids), expected, atol=1e-5, rtol=1e-5)


def test_choice_logprobs_rejects_out_of_vocab_ids():
    with pytest.raises(ValueError, match="token ids must lie"):
        choice_logprobs(torch.zeros(2, 10), torch.tensor([[1, 10], [0, 1]]))


# ---------------------------------------------------------------- generated aggregate kernels


def test_vote_reference_semantics():
    ids = torch.tensor([[3, 3, 1, 1], [1, 3, 3, 1], [-1, -1, 2, -1], [-1, -1, -1, -1], [5, 5, 5, 5],
                        [0, 1, 2, 2]])
    assert vote_reference(ids).tolist() == [3, 1, 2, -1, 5, 2]  # ties: the answer seen first
    weights = torch.tensor([[0.9, 0.4, 0.4], [0.5, 0.25, 0.25], [0.1, 0.7, 0.2]])
    assert vote_reference(torch.tensor([[0, 1, 1], [0, 1, 1], [-1, -1, 4]]), weights).tolist() == [0, 0, 4]
    assert vote_reference(torch.zeros(2, 0, dtype=torch.long)).tolist() == [-1, -1]


def test_render_source_specializes_on_the_spec():
    plain, weighted = render_source(AggregateSpec(False, 16)), render_source(AggregateSpec(True, 16))
    dynamic = render_source(AggregateSpec(True, None))
    assert "tl.static_range(16)" in plain and "weights_ptr + row" not in plain
    assert "weights_ptr + row" in weighted and "range(0, num_samples)" in dynamic
    for source in (plain, weighted, dynamic):
        compile(source, "<generated>", "exec")
    assert len({plain, weighted, dynamic}) == 3 and render_source(AggregateSpec(False, 16)) == plain


def test_compile_aggregate_caches_source_by_content_hash(tmp_path, monkeypatch):
    spec = AggregateSpec(weighted=True, num_samples=8)
    kernel = compile_aggregate(spec, tmp_path)
    text = kernel.source_path.read_text()
    assert kernel.source_path.parent == tmp_path and text == render_source(spec)
    assert kernel.hash == hashlib.sha256(text.encode()).hexdigest()
    assert kernel.source_path.stem == kernel.hash[:32]
    assert compile_aggregate(spec, tmp_path).source_path == kernel.source_path
    assert str(kernel.source_path) in kernel.describe() and "weighted vote" in kernel.describe()
    monkeypatch.setenv("TTSC_CACHE_DIR", str(tmp_path / "cache"))
    default = compile_aggregate(AggregateSpec(weighted=False, num_samples=3))
    assert default.source_path.parent == tmp_path / "cache" / "kernels" and default.source_path.is_file()


def test_compile_aggregate_unwritable_cache_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(UserError, match="cannot write the generated kernel") as e:
        compile_aggregate(AggregateSpec(weighted=False, num_samples=2), blocker / "kernels")
    assert "TTSC_CACHE_DIR" in e.value.hint


def _vote_batch(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(-1, 4, (7, n), generator=g)
    ids[0] = -1  # no answer at all
    ids[1] = 2  # all equal
    if n >= 4:
        ids[2, :4] = torch.tensor([1, 0, 0, 1])  # tie: the answer seen first wins
        ids[2, 4:] = -1
    weights = torch.rand(7, n, generator=g)
    weights[3] = 0.25  # equal weights: weighted ties
    return ids, weights


@needs_triton
@pytest.mark.parametrize("spec", [AggregateSpec(False, None), AggregateSpec(True, None),
                                  AggregateSpec(False, 16), AggregateSpec(True, 16), AggregateSpec(True, 1),
                                  AggregateSpec(False, 100)], ids=str)
def test_triton_generated_vote_matches_reference(spec, tmp_path):
    kernel = compile_aggregate(spec, tmp_path)
    for n in ([spec.num_samples] if spec.num_samples else [1, 5, 33]):
        ids, weights = _vote_batch(n, seed=n)
        w = weights if spec.weighted else None
        out = kernel(ids.to(DEVICE), None if w is None else w.to(DEVICE), backend="triton").cpu()
        assert out.dtype == torch.int64
        assert out.tolist() == vote_reference(ids, w).tolist()
        assert out[0] == -1 and out[1] == 2
        if n >= 4:
            assert out[2] == (1 if not spec.weighted else vote_reference(ids[2:3], weights[2:3])[0])


def test_generated_kernel_checks_its_inputs(tmp_path):
    kernel = compile_aggregate(AggregateSpec(weighted=False, num_samples=4), tmp_path)
    ids = torch.zeros(2, 4, dtype=torch.long)
    assert kernel(ids).tolist() == [0, 0]  # off CUDA "auto" runs the reference
    with pytest.raises(ValueError, match="with weights"):
        kernel(ids, torch.ones(2, 4))
    with pytest.raises(ValueError, match="built for 4 samples"):
        kernel(torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="integers"):
        kernel(ids.float())


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the benchmark measures for minutes")
def test_benchmark_without_gpu_says_so_and_exits_0():
    result = subprocess.run([sys.executable, "-P", "benchmarks/kernels.py"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert "no CUDA GPU was found" in lines[0]
    assert json.loads(lines[-1])["gpu"] is None
