"""A Llama-family forward pass over a transformers model's weights.

Covers Llama 2/3.x (incl. Llama-3 RoPE scaling, optional attention/MLP bias),
SmolLM2, Mistral without a sliding window, and Qwen2.x (bias on q/k/v). Weights are read from the Hugging
Face state dict once and fused: q|k|v into one matrix and gate|up into another,
so a layer is four matrix products whatever the batch.

The forward runs over a flat list of tokens from many sequences ([T] ids and
positions); attention, the only part that mixes tokens, is delegated to a
`PagedAttention` that reads and writes the paged KV pool.

Shapes: T tokens, E hidden, H query heads, Hkv KV heads, D head dim, I MLP width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ttsc.common.errors import UserError

if TYPE_CHECKING:
    from ttsc.runtime.engines.paged.attention import PagedAttention

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None  # rope_type and its parameters, None for plain RoPE
    max_position: int

    @staticmethod
    def from_hf(config: Any) -> "ModelConfig":
        model_type = getattr(config, "model_type", "")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UserError(f"the paged torch engine does not support `{model_type}` models",
                            hint=f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}; "
                                 "use the `hf` engine for other architectures")
        if getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None):
            raise UserError("the paged torch engine does not support sliding-window attention")
        if getattr(config, "hidden_act", "silu") != "silu":
            raise UserError(f"unsupported activation `{config.hidden_act}` (expected silu)")
        if (getattr(config, "partial_rotary_factor", None) or 1.0) != 1.0:
            raise UserError("the paged torch engine does not support partial rotary embeddings")
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        theta, scaling = _rope_settings(config)
        return ModelConfig(
            vocab_size=config.vocab_size, hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size, num_layers=config.num_hidden_layers,
            num_heads=heads, num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=head_dim, rms_norm_eps=config.rms_norm_eps, rope_theta=theta,
            rope_scaling=scaling,
            max_position=int(getattr(config, "max_position_embeddings", None) or 2048))


def _rope_settings(config: Any) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling) from a transformers 5 `rope_parameters` or a 4.x config."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        theta = float(params["rope_theta"])
        scaling = dict(params)
    else:
        theta = float(getattr(config, "rope_theta", 10000.0))
        scaling = dict(getattr(config, "rope_scaling", None) or {})
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type not in ("linear", "llama3"):
        raise UserError(f"the paged torch engine does not support `{rope_type}` RoPE scaling",
                        hint="supported: default, linear, llama3")
    scaling["rope_type"] = rope_type
    return theta, scaling


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies [D/2] in fp32, with Llama-3 or linear scaling applied."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    s = cfg.rope_scaling
    if s is None:
        return inv_freq
    if s["rope_type"] == "linear":
        return inv_freq / float(s["factor"])
    # Llama 3.1: keep high frequencies, divide low ones by `factor`, blend between.
    factor = float(s["factor"])
    low, high = float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old_len = float(s["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
    return torch.where(is_medium, smoothed, scaled)


class Linear:
    """y = x W^T + b. On CPU the weight is reordered once for oneDNN.

    `F.linear` repacks a bf16 weight into oneDNN's blocked layout on every
    call, which for decode-sized inputs costs about as much as the product
    itself; a prepacked weight gives the same numbers 1.2-2.5x faster.

    Batch invariance: a row's result must not depend on how many rows share
    the product. oneDNN's prepacked products (bf16 and fp32) give every row the
    same bits for any number of rows from 2 up, but a single row takes another
    kernel, so a lone row is computed as two. On CPUs with AMX, bf16 products
    of more than 32 rows take other kernels again, several by row count (on a
    Xeon with AMX, rows 33 and up, and again from about 300 or 500 up by
    shape, differed from the same rows in pairs), so there a product runs in
    slices of at most 32 rows: small batches lose nothing (2 to 32 rows cost
    about the same), 128 rows cost about 2x what one product would. MKL's fp32
    `F.linear`, which fp32 used before, picks kernels by row count (rows below
    4, and tails of a thread's share of rows, round differently): fp32 is
    prepacked too. tests/test_batch_invariance.py checks the shapes of the
    models it runs.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.out_features, self.in_features = weight.shape
        self.bias = bias
        self.weight: torch.Tensor | None = weight
        self.packed: torch.Tensor | None = None
        self.max_rows: int | None = None  # rows per product, where more would round otherwise
        if can_prepack(weight):
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, 64)
            self.weight = None  # the packed copy replaces it
            if weight.dtype == torch.bfloat16 and has_amx():
                self.max_rows = AMX_MAX_ROWS

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            return F.linear(x, self.weight, self.bias)
        rows = x.shape[0]
        if self.max_rows is not None and rows > self.max_rows:
            return torch.cat([self._product(x[i:i + self.max_rows]) for i in range(0, rows, self.max_rows)])
        return self._product(x)

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1:  # one row: computed as two, so it gets the batched kernel's bits
            return torch.ops.mkldnn._linear_pointwise(x.repeat(2, 1), self.packed, self.bias,
                                                      "none", [], "")[:1]
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    @property
    def numel(self) -> int:
        return self.out_features * self.in_features


AMX_MAX_ROWS = 32  # bf16 rows per product on AMX CPUs that keep one kernel's bits (Linear)


def has_amx() -> bool:
    """Whether the CPU has AMX tiles (oneDNN then runs bf16 products on them)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


def can_prepack(weight: torch.Tensor) -> bool:
    if not (weight.device.type == "cpu" and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    if weight.dtype == torch.float32:
        return True
    return weight.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()


@dataclass
class LayerWeights:
    input_norm: torch.Tensor  # [E] fp32
    qkv: Linear  # [(H + 2 Hkv) D, E], bias on Qwen2 (and Llama with attention_bias)
    o: Linear  # [E, H D]
    post_norm: torch.Tensor  # [E] fp32
    gate_up: Linear  # [2 I, E]
    down: Linear  # [E, I]


class LlamaModel:
    """Weights plus pure functions of them; no state between calls (but for
    the fp32 copy of the output head that scores make once, `logits_fp32`)."""

    def __init__(self, cfg: ModelConfig, embed: torch.Tensor, layers: list[LayerWeights],
                 norm: torch.Tensor, lm_head: Linear, head_weight: torch.Tensor | None = None):
        self.cfg = cfg
        self.embed = embed  # [V, E]
        self.layers = layers
        self.norm = norm  # [E]
        self.lm_head = lm_head  # [V, E], may be tied to `embed`
        self.head_weight = head_weight if head_weight is not None else embed  # unpacked, for fp32 rows
        self._head_fp32: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self.dtype = embed.dtype
        self.device = embed.device
        positions = torch.arange(cfg.max_position, dtype=torch.float32)
        freqs = torch.outer(positions, rope_inv_freq(cfg))  # [P, D/2]
        self.rope = torch.polar(torch.ones_like(freqs), freqs).to(self.device)  # [P, D/2] complex64
        self.cpu_ops: Any = None  # ttsc.kernels.cpu_ops' compiled module, once `use_cpu_ops` is called

    def use_cpu_ops(self, ops: Any) -> None:
        """Run RMSNorm, RoPE + KV store and SiLU-mul through the fused CPU kernels."""
        self.cpu_ops = ops
        self.rope_cos = self.rope.real.contiguous()  # [P, D/2] fp32
        self.rope_sin = self.rope.imag.contiguous()

    @staticmethod
    def from_hf(hf_model: Any, device: torch.device, dtype: torch.dtype) -> "LlamaModel":
        cfg = ModelConfig.from_hf(hf_model.config)
        return LlamaModel.from_state(cfg, engine_state(hf_model, cfg, device, dtype))

    @staticmethod
    def from_state(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> "LlamaModel":
        """The model from its tensors in this engine's layout (`engine_state`)."""

        def maybe(name: str) -> torch.Tensor | None:
            return state.get(name)

        layers = []
        for i in range(cfg.num_layers):
            p = f"layers.{i}."
            layers.append(LayerWeights(
                input_norm=state[p + "input_norm"], qkv=Linear(state[p + "qkv"], maybe(p + "qkv_bias")),
                o=Linear(state[p + "o"], maybe(p + "o_bias")), post_norm=state[p + "post_norm"],
                gate_up=Linear(state[p + "gate_up"], maybe(p + "gate_up_bias")),
                down=Linear(state[p + "down"], maybe(p + "down_bias"))))
        embed = state["embed"]
        head = state.get("lm_head", embed)  # absent: tied to embed
        return LlamaModel(cfg, embed, layers, state["norm"], Linear(head, maybe("lm_head_bias")), head)

    # ------------------------------------------------------------- forward

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                attn: "PagedAttention") -> torch.Tensor:
        """Hidden states [T, E] after the final norm; KV of every token is stored.

        The residual stream stays in fp32 (as do the norm weights); matrix
        products run in the model dtype. In fp32 this is transformers' math.
        """
        cfg = self.cfg
        t = input_ids.shape[0]
        h, hkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        eps, dtype = cfg.rms_norm_eps, self.dtype
        ops = self.cpu_ops
        if ops is None:
            rope = self.rope[positions].unsqueeze(1)  # [T, 1, D/2] complex
            norm, silu_mul = _add_rms_norm, _silu_mul
        else:
            norm, silu_mul = ops.rms_norm, ops.silu_mul
        x = F.embedding(input_ids, self.embed).float()  # [T, E] residual, updated in place
        pending = None  # the last MLP output, added to x by the next norm
        for i, w in enumerate(self.layers):
            y = norm(x, w.input_norm, eps, dtype, pending)
            qkv = w.qkv(y)  # [T, (H + 2 Hkv) D]
            qk = qkv[:, :(h + hkv) * d].view(t, h + hkv, d)
            kv = qkv[:, h * d:].view(t, 2, hkv, d)  # [T, K|V, Hkv, D]
            # RoPE in place, so K and V stay side by side in `qkv` for the store.
            if ops is None:
                apply_rope_(qk, rope)
                attn.store(i, kv)
            else:
                ops.rope_store(qkv, positions, self.rope_cos, self.rope_sin, attn.layer_slots(i),
                               attn.slot_mapping, h, hkv)
                attn.stored(kv)
            o = attn.attend(i, qk[:, :h])  # [T, H, D]
            y = norm(x, w.post_norm, eps, dtype, w.o(o.reshape(t, h * d)))
            pending = w.down(silu_mul(w.gate_up(y)))
        return norm(x, self.norm, eps, dtype, pending)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[R, E] -> logits [R, V] in the model dtype (softmaxes upcast as they read them)."""
        return self.lm_head(hidden)

    def logits_fp32(self, hidden: torch.Tensor) -> torch.Tensor:
        """[R, E] -> logits [R, V] computed in fp32, for scores. In bf16 a logit
        near 10 moves in steps of 1/16, so a verifier's P(Yes) over hundreds of
        candidates took a few dozen values and `best`/`top` broke ties by
        position; an fp32 product gives them their full resolution. The fp32
        copy of the head is made on the first score and kept."""
        if self.dtype == torch.float32:
            return self.lm_head(hidden)
        if self._head_fp32 is None:
            bias = self.lm_head.bias
            self._head_fp32 = (self.head_weight.float(), None if bias is None else bias.float())
        weight, bias = self._head_fp32
        return F.linear(hidden.float(), weight, bias)


def engine_state(hf_model: Any, cfg: ModelConfig, device: torch.device,
                 dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A transformers model's weights in this engine's layout, on `device`: q|k|v
    and gate|up fused, q/k rows reordered for RoPE, matrices in `dtype`, norms
    in fp32. This is what the weight cache stores (weight_cache.py)."""
    sd = hf_model.state_dict()

    def get(name: str) -> torch.Tensor:
        return sd[name].to(device=device, dtype=dtype)

    def maybe(name: str) -> torch.Tensor | None:
        return get(name) if name in sd else None

    # RoPE rotates pairs (i, i + D/2) of each head; reorder q/k rows so pairs
    # are adjacent and RoPE becomes one complex product. q.k is unchanged.
    d = cfg.head_dim
    pairs = torch.stack([torch.arange(d // 2), torch.arange(d // 2) + d // 2], dim=-1).flatten()
    q_rows = (torch.arange(cfg.num_heads)[:, None] * d + pairs).flatten()
    k_rows = (torch.arange(cfg.num_kv_heads)[:, None] * d + pairs).flatten()
    reorder = {"q": q_rows.to(device), "k": k_rows.to(device), "v": None}

    def proj(p: str, n: str, kind: str) -> torch.Tensor | None:
        name = p + f"self_attn.{n}_proj.{kind}"
        t = maybe(name)
        return t if t is None or reorder[n] is None else t[reorder[n]]

    state: dict[str, torch.Tensor] = {}

    def put(name: str, t: torch.Tensor | None) -> None:
        if t is not None:
            state[name] = t.contiguous()

    for i in range(cfg.num_layers):
        p, out = f"model.layers.{i}.", f"layers.{i}."
        biases = [proj(p, n, "bias") for n in "qkv"]
        if any(b is not None for b in biases) and not all(b is not None for b in biases):
            raise UserError("unsupported checkpoint: bias on some of q/k/v projections only")
        gate_up_bias = [maybe(p + f"mlp.{n}_proj.bias") for n in ("gate", "up")]
        if (gate_up_bias[0] is None) != (gate_up_bias[1] is None):
            raise UserError("unsupported checkpoint: bias on one of gate/up projections only")
        put(out + "input_norm", get(p + "input_layernorm.weight").float())
        put(out + "qkv", torch.cat([proj(p, n, "weight") for n in "qkv"]))
        put(out + "qkv_bias", torch.cat(biases) if biases[0] is not None else None)
        put(out + "o", get(p + "self_attn.o_proj.weight"))
        put(out + "o_bias", maybe(p + "self_attn.o_proj.bias"))
        put(out + "post_norm", get(p + "post_attention_layernorm.weight").float())
        put(out + "gate_up", torch.cat([get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")]))
        put(out + "gate_up_bias", torch.cat(gate_up_bias) if gate_up_bias[0] is not None else None)
        put(out + "down", get(p + "mlp.down_proj.weight"))
        put(out + "down_bias", maybe(p + "mlp.down_proj.bias"))
    put("embed", get("model.embed_tokens.weight"))
    put("norm", get("model.norm.weight").float())
    head_module = hf_model.get_output_embeddings()
    if head_module.weight.data_ptr() != hf_model.get_input_embeddings().weight.data_ptr():
        put("lm_head", head_module.weight.detach().to(device=device, dtype=dtype))  # not tied
    bias = getattr(head_module, "bias", None)
    put("lm_head_bias", bias.detach().to(device=device, dtype=dtype) if bias is not None else None)
    return state


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype) -> torch.Tensor:
    """x [T, E] fp32 -> normalized and scaled, in `dtype` (transformers' op order)."""
    out = torch.empty(x.shape, dtype=dtype, device=x.device)  # the last product casts as it writes
    return torch.mul(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps), weight, out=out)


def _add_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype,
                  add: torch.Tensor | None) -> torch.Tensor:
    """x += add (in place, fp32), then rms_norm: the residual update and the next norm."""
    if add is not None:
        x.add_(add)
    return rms_norm(x, weight, eps, dtype)


def _silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)  # [T, I] each
    return F.silu(gate).mul_(up)


def apply_rope_(x: torch.Tensor, rope: torch.Tensor) -> None:
    """Rotate x [T, heads, D] (rotation pairs adjacent) in place; rope [T, 1, D/2] complex."""
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # [T, heads, D/2]
    x.copy_(torch.view_as_real(xc * rope).flatten(-2))
