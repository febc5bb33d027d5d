"""The engine benchmark's peer (benchmarks/llama_peer.py): llama.cpp's
llama-server on the embedded model converted to BF16 by llama-quantize."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ttsc.runtime.llama_server import find_tool

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.slow,  # converts the embedded model and starts llama-server
    pytest.mark.skipif(find_tool("llama-server") is None or find_tool("llama-quantize") is None,
                       reason="llama.cpp is not built: run scripts/install.sh"),
]


@pytest.fixture(scope="module")
def peer():
    spec = importlib.util.spec_from_file_location("ttsc_bench_llama_peer", ROOT / "benchmarks" / "llama_peer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_bf16_conversion_has_the_paged_engines_weight_values(peer) -> None:
    """llama-quantize's BF16 of the shipped Q4_1 holds, bit for bit, the bf16
    weights the paged engine runs (transformers' dequantized Q4_1, rounded)."""
    gguf = pytest.importorskip("gguf")
    from ttsc.runtime.models import SMOLLM2, load_model

    path = peer.bf16_gguf()
    assert path == peer.bf16_gguf()  # converted once, then found in the cache
    tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    model = load_model(SMOLLM2).model.model
    layer = model.layers[3]
    # (q and k are stored permuted for llama.cpp's RoPE; the others as they are.)
    pairs = {"token_embd.weight": model.embed_tokens.weight, "blk.3.attn_v.weight": layer.self_attn.v_proj.weight,
             "blk.3.attn_output.weight": layer.self_attn.o_proj.weight,
             "blk.3.ffn_gate.weight": layer.mlp.gate_proj.weight, "blk.3.ffn_down.weight": layer.mlp.down_proj.weight}
    for name, weight in pairs.items():
        raw = np.array(tensors[name].data).view(np.int16).copy()
        theirs = torch.from_numpy(raw).view(torch.bfloat16).reshape(weight.shape)
        assert torch.equal(theirs, weight.detach().bfloat16()), name


@pytest.mark.parametrize("config_index", range(4))
def test_peer_generates_the_forced_length_in_every_configuration(peer, config_index: int) -> None:
    config = peer.CONFIGS[config_index]
    got = peer.run_peer(peer.bf16_gguf(), [[1, 2, 3, 4, 5, 6], [7, 8, 9]], samples=3, new_tokens=5,
                        config=config, threads=1, poll=0)
    assert got["generated_tokens"] == 2 * 3 * 5
    assert got["prompt_tokens_evaluated"] == 3 * (6 + 3)  # the server's count, per completion
    assert got["tok_s"] > 0


def test_llama_bench_reports_prompt_processing(peer) -> None:
    got = peer.llama_bench_pp(peer.bf16_gguf(), threads=1, prompt=32, reps=1)
    assert got["prompt_tokens"] == 32 and got["tok_s"] > 0
