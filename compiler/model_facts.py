"""Model facts the compiler needs without loading weights: shapes and prompt tokens.

A model's shape (layers, hidden size, heads, KV heads, head dim, MLP width,
vocabulary) comes from the facts cache that the runtime writes on first load
(`cache_model_facts`), the built-in table, or a config.json on disk; an
unknown model is assumed Llama-3-8B-shaped (`DEFAULT_SHAPE`, stated in
`--explain`). Prompt token ids come from the cached tokenizer.json and chat
frames (`PromptTokenizer`), or a documented characters-per-token estimate
when none is cached.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ttsc.common import paths
from ttsc.common.specs import SpecError, parse_spec, spec_slug


def canonical_spec(spec: str) -> str:
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
    "gemma3-270m": ModelShape(num_layers=18, hidden_size=640, num_heads=4, num_kv_heads=1,
                              head_dim=256, intermediate_size=2048, vocab_size=262144,
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
    canonical = canonical_spec(spec)
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
# Gemma 3's template (gemma3-270m): turns `user` and `model`, a system message
# folded into the first user turn.
GEMMA3_FRAME = ("<bos><start_of_turn>user\n", "<end_of_turn>\n<start_of_turn>model\n")
GEMMA3_SYSTEM_FRAME = (GEMMA3_FRAME[0], "\n\n", GEMMA3_FRAME[1])
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
    `estimate_because` forces the estimate, for an engine that tokenizes
    out of sight (an HTTP endpoint), and says why.
    """

    def __init__(self, spec: str, estimate_because: str | None = None):
        self.spec = canonical_spec(spec)
        self.dir = model_cache_path(self.spec)
        self.estimate_because = estimate_because
        self._tokenizer: Any = None
        chat = self.dir / "chat.json"
        self.frames: dict[str, Any] | None = None
        if estimate_because is None and (self.dir / "tokenizer.json").is_file() and chat.is_file():
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
        why = self.estimate_because or (f"{self.spec} has no cached tokenizer; running it once, "
                                        "e.g. `ttsc profile`, caches one")
        return f"estimated at {CHARS_PER_TOKEN:g} characters per token ({why})"

    def frame(self, system: bool) -> list[str]:
        """Text around the message(s): [before, after] or [before system, between, after]."""
        if self.frames is not None:
            return list(self.frames["system" if system else "user"])
        if self.spec == "gemma3-270m":
            return list(GEMMA3_SYSTEM_FRAME if system else GEMMA3_FRAME)
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


def prompt_tokenizer(spec: str, estimate_because: str | None = None) -> PromptTokenizer:
    """One PromptTokenizer per model spec (and reason to estimate) per process."""
    canonical = canonical_spec(spec)
    key = f"{cache_dir()}|{canonical}|{estimate_because}"
    tok = _tokenizers.get(key)
    if tok is None or (not tok.exact and estimate_because is None
                       and (model_cache_path(canonical) / "chat.json").is_file()):
        tok = _tokenizers[key] = PromptTokenizer(canonical, estimate_because)
    return tok
