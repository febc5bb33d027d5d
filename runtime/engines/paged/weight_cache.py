"""The paged engine's weights on disk, so that a warm start skips transformers.

Loading a model through transformers (for the embedded model: dequantizing its
GGUF file, building the torch module, the tokenizer) takes seconds; the engine
then copies the weights into its own layout anyway (model.py: `engine_state`).
The first load stores that layout, in the engine's dtype, as safetensors; later
starts read it back directly, with a tokenizer built from `tokenizer.json` and
jinja2 (runtime/engines/tokenizer.py) instead of transformers':

    $TTSC_CACHE_DIR/weights/<key>/
        model.safetensors    engine_state(...) in the engine dtype (norms in fp32)
        engine.json          the model config, dtype, EOS ids, context length,
                             tokenizer facts (chat template, special tokens)
        tokenizer.json       the backend tokenizer
        hf_tokenizer/        only when the light tokenizer did not reproduce the
                             transformers one on the probes: that one, saved

The key is a digest of what the weights depend on: for each model file (the
GGUF file, or a directory's config, tokenizer and weight files) its name, size
and the sha256 of its first and last MiB (cheap on multi-GB files, and any
re-download or conversion changes them); the dtype; the transformers version
(it dequantizes GGUF files); and the sha256 of the code that defines the
layout (this file, model.py, tokenizer.py, runtime/models.py). `TTSC_CACHE_DIR
=off` stores nothing, `TTSC_WEIGHT_CACHE=off` skips this cache only (the
start-up benchmark's baseline). A damaged entry is removed and rebuilt from
the model.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ttsc.common import paths
from ttsc.runtime import models
from ttsc.runtime.engines import tokenizer as light_tokenizer
from ttsc.runtime.engines.paged import model as model_code
from ttsc.runtime.engines.paged.model import ModelConfig, engine_state
from ttsc.runtime.models import LoadedModel

MiB = 1 << 20
_CODE = (Path(__file__), Path(model_code.__file__), Path(light_tokenizer.__file__), Path(models.__file__))
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class PagedWeights:
    """What the paged engine is built from: its weights in its own layout, the
    model's config and the tokenizer facts it needs."""

    spec: str
    config: ModelConfig
    dtype: torch.dtype
    state: dict[str, torch.Tensor]  # engine_state(...), on `device`
    tokenizer: Any  # a transformers tokenizer or a LightTokenizer
    eos_token_ids: frozenset[int]
    max_length: int
    device: torch.device

    @staticmethod
    def from_loaded(loaded: LoadedModel, dtype: torch.dtype) -> "PagedWeights":
        cfg = ModelConfig.from_hf(loaded.model.config)  # unsupported models fail here, first
        return PagedWeights(loaded.spec, cfg, dtype, engine_state(loaded.model, cfg, loaded.device, dtype),
                            loaded.tokenizer, loaded.eos_token_ids, loaded.max_length, loaded.device)


def entry_dir(spec: str, dtype: torch.dtype) -> Path | None:
    """Where the weights of `spec` in `dtype` are kept; None when caching is off or
    the model has no files to key them by."""
    if os.environ.get("TTSC_WEIGHT_CACHE", "").strip().lower() in ("off", "0", "no", "false"):
        return None
    root = paths.cache_dir("weights")
    files = models.model_files(spec) if root is not None else None
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}|{size}|".encode())
        with open(f, "rb") as fh:
            h.update(hashlib.sha256(fh.read(MiB)).digest())
            if size > MiB:
                fh.seek(max(MiB, size - MiB))
                h.update(hashlib.sha256(fh.read()).digest())
    h.update(str(dtype).encode())
    h.update(_transformers_version().encode())
    for code in _CODE:
        h.update(hashlib.sha256(code.read_bytes()).digest())
    return root / h.hexdigest()[:24]


def load(entry: Path, spec: str, device: torch.device) -> PagedWeights | None:
    """The stored weights, or None when the entry is missing or damaged (then removed)."""
    if not (entry / "engine.json").is_file():
        return None
    try:
        from safetensors.torch import load_file

        facts = json.loads((entry / "engine.json").read_text())
        state = load_file(str(entry / "model.safetensors"), device=str(device))
        return PagedWeights(spec, ModelConfig(**facts["config"]), _DTYPES[facts["dtype"]], state,
                            _load_tokenizer(entry, facts["tokenizer"]),
                            frozenset(facts["eos_token_ids"]), int(facts["max_length"]), device)
    except Exception:  # half-written, edited or from an incompatible version: rebuild it
        shutil.rmtree(entry, ignore_errors=True)
        return None


def store(entry: Path, weights: PagedWeights) -> None:
    """Write `weights` (built from a transformers load) as an entry. Written to a
    temporary sibling and renamed, so readers never see half an entry; a full or
    read-only disk only costs the next start its speed."""
    from safetensors.torch import save_file

    tmp = entry.with_name(f"{entry.name}.tmp{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.state.items()},
                  str(tmp / "model.safetensors"))
        tokenizer_facts = _store_tokenizer(tmp, weights.tokenizer)
        facts = {"config": asdict(weights.config), "dtype": str(weights.dtype).replace("torch.", ""),
                 "eos_token_ids": sorted(weights.eos_token_ids), "max_length": weights.max_length,
                 "tokenizer": tokenizer_facts}
        (tmp / "engine.json").write_text(json.dumps(facts, indent=1))
        os.replace(tmp, entry)
    except OSError:
        pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _store_tokenizer(folder: Path, hf_tokenizer: Any) -> dict[str, Any]:
    from ttsc.runtime.engines.tokenizer import LightTokenizer

    facts = LightTokenizer.facts_of(hf_tokenizer)
    try:
        light = LightTokenizer.from_hf(hf_tokenizer)
        problem = light.agrees_with(hf_tokenizer)
    except Exception as exc:  # no backend tokenizer (a slow one), a template jinja2 cannot compile
        problem = f"{exc.__class__.__name__}: {exc}"
    if problem is None:
        light.backend.save(str(folder / "tokenizer.json"))
        return {**facts, "light": True}
    hf_tokenizer.save_pretrained(str(folder / "hf_tokenizer"))
    return {**facts, "light": False, "why_not_light": problem}


def _load_tokenizer(entry: Path, facts: dict[str, Any]) -> Any:
    if facts.get("light"):
        from tokenizers import Tokenizer

        from ttsc.runtime.engines.tokenizer import LightTokenizer

        return LightTokenizer.from_facts(Tokenizer.from_file(str(entry / "tokenizer.json")), facts)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(entry / "hf_tokenizer"), local_files_only=True)
    tok.chat_template = facts["chat_template"]
    return tok


def _transformers_version() -> str:
    try:
        return importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return "none"
