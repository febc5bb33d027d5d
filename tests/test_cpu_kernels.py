"""The paged engine's C++ CPU kernels against their torch references."""

from __future__ import annotations

import pytest
import torch

from ttsc.kernels import cpu_ops

ops = cpu_ops.load()
pytestmark = pytest.mark.skipif(ops is None, reason="the C++ CPU kernels could not be built here")

DTYPES = [torch.float32, torch.bfloat16]


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> None:
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=tol)


def _attention_case(dtype, head_dim, heads, kv_heads, block_size, seed=0):
    g = torch.Generator().manual_seed(seed)
    num_blocks = 48
    blocks = torch.randn(num_blocks, block_size, 2, kv_heads, head_dim, generator=g).to(dtype)
    rows = 9
    q = torch.randn(rows, heads, head_dim, generator=g).to(dtype)
    own_tables = torch.randint(0, num_blocks, (rows, 40 // block_size + 2), generator=g)
    # lengths around chunk (16) and block boundaries, one row with no own tokens
    own_lens = torch.tensor([1, 16, 17, 40, 33, 0, 31, 3, 15]).clamp(max=own_tables.shape[1] * block_size)
    group_rows = torch.tensor([[0, 2, 3, 4, 5, -1], [6, 7, -1, -1, -1, -1]])
    group_tables = torch.randint(0, num_blocks, (2, 48 // block_size + 1), generator=g)
    group_lens = torch.tensor([45, 0])
    return q, blocks, own_tables, own_lens, group_rows, group_tables, group_lens


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim,heads,kv_heads,block_size",
                         [(16, 4, 2, 16), (64, 9, 3, 16), (128, 4, 4, 8), (32, 8, 1, 4), (64, 6, 2, 32)])
def test_decode_attention_matches_reference(dtype, head_dim, heads, kv_heads, block_size) -> None:
    case = _attention_case(dtype, head_dim, heads, kv_heads, block_size)
    got = ops.decode_attention(*case, 0.3)
    want = cpu_ops.decode_attention_reference(*case, 0.3)
    assert got.dtype == dtype and got.shape == case[0].shape
    _close(got, want, dtype)
    assert torch.all(got[5].float() != 0)  # row 5 has no own tokens but a group prefix


def test_decode_attention_without_groups() -> None:
    q, blocks, own_tables, own_lens, *_ = _attention_case(torch.float32, 64, 9, 3, 16)
    none = torch.zeros(0, 1, dtype=torch.long)
    got = ops.decode_attention(q, blocks, own_tables, own_lens, none, none, none[:, 0], 0.125)
    want = cpu_ops.decode_attention_reference(q, blocks, own_tables, own_lens, none, none, none[:, 0], 0.125)
    _close(got, want, torch.float32)
    assert torch.all(got[5] == 0)  # no keys at all: zeros, not NaN


def test_decode_attention_rejects_unsupported_head_dims() -> None:
    q, blocks, own_tables, own_lens, *rest = _attention_case(torch.float32, 64, 9, 3, 16)
    with pytest.raises(RuntimeError, match="head dim"):
        ops.decode_attention(q[..., :48].contiguous(), blocks[..., :48].contiguous(), own_tables,
                             own_lens, *rest, 0.1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_add", [False, True])
def test_rms_norm_matches_reference(dtype, with_add) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 100, generator=g)
    w = torch.randn(100, generator=g)
    add = torch.randn(7, 100, generator=g).to(dtype) if with_add else None
    x_ref = x.clone()
    got = ops.rms_norm(x, w, 1e-5, dtype, add)
    want = cpu_ops.rms_norm_reference(x_ref, w, 1e-5, dtype, add)
    assert got.dtype == dtype
    _close(got, want, dtype)
    torch.testing.assert_close(x, x_ref)  # the residual update happened in place, identically


def test_bf16_outputs_round_to_nearest_even_and_keep_nan() -> None:
    # Rows of +-2 have mean square 4, so x * rsqrt(4) is exactly +-1 and the
    # output is exactly +-w before its rounding to bf16.
    w = torch.cat([torch.tensor([1.00390625, 1.01171875, -1.00390625, 3.0e38, 1e-40]),
                   torch.randn(59, generator=torch.Generator().manual_seed(5))])
    x = torch.full((2, 64), 2.0)
    x[1, ::2] = -2.0
    got = ops.rms_norm(x.clone(), w, 0.0, torch.bfloat16)
    assert torch.equal(got, (torch.sign(x) * w).to(torch.bfloat16))  # torch rounds to nearest even
    assert got[0, :3].tolist() == [1.0, 1.015625, -1.0]  # the two ties went to the even neighbour
    nan_row = ops.rms_norm(torch.tensor([[1.0, float("nan"), 2.0, 3.0]]), torch.ones(4), 1e-5,
                           torch.bfloat16)
    assert torch.isnan(nan_row).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("width", [32, 70, 3072])  # vector body, tail, both
def test_silu_mul_matches_reference(dtype, width) -> None:
    g = torch.Generator().manual_seed(2)
    gate_up = (torch.randn(5, width, generator=g) * 6).to(dtype)
    _close(ops.silu_mul(gate_up), cpu_ops.silu_mul_reference(gate_up), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rope_store_matches_reference(dtype) -> None:
    g = torch.Generator().manual_seed(3)
    heads, kv_heads, d, positions_max = 4, 2, 16, 50
    freqs = torch.outer(torch.arange(positions_max).float(), torch.rand(d // 2, generator=g))
    cos, sin = freqs.cos().contiguous(), freqs.sin().contiguous()
    qkv = torch.randn(6, (heads + 2 * kv_heads) * d, generator=g).to(dtype)
    positions = torch.tensor([0, 3, 49, 7, 7, 20])
    slots = torch.tensor([5, 0, 11, 2, 9, 30])
    pools = [torch.zeros(8, 4, 2, kv_heads, d, dtype=dtype) for _ in range(2)]
    qkvs = [qkv.clone(), qkv.clone()]
    ops.rope_store(qkvs[0], positions, cos, sin, pools[0], slots, heads, kv_heads)
    cpu_ops.rope_store_reference(qkvs[1], positions, cos, sin, pools[1], slots, heads, kv_heads)
    _close(qkvs[0], qkvs[1], dtype)
    _close(pools[0], pools[1], dtype)
    assert pools[0].flatten(0, 1)[[1, 3, 4, 6, 7]].abs().sum() == 0  # untouched slots stay zero


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("vocab", [1000, 49152, 257])
def test_sample_matches_reference(dtype, vocab) -> None:
    g = torch.Generator().manual_seed(4)
    rows = 16
    logits = (torch.randn(rows, vocab, generator=g) * 4).to(dtype)
    inv_temp = torch.rand(rows, generator=g) + 0.5
    uniforms = torch.rand(rows, generator=g)
    uniforms[:2] = torch.tensor([0.0, 1 - 2 ** -24])  # both ends of the CDF
    greedy = torch.arange(rows) % 5 == 0
    tokens, logprobs = ops.sample(logits, inv_temp, uniforms, greedy)
    want_tokens, want_logprobs = cpu_ops.sample_reference(logits, inv_temp, uniforms, greedy)
    # The inverse CDF can land one token apart where fp32 sums round differently
    # at a boundary; elsewhere the draws are the same.
    assert (tokens == want_tokens).float().mean() >= 0.9
    same = tokens == want_tokens
    torch.testing.assert_close(logprobs[same], want_logprobs[same], atol=1e-4, rtol=1e-4)
    assert torch.equal(tokens[greedy], logits.float()[greedy].argmax(-1))


def test_sample_greedy_takes_the_first_of_tied_maxima() -> None:
    logits = torch.zeros(1, 300)
    logits[0, [17, 200]] = 5.0
    tokens, _ = ops.sample(logits, torch.ones(1), torch.zeros(1), torch.ones(1, dtype=torch.bool))
    assert tokens.tolist() == [17]


def test_sample_frequencies_follow_the_distribution() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    rows = 4000
    logits = probs.log().expand(rows, 4).contiguous()
    u = (torch.arange(rows) + 0.5) / rows  # a stratified grid over [0, 1)
    tokens, _ = ops.sample(logits, torch.ones(rows), u, torch.zeros(rows, dtype=torch.bool))
    freq = torch.bincount(tokens, minlength=4).float() / rows
    torch.testing.assert_close(freq, probs, atol=2e-3, rtol=0)


def test_disabled_by_environment(monkeypatch) -> None:
    monkeypatch.setenv("TTSC_CPU_KERNELS", "0")
    cpu_ops.load.cache_clear()
    try:
        assert cpu_ops.load() is None
    finally:
        monkeypatch.delenv("TTSC_CPU_KERNELS")
        cpu_ops.load.cache_clear()
    assert cpu_ops.load() is not None


# ------------------------------------------------------------ batch invariance

def _pool_case(dtype, head_dim=64, heads=9, kv_heads=3, block_size=16, seed=7):
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randn(40, block_size, 2, kv_heads, head_dim, generator=g).to(dtype)
    table = torch.randperm(40, generator=g)[:12]  # one sequence's blocks, in position order
    return g, blocks, table


def _prefill_reference(q, blocks, table, start, scale):
    """Causal attention of q [n, H, D] at positions start.. over the sequence's keys, in fp32."""
    n, h, d = q.shape
    _, bs, _, hkv, _ = blocks.shape
    ctx = start + n
    pos = torch.arange(ctx)
    kv = blocks.reshape(-1, 2, hkv, d)[table[pos // bs] * bs + pos % bs].float()  # [ctx, 2, Hkv, D]
    kv = kv.repeat_interleave(h // hkv, dim=2)
    scores = torch.einsum("qhd,khd->hqk", q.float() * scale, kv[:, 0])
    visible = pos[None, :] <= (start + torch.arange(n))[:, None]
    scores = scores.masked_fill(~visible[None], float("-inf"))
    return torch.einsum("hqk,khd->qhd", torch.softmax(scores, -1), kv[:, 1]).to(q.dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim,heads,kv_heads,block_size", [(64, 9, 3, 16), (16, 4, 2, 4), (32, 8, 1, 8)])
def test_prefill_attention_matches_reference(dtype, head_dim, heads, kv_heads, block_size) -> None:
    g, blocks, table = _pool_case(dtype, head_dim, heads, kv_heads, block_size)
    width = 60 // block_size + 1
    tables = torch.stack([table[:width], table.flip(0)[:width]])
    starts, q_lens = [0, 13], [37, 20]  # one fresh prompt, one resumed mid-block
    q = torch.randn(sum(q_lens), heads, head_dim, generator=g).to(dtype)
    got = ops.prefill_attention(q, blocks, tables, torch.tensor(starts), torch.tensor(q_lens), 0.2)
    want = torch.cat([_prefill_reference(q[:37], blocks, tables[0], 0, 0.2),
                      _prefill_reference(q[37:], blocks, tables[1], 13, 0.2)])
    _close(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_attention_is_the_same_bits_however_the_work_is_cut(dtype) -> None:
    """A token's attention: one prefill, prefill in chunks (any boundary), a decode
    step alone, or as a cascade-group member over a 16-multiple prefix."""
    g, blocks, table = _pool_case(dtype)
    n, scale = 70, 0.125
    q = torch.randn(n, 9, 64, generator=g).to(dtype)
    tables = table[None, :]
    whole = ops.prefill_attention(q, blocks, tables, torch.tensor([0]), torch.tensor([n]), scale)
    for cut in (1, 15, 16, 17, 33, 69):
        first = ops.prefill_attention(q[:cut], blocks, tables, torch.tensor([0]), torch.tensor([cut]), scale)
        rest = ops.prefill_attention(q[cut:], blocks, tables, torch.tensor([cut]), torch.tensor([n - cut]),
                                     scale)
        assert torch.equal(torch.cat([first, rest]), whole), f"prefill cut at {cut}"
    # Several sequences in one call: each row as when its sequence runs alone.
    both = ops.prefill_attention(torch.cat([q[40:], q[:25]]), blocks, torch.cat([tables, tables]),
                                 torch.tensor([40, 0]), torch.tensor([n - 40, 25]), scale)
    assert torch.equal(both, torch.cat([whole[40:], whole[:25]]))
    none = torch.zeros(0, 1, dtype=torch.long)
    rows = torch.arange(n)  # every position decoded as one token
    own_len = rows + 1
    alone = ops.decode_attention(q[rows], blocks, tables.expand(len(rows), -1), own_len, none, none,
                                 none[:, 0], scale)
    assert torch.equal(alone, whole[rows])
    # The same rows whose first 32 tokens are a group prefix they share (rows past 32).
    late = rows[rows >= 32]
    grouped = ops.decode_attention(q[late], blocks, tables[:, 2:].expand(len(late), -1), late + 1 - 32,
                                   torch.arange(len(late))[None, :], tables[:, :2], torch.tensor([32]), scale)
    assert torch.equal(grouped, whole[late])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("vocab", [300, 2048])
def test_sample_top_matches_reference(dtype, vocab) -> None:
    """Top-k, top-p and both, against the sort-everything reference: the same
    draws (but for a fp32 sum rounding at a boundary) and log-probabilities."""
    g = torch.Generator().manual_seed(5)
    rows = 12
    logits = (torch.randn(rows, vocab, generator=g) * 3).to(dtype)
    inv_temp = torch.rand(rows, generator=g) + 0.5
    top_k = torch.tensor([5, 0, 40, 1, 0, 3, vocab - 1, 0, 17, 2, 0, 8])
    top_p = torch.tensor([1.0, 0.9, 0.8, 1.0, 0.5, 0.95, 0.99, 0.999, 1.0, 0.7, 0.3, 0.6])
    uniforms = torch.rand(rows, generator=g)
    uniforms[:2] = torch.tensor([0.0, 1 - 2 ** -24])
    tokens, logprobs = ops.sample_top(logits, inv_temp, top_k, top_p, uniforms)
    want_tokens, want_logprobs = cpu_ops.sample_top_reference(logits, inv_temp, top_k, top_p, uniforms)
    same = tokens == want_tokens
    assert same.float().mean() >= 0.9
    torch.testing.assert_close(logprobs[same], want_logprobs[same], atol=1e-4, rtol=1e-4)
    assert tokens[3] == logits[3].float().argmax()  # top_k = 1 is greedy


def test_sample_top_p_needs_more_than_the_first_candidates() -> None:
    """A flat distribution whose nucleus holds ~1,800 tokens: the candidate
    heap grows past its first 256 and draws stay inside the nucleus."""
    v = 2048
    logits = (-0.001 * torch.arange(v, dtype=torch.float32)).repeat(200, 1)  # token i is the i-th likeliest
    probs = torch.softmax(logits[0], -1)
    allowed = int(((probs.cumsum(0) - probs) < 0.9).sum())
    u = (torch.arange(200) + 0.5) / 200
    tokens, logprobs = ops.sample_top(logits, torch.ones(200), torch.zeros(200, dtype=torch.long),
                                      torch.full((200,), 0.9), u)
    assert int(tokens.max()) < allowed and int(tokens.max()) > 1024
    torch.testing.assert_close(logprobs, probs[tokens].log(), atol=1e-5, rtol=0)


def test_sample_top_frequencies_follow_the_truncated_distribution() -> None:
    probs = torch.tensor([0.4, 0.3, 0.2, 0.06, 0.04])
    rows = 4000
    logits = probs.log().expand(rows, 5).contiguous()
    u = (torch.arange(rows) + 0.5) / rows
    # top_k 3 keeps [0.4, 0.3, 0.2]; top_p 0.75 of that (0.675) keeps the first two.
    tokens, _ = ops.sample_top(logits, torch.ones(rows), torch.full((rows,), 3), torch.full((rows,), 0.75), u)
    freq = torch.bincount(tokens, minlength=5).float() / rows
    torch.testing.assert_close(freq, torch.tensor([4 / 7, 3 / 7, 0, 0, 0]), atol=2e-3, rtol=0)



@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim,heads,kv_heads", [(32, 8, 2), (64, 9, 3), (128, 4, 4), (256, 2, 1)])
def test_decode_attention_rows_do_not_depend_on_their_group(dtype, head_dim, heads, kv_heads) -> None:
    """bf16 scores queries in blocks of 4 (2 at head dim 128, 1 at 256) whose
    make-up follows the group's size and the row's place in it: a row's output
    is the same bits alone (prefix and own keys as one list) and in groups of
    1 to 7 members, at every place."""
    g, blocks, table = _pool_case(dtype, head_dim, heads, kv_heads)
    prefix, scale = 48, head_dim ** -0.5  # 3 shared blocks of 16
    own_lens = torch.tensor([1, 16, 17, 40, 33, 5, 29])
    q = torch.randn(len(own_lens), heads, head_dim, generator=g).to(dtype)
    none = torch.zeros(0, 1, dtype=torch.long)
    whole = table[None, :].expand(len(own_lens), -1)
    alone = ops.decode_attention(q, blocks, whole, own_lens + prefix, none, none, none[:, 0], scale)
    _close(alone, cpu_ops.decode_attention_reference(q, blocks, whole, own_lens + prefix, none, none,
                                                     none[:, 0], scale), dtype)
    own = table[None, 3:].expand(len(own_lens), -1)
    for size in range(1, len(own_lens) + 1):
        members = torch.arange(len(own_lens)).roll(size)[:size]  # a different place for each row
        rest = torch.tensor([r for r in range(len(own_lens)) if r not in members.tolist()], dtype=torch.long)
        rows = torch.cat([members, rest])
        got = ops.decode_attention(q[rows], blocks, own.contiguous(), own_lens[rows],
                                   torch.arange(size)[None, :], table[None, :3], torch.tensor([prefix]), scale)
        assert torch.equal(got[:size], alone[members]), f"group of {size}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_element_wise_rows_do_not_depend_on_the_row_count(dtype) -> None:
    """A decode step's rows run on one thread, a long prefill's are split
    across threads: a row gets the same bits either way."""
    g = torch.Generator().manual_seed(9)
    n = 1200  # past the serial threshold for every kernel at these widths
    x, w = torch.randn(n, 576, generator=g), torch.randn(576, generator=g)
    add = torch.randn(n, 576, generator=g).to(dtype)
    gate_up = torch.randn(n, 3072, generator=g).to(dtype)
    x_all, x_few = x.clone(), x[:7].clone()
    assert torch.equal(ops.rms_norm(x_all, w, 1e-5, dtype, add)[:7], ops.rms_norm(x_few, w, 1e-5, dtype, add[:7]))
    assert torch.equal(x_all[:7], x_few)
    assert torch.equal(ops.silu_mul(gate_up)[:7], ops.silu_mul(gate_up[:7]))
    freqs = torch.outer(torch.arange(2048).float(), torch.rand(32, generator=g))
    cos, sin = freqs.cos().contiguous(), freqs.sin().contiguous()
    qkv = torch.randn(n, 15 * 64, generator=g).to(dtype)
    pos, slots = torch.arange(n), torch.randperm(n, generator=g)
    pools = [torch.zeros(n // 16 + 1, 16, 2, 3, 64, dtype=dtype) for _ in range(2)]
    few = qkv[:7].clone()
    ops.rope_store(qkv, pos, cos, sin, pools[0], slots, 9, 3)
    ops.rope_store(few, pos[:7], cos, sin, pools[1], slots[:7], 9, 3)
    assert torch.equal(qkv[:7], few)
    assert torch.equal(pools[0].flatten(0, 1)[slots[:7]], pools[1].flatten(0, 1)[slots[:7]])
