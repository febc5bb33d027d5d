"""Model spec syntax, checked at compile time (loading happens in the runtime)."""

from __future__ import annotations

import re

BUILTIN_MODELS = ("smollm2-135m", "tiny-random")
_HF = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def check_model_spec(spec: str) -> str | None:
    """None when `spec` is well-formed, else what is wrong with it."""
    if spec in BUILTIN_MODELS:
        return None
    if spec.startswith(("/", "./", "../", "~")):
        return None
    prefix, sep, rest = spec.partition(":")
    if not sep:
        return f"unknown model; built-in models are {', '.join(BUILTIN_MODELS)}"
    if prefix in ("hf", "vllm"):
        return None if _HF.match(rest) else f"expected {prefix}:ORG/NAME"
    if prefix == "gguf":
        return None if rest.strip() else "expected gguf:PATH to a .gguf file"
    if prefix == "openai":
        url, hash_, model = rest.partition("#")
        if not re.match(r"^https?://[^\s#]+$", url) or not hash_ or not model.strip():
            return "expected openai:URL#MODEL, like openai:http://localhost:8000/v1#my-model"
        return None
    return f"unknown model kind `{prefix}:`"
