"""The cost model: FLOPs, memory traffic, KV bytes and latency of LLM calls.

Per model, from its config (layers, hidden size, heads, KV heads, head dim,
MLP width, vocabulary), Kinetics-style (Sadhukhan et al., 2025): a token's
cost is its FLOPs plus `intensity` x its memory traffic, where intensity is
the device's FLOP/s over its bytes/s. Decode is dominated by the traffic term:
weights are read once per step for the whole batch, and each sample's KV cache
once per token; a prefix shared by the samples of a request is read once per
step (cascade attention), not once per sample.

Latency comes from an engine profile: effective FLOP/s, bytes/s and a fixed
overhead per forward pass, fitted by `ttsc profile MODEL` from measured
prefill and decode times and stored as JSON. Without a profile the documented
defaults below are used (`DEFAULT_DEVICES`).

Nothing here loads model weights: shapes come from a config.json on disk,
the facts cache that the runtime writes on first load (`cache_model_facts`),
or the built-in table; token counts come from the cached tokenizer.json, or
a documented characters-per-token estimate when none is cached.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ttsc.common import paths
from ttsc.common.specs import SpecError, parse_spec, spec_slug


def _canonical(spec: str) -> str:
    """The spec as the runtime names it (paths resolved), without importing torch."""
    try:
        return parse_spec(spec).canonical
    except SpecError:
        return spec.strip()


def cache_dir() -> Path:
    """Where profiles and model facts live (common/paths.py decides)."""
    return paths.cache_root() or paths.room("")


# ------------------------------------------------------------------ shapes


@dataclass(frozen=True)
class ModelShape:
    """What the cost model needs of a decoder-only transformer (Llama family)."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tied_embeddings: bool = True
    source: str = "config"  # config | cache | builtin | default

    @staticmethod
    def from_config(config: Any, source: str = "config") -> "ModelShape":
        """From a transformers config object or a config.json dict."""
        get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        hidden = int(get("hidden_size"))
        heads = int(get("num_attention_heads"))
        head_dim = get("head_dim") or hidden // heads
        return ModelShape(
            num_layers=int(get("num_hidden_layers")),
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=int(get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            intermediate_size=int(get("intermediate_size") or 4 * hidden),
            vocab_size=int(get("vocab_size")),
            tied_embeddings=bool(get("tie_word_embeddings", False)),
            source=source,
        )

    # -- parameter counts
    @property
    def attention_params(self) -> int:
        """Per layer: q and o projections (heads x head_dim), k and v (KV heads)."""
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        return 2 * self.hidden_size * q + 2 * self.hidden_size * kv

    @property
    def mlp_params(self) -> int:
        """Per layer: gated MLP (gate, up, down)."""
        return 3 * self.hidden_size * self.intermediate_size

    @property
    def layer_params(self) -> int:
        return self.attention_params + self.mlp_params + 2 * self.hidden_size  # + 2 RMSNorms

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def num_params(self) -> int:
        head = 0 if self.tied_embeddings else self.embedding_params
        return self.num_layers * self.layer_params + self.embedding_params + head + self.hidden_size

    @property
    def body_matmul_params(self) -> int:
        """Parameters each token multiplies through, LM head excluded."""
        return self.num_layers * (self.attention_params + self.mlp_params)

    def kv_bytes_per_token(self, dtype_bytes: float = 2) -> float:
        """K and V of every layer for one token."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes

    def weight_bytes(self, dtype_bytes: float = 2) -> float:
        return self.num_params * dtype_bytes


# Architectures of the built-in models, read from their configs once (the
# SmolLM2 GGUF header is slow to read at compile time: seconds).
BUILTIN_SHAPES: dict[str, ModelShape] = {
    "smollm2-135m": ModelShape(num_layers=30, hidden_size=576, num_heads=9, num_kv_heads=3,
                               head_dim=64, intermediate_size=1536, vocab_size=49152,
                               tied_embeddings=True, source="builtin"),
    # runtime.models.tiny_random_model(): 2 layers, hidden 64, 4 heads, 2 KV heads.
    "tiny-random": ModelShape(num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2,
                              head_dim=16, intermediate_size=128, vocab_size=320,
                              tied_embeddings=False, source="builtin"),
}
# What an unknown model (an OpenAI endpoint, an uncached GGUF) is assumed to
# be: a Llama-3-8B-shaped model. Stated in `--explain` when used.
DEFAULT_SHAPE = ModelShape(num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=8,
                           head_dim=128, intermediate_size=14336, vocab_size=128256,
                           tied_embeddings=False, source="default")

_shape_memo: dict[str, ModelShape] = {}


def model_shape(spec: str) -> ModelShape:
    """The shape of the model a spec names, without loading weights.

    Looks, in order, at the facts cache, the built-in table, and a config.json
    (a local directory, or the Hugging Face cache for hf:/vllm: specs); falls
    back to DEFAULT_SHAPE (source == "default").
    """
    canonical = _canonical(spec)
    cached = (model_cache_path(canonical) / "config.json").is_file()
    key = f"{cache_dir()}|{canonical}|{cached}"
    if key not in _shape_memo:
        _shape_memo[key] = _find_shape(canonical)
    return _shape_memo[key]


def _find_shape(canonical: str) -> ModelShape:
    cached = model_cache_path(canonical) / "config.json"
    if cached.is_file():
        try:
            return ModelShape.from_config(json.loads(cached.read_text()), source="cache")
        except (ValueError, KeyError, TypeError):
            pass
    if canonical in BUILTIN_SHAPES:
        return BUILTIN_SHAPES[canonical]
    config = _config_json_for(canonical)
    if config is not None:
        try:
            return ModelShape.from_config(json.loads(config.read_text()))
        except (ValueError, KeyError, TypeError):
            pass
    return DEFAULT_SHAPE


def _config_json_for(canonical: str) -> Path | None:
    if canonical.startswith("/"):
        path = Path(canonical) / "config.json"
        return path if path.is_file() else None
    prefix, sep, rest = canonical.partition(":")
    if sep and prefix in ("hf", "vllm"):
        hub = Path(os.environ.get("HF_HUB_CACHE") or Path(
            os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub")
        snapshots = hub / ("models--" + rest.replace("/", "--")) / "snapshots"
        found = sorted(snapshots.glob("*/config.json"), key=lambda p: p.stat().st_mtime)
        return found[-1] if found else None
    return None


# ------------------------------------------------------------------ FLOPs and bytes


def prefill_flops(shape: ModelShape, new_tokens: int, cached_tokens: int = 0) -> float:
    """FLOPs to prefill `new_tokens` after `cached_tokens` already in the KV cache.

    2 FLOPs per multiply-add; attention is causal (token t attends to
    cached + t positions, QK^T and PV); logits only for the last position.
    """
    if new_tokens <= 0:
        return 0.0
    t = new_tokens
    dense = 2 * shape.body_matmul_params * t + 2 * shape.embedding_params
    attended = cached_tokens * t + t * (t + 1) / 2
    attention = 4 * shape.num_layers * shape.num_heads * shape.head_dim * attended
    return float(dense + attention)


def decode_flops(shape: ModelShape, context: int) -> float:
    """FLOPs for one generated token at `context` tokens of history."""
    dense = 2 * (shape.body_matmul_params + shape.embedding_params)
    attention = 4 * shape.num_layers * shape.num_heads * shape.head_dim * (context + 1)
    return float(dense + attention)


def prefill_bytes(shape: ModelShape, new_tokens: int, cached_tokens: int = 0,
                  dtype_bytes: float = 2) -> float:
    """Memory traffic of one prefill pass: weights once, KV written and read."""
    if new_tokens <= 0:
        return 0.0
    kv = shape.kv_bytes_per_token(dtype_bytes)
    return shape.weight_bytes(dtype_bytes) + kv * (2 * new_tokens + cached_tokens)


def decode_step_bytes(shape: ModelShape, contexts: Sequence[int], shared_prefix: int = 0,
                      dtype_bytes: float = 2) -> float:
    """Memory traffic of one decode step for a batch of rows.

    Weights are read once for the batch. Row i reads its KV (contexts[i]
    tokens); `shared_prefix` tokens common to all rows are read once, not once
    per row (cascade / shared-prefix attention).
    """
    if not contexts:
        return 0.0
    kv = shape.kv_bytes_per_token(dtype_bytes)
    shared = min(shared_prefix, min(contexts))
    reads = shared + sum(c - shared for c in contexts) if shared else sum(contexts)
    return shape.weight_bytes(dtype_bytes) + kv * (reads + len(contexts))


def kinetics_cost(flops: float, bytes_moved: float, intensity: float) -> float:
    """Kinetics' effective FLOPs: compute plus intensity x memory traffic."""
    return flops + intensity * bytes_moved


@dataclass
class CallCost:
    """Cost of one request: a prompt and `n` samples of up to `gen_tokens` each."""

    prefill_tokens: int  # prompt tokens computed
    decode_tokens: int  # tokens generated (all samples)
    flops: float
    bytes: float
    kv_peak_bytes: float  # KV held at the end of generation
    decode_steps: int

    def effective_flops(self, intensity: float) -> float:
        return kinetics_cost(self.flops, self.bytes, intensity)


def generation_cost(shape: ModelShape, prompt_tokens: int, n: int, gen_tokens: int, *,
                    share_prefix: bool = True, cached_tokens: int = 0,
                    dtype_bytes: float = 2) -> CallCost:
    """Cost of sampling `n` completions of `gen_tokens` tokens from one prompt.

    With `share_prefix` the prompt is prefilled once and its KV shared by the
    n samples (read once per step); without, each sample prefills and reads
    its own copy, as an engine without a prefix cache does. `cached_tokens`
    of the prompt are already in a prefix cache (computed by an earlier call).
    """
    cached = min(cached_tokens, prompt_tokens)
    new = prompt_tokens - cached
    copies = 1 if share_prefix else n
    flops = copies * prefill_flops(shape, new, cached)
    moved = copies * prefill_bytes(shape, new, cached, dtype_bytes)
    for step in range(gen_tokens):
        context = prompt_tokens + step
        flops += n * decode_flops(shape, context)
        moved += decode_step_bytes(shape, [context] * n,
                                   prompt_tokens if share_prefix else 0, dtype_bytes)
    kv = shape.kv_bytes_per_token(dtype_bytes)
    held = (prompt_tokens if share_prefix else n * prompt_tokens) + n * gen_tokens
    return CallCost(copies * new, n * gen_tokens, flops, moved, kv * held, gen_tokens)


# ------------------------------------------------------------------ engine profiles


@dataclass(frozen=True)
class DeviceDefaults:
    peak_flops: float  # effective FLOP/s a forward pass reaches
    bandwidth: float  # effective bytes/s
    overhead_s: float  # fixed time per forward pass (launches, Python, sampling)
    dtype_bytes: int


# Documented defaults when no profile was measured. CPU: fp32 weights, a few
# cores (a 2-core laptop VM measures about this). CUDA: bf16 on a
# datacenter GPU, well below peak, as small batches reach.
DEFAULT_DEVICES: dict[str, DeviceDefaults] = {
    "cpu": DeviceDefaults(peak_flops=5e10, bandwidth=1e10, overhead_s=0.02, dtype_bytes=4),
    "cuda": DeviceDefaults(peak_flops=2e14, bandwidth=1.5e12, overhead_s=0.01, dtype_bytes=2),
}
DEFAULT_DEVICE = "cpu"


@dataclass
class EngineProfile:
    """How fast one engine runs one model on one device.

    `peak_flops`, `bandwidth` and `overhead_s` are an effective roofline:
    a forward pass takes flops/peak_flops + bytes/bandwidth + overhead_s.
    `measurements` are the timings they were fitted from (empty for defaults).
    """

    model: str
    engine: str
    device: str
    dtype_bytes: int
    peak_flops: float
    bandwidth: float
    overhead_s: float
    measured: bool = False
    created: float = 0.0
    measurements: list[dict[str, Any]] = field(default_factory=list)
    path: str | None = None

    @property
    def intensity(self) -> float:
        """FLOPs per byte at which compute and traffic cost the same time."""
        return self.peak_flops / self.bandwidth

    def pass_seconds(self, flops: float, bytes_moved: float, passes: int = 1) -> float:
        return flops / self.peak_flops + bytes_moved / self.bandwidth + passes * self.overhead_s

    def call_seconds(self, cost: CallCost) -> float:
        """Wall time of one call alone on the engine (prefill pass + decode steps)."""
        passes = (1 if cost.prefill_tokens else 0) + cost.decode_steps
        return self.pass_seconds(cost.flops, cost.bytes, passes)

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("path")
        return json.dumps(d, indent=2)


def default_profile(model: str, device: str = DEFAULT_DEVICE, engine: str = "default") -> EngineProfile:
    d = DEFAULT_DEVICES[device if device in DEFAULT_DEVICES else DEFAULT_DEVICE]
    return EngineProfile(_canonical(model), engine, device, d.dtype_bytes, d.peak_flops,
                         d.bandwidth, d.overhead_s)


def profile_dir() -> Path:
    return cache_dir() / "profiles"


def profile_path(model: str, engine: str, device: str) -> Path:
    return profile_dir() / f"{spec_slug(model)}--{engine}--{device}.json"


def save_profile(profile: EngineProfile) -> Path:
    path = profile_path(profile.model, profile.engine, profile.device)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(profile.to_json())
    tmp.replace(path)
    profile.path = str(path)
    return path


_profile_memo: dict[tuple, EngineProfile] = {}


def load_profile(model: str, engine: str | None = None, device: str | None = None) -> EngineProfile:
    """The newest measured profile for `model` (matching engine/device when
    given), else the documented default for the device."""
    directory = profile_dir()
    try:
        stamp = directory.stat().st_mtime_ns
    except OSError:
        stamp = None
    key = (_canonical(model), engine, device, str(directory), stamp)
    if key not in _profile_memo:
        _profile_memo[key] = _find_profile(model, engine, device, directory)
    return _profile_memo[key]


def _find_profile(model: str, engine: str | None, device: str | None,
                  directory: Path) -> EngineProfile:
    found: list[EngineProfile] = []
    if directory.is_dir():
        for path in directory.glob(f"{spec_slug(model)}--*.json"):
            try:
                d = json.loads(path.read_text())
                prof = EngineProfile(**{k: v for k, v in d.items() if k != "path"}, path=str(path))
            except (ValueError, TypeError, OSError):
                continue
            if (engine is None or prof.engine == engine) and (device is None or prof.device == device):
                found.append(prof)
    if found:
        return max(found, key=lambda p: p.created)
    return default_profile(model, device or DEFAULT_DEVICE)


def fit_roofline(points: Iterable[tuple[float, float, int, float]]) -> tuple[float, float, float]:
    """(peak_flops, bandwidth, overhead_s) fitted to (flops, bytes, passes, seconds)
    points by non-negative least squares on seconds = f/P + b/B + passes*o."""
    import numpy as np

    rows = list(points)
    if len(rows) < 3:
        raise ValueError("need at least 3 timings to fit a roofline")
    a = np.array([[f, b, p] for f, b, p, _ in rows], dtype=float)
    y = np.array([s for *_, s in rows], dtype=float)
    scale = a.max(axis=0)
    scale[scale == 0] = 1.0
    a_scaled = a / scale
    # Relative error matters (timings span orders of magnitude): weight by 1/seconds.
    w = 1.0 / np.maximum(y, 1e-9)
    best: tuple[float, np.ndarray] | None = None
    for mask in range(1, 8):  # every non-empty set of active coefficients
        cols = [j for j in range(3) if mask >> j & 1]
        coef, *_ = np.linalg.lstsq(a_scaled[:, cols] * w[:, None], y * w, rcond=None)
        if (coef < 0).any():
            continue
        full = np.zeros(3)
        full[cols] = coef
        err = float((((a_scaled @ full) - y) * w) ** 2 @ np.ones(len(y)))
        if best is None or err < best[0]:
            best = (err, full)
    assert best is not None
    inv_peak, inv_bw, overhead = best[1] / scale
    # A coefficient fitted to zero means that term never showed: take it as free.
    peak = 1.0 / inv_peak if inv_peak > 0 else 1e18
    bandwidth = 1.0 / inv_bw if inv_bw > 0 else 1e18
    return float(peak), float(bandwidth), float(overhead)


def new_profile(model: str, engine: str, device: str, dtype_bytes: int,
                measurements: list[dict[str, Any]]) -> EngineProfile:
    """A measured profile: the roofline fitted to `measurements`, each a dict
    with flops, bytes, passes and seconds."""
    peak, bw, overhead = fit_roofline(
        (m["flops"], m["bytes"], m["passes"], m["seconds"]) for m in measurements)
    return EngineProfile(_canonical(model), engine, device, dtype_bytes, peak, bw, overhead,
                         measured=True, created=time.time(), measurements=list(measurements))


# ------------------------------------------------------------------ model facts cache
#
# The runtime writes, on first load of a model, what the compiler needs and
# cannot get cheaply: its config, tokenizer.json, and the chat template's
# frame around a message. Compile time then reads small files only.

CHARS_PER_TOKEN = 4.0  # the estimate when no tokenizer is cached (English text, BPE)
# ChatML framing (the built-in models' template) for estimates without a cache.
CHATML_FRAME = ("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n")
CHATML_SYSTEM_FRAME = ("<|im_start|>system\n", "<|im_end|>\n<|im_start|>user\n",
                       "<|im_end|>\n<|im_start|>assistant\n")
SMOLLM2_DEFAULT_SYSTEM = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
                          "trained by Hugging Face<|im_end|>\n")


def model_cache_path(spec: str) -> Path:
    return cache_dir() / "models" / spec_slug(spec)


def cache_model_facts(spec: str, loaded: Any) -> Path:
    """Store a loaded model's config, tokenizer.json and chat frames for the
    compiler. `loaded` is a runtime LoadedModel (has .model.config, .tokenizer)."""
    path = model_cache_path(spec)
    path.mkdir(parents=True, exist_ok=True)
    config = loaded.model.config.to_dict()
    _write_json(path / "config.json", {k: v for k, v in config.items() if _plain(v)})
    tok = loaded.tokenizer
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        backend.save(str(path / "tokenizer.json"))
    _write_json(path / "chat.json", _chat_frames(tok))
    pieces = path / "pieces.json"
    if pieces.exists():
        pieces.unlink()  # token ids of another tokenizer version would be stale
    return path


def _plain(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool, type(None), list, dict))


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def _chat_frames(tokenizer: Any) -> dict[str, Any]:
    """The text the chat template puts around a user (and system) message, when
    the template inserts message text verbatim (checked with two sentinels)."""
    def render(messages: list[dict[str, str]]) -> str:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    frames: dict[str, Any] = {"verbatim": False}
    try:
        a = render([{"role": "user", "content": "\x01A\x01"}]).split("\x01A\x01")
        b = render([{"role": "user", "content": "\x02BB\x02"}]).split("\x02BB\x02")
        sa = render([{"role": "system", "content": "\x01S\x01"}, {"role": "user", "content": "\x01A\x01"}])
        sb = render([{"role": "system", "content": "\x02T\x02"}, {"role": "user", "content": "\x02BB\x02"}])
    except Exception:  # a template that rejects a role order: no frames
        return frames
    sys_a = re.split("\x01S\x01|\x01A\x01", sa)
    sys_b = re.split("\x02T\x02|\x02BB\x02", sb)
    if a == b and len(a) == 2 and sys_a == sys_b and len(sys_a) == 3:
        frames.update(verbatim=True, user=a, system=sys_a)
    bos = getattr(tokenizer, "bos_token", None)
    frames["bos"] = bos
    return frames


class PromptTokenizer:
    """Token ids for compile-time analysis of one model's prompts.

    Exact when the runtime has cached the model's tokenizer.json and chat
    frames (`cache_model_facts`); otherwise an estimate: text is cut into
    CHARS_PER_TOKEN-character pieces and framed as ChatML. `exact` says which.
    Ids of texts seen before come from a small JSON cache, so a recompile
    does not load the tokenizer (about 0.1 s for a 49k vocabulary).
    """

    def __init__(self, spec: str):
        self.spec = _canonical(spec)
        self.dir = model_cache_path(self.spec)
        self._tokenizer: Any = None
        chat = self.dir / "chat.json"
        self.frames: dict[str, Any] | None = None
        if (self.dir / "tokenizer.json").is_file() and chat.is_file():
            try:
                frames = json.loads(chat.read_text())
                self.frames = frames if frames.get("verbatim") else None
            except ValueError:
                self.frames = None
        self.exact = self.frames is not None
        self._pieces: dict[str, list[int]] = {}
        self._dirty = False
        if self.exact and (self.dir / "pieces.json").is_file():
            try:
                self._pieces = json.loads((self.dir / "pieces.json").read_text())
            except ValueError:
                self._pieces = {}

    @property
    def how(self) -> str:
        if self.exact:
            return f"token-exact ({self.spec} tokenizer and chat template)"
        return (f"estimated at {CHARS_PER_TOKEN:g} characters per token ({self.spec} has no cached "
                "tokenizer; running it once, e.g. `ttsc profile`, caches one)")

    def frame(self, system: bool) -> list[str]:
        """Text around the message(s): [before, after] or [before system, between, after]."""
        if self.frames is not None:
            return list(self.frames["system" if system else "user"])
        if system:
            return list(CHATML_SYSTEM_FRAME)
        if self.spec == "smollm2-135m":  # its template adds a default system turn
            return [SMOLLM2_DEFAULT_SYSTEM + CHATML_FRAME[0], CHATML_FRAME[1]]
        return list(CHATML_FRAME)

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        if not self.exact:
            # Pseudo-tokens: equal text pieces map to equal ids, so a trie over
            # them still finds shared prefixes.
            step = int(CHARS_PER_TOKEN)
            return [hash(text[i:i + step]) & 0x7FFFFFFF for i in range(0, len(text), step)]
        ids = self._pieces.get(text)
        if ids is None:
            if self._tokenizer is None:
                from tokenizers import Tokenizer

                self._tokenizer = Tokenizer.from_file(str(self.dir / "tokenizer.json"))
            ids = self._tokenizer.encode(text, add_special_tokens=False).ids
            self._pieces[text] = ids
            self._dirty = True
        return list(ids)

    def save(self) -> None:
        """Persist newly seen texts' ids (best effort: a read-only cache is fine)."""
        if not self._dirty:
            return
        try:
            # Bounded: only the most recent texts are kept.
            items = list(self._pieces.items())[-4096:]
            _write_json(self.dir / "pieces.json", dict(items))
            self._dirty = False
        except OSError:
            pass


_tokenizers: dict[str, PromptTokenizer] = {}


def prompt_tokenizer(spec: str) -> PromptTokenizer:
    """One PromptTokenizer per model spec per process."""
    canonical = _canonical(spec)
    key = f"{cache_dir()}|{canonical}"
    tok = _tokenizers.get(key)
    if tok is None or (not tok.exact and (model_cache_path(canonical) / "chat.json").is_file()):
        tok = _tokenizers[key] = PromptTokenizer(canonical)
    return tok


def stage_seconds(shape: ModelShape, profile: EngineProfile, *,
                  prefills: Sequence[tuple[int, int]] = (), rows: int = 0, steps: int = 0,
                  shared_context: int = 0, row_context: int = 0) -> float:
    """Predicted wall time of one engine batch.

    `prefills` are (new, cached) token counts of each prompt prefilled, all in
    one pass; then `steps` decode steps for `rows` rows, each attending to
    `shared_context` tokens held once for all rows plus its own `row_context`
    and what it generated so far.
    """
    dtype = profile.dtype_bytes
    seconds = 0.0
    prefills = [(n, c) for n, c in prefills if n > 0]
    if prefills:
        flops = sum(prefill_flops(shape, n, c) for n, c in prefills)
        # Weights are read once for the whole pass.
        moved = prefill_bytes(shape, 1, 0, dtype) - shape.kv_bytes_per_token(dtype) * 2 + sum(
            shape.kv_bytes_per_token(dtype) * (2 * n + c) for n, c in prefills)
        seconds += profile.pass_seconds(flops, moved)
    if rows > 0 and steps > 0:
        mid = row_context + steps / 2  # a row's own context, averaged over the steps
        flops = steps * rows * decode_flops(shape, int(shared_context + mid))
        kv = shape.kv_bytes_per_token(dtype)
        moved = steps * (shape.weight_bytes(dtype) + kv * (shared_context + rows * (mid + 1)))
        seconds += profile.pass_seconds(flops, moved, passes=steps)
    return seconds


@dataclass(frozen=True)
class LatencyCoefficients:
    """A linear latency model for the allocator: seconds per prompt token
    computed, per forward pass, and per generated token (one row, one step)."""

    prefill_token_s: float
    pass_s: float
    decode_token_s: float


def latency_coefficients(shape: ModelShape, profile: EngineProfile, context: int) -> LatencyCoefficients:
    """Coefficients at a typical context length (tokens a row attends to)."""
    dtype = profile.dtype_bytes
    kv = shape.kv_bytes_per_token(dtype)
    attn = 4 * shape.num_layers * shape.num_heads * shape.head_dim
    prefill = (2 * shape.body_matmul_params + attn * context / 2) / profile.peak_flops \
        + 2 * kv / profile.bandwidth
    per_pass = shape.weight_bytes(dtype) / profile.bandwidth + profile.overhead_s
    decode = (2 * (shape.body_matmul_params + shape.embedding_params) + attn * context) \
        / profile.peak_flops + kv * (context + 1) / profile.bandwidth
    return LatencyCoefficients(prefill, per_pass, decode)
