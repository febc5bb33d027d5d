"""From a model spec to an engine, and to what that engine can do.

A spec's form (common/specs.py: `spec_form`) decides which engines can serve
it. The table below is the whole mapping: every engine kind names a factory
`(spec, device, **options) -> Engine` and declares its `Capabilities`; every
spec form lists the kinds that serve it, the first being what `engine="auto"`
picks.

    spec form                             engines (auto first)
    torch: smollm2-135m, tiny-random,     paged (the fast torch engine), hf,
           hf:ORG/NAME, a directory,      vllm (hf:ORG/NAME and directories
           gguf:PATH                      only; the optional extra ttsc[vllm])
    torch: gemma3-270m                    hf (the paged forward is Llama-shaped)
    vllm:ORG/NAME                         vllm
    openai:URL#MODEL                      openai (any OpenAI-compatible server)

An engine may also refuse single specs (`refuses`): the paged engine runs
only Llama-shaped forwards, so it refuses a built-in model of another
architecture (Gemma 3), and `auto` then picks the next engine. For other
specs the architecture is known only once the model's config is read: the
paged engine then says at load time what it does not support.

`engine_capabilities(spec, engine)` answers from the declarations alone, without
loading the model or importing torch, so the compiler can check every op
against the engine before anything loads; an engine built with default options
has exactly those capabilities (tests/test_engine_registry.py). The openai
engine's real capabilities depend on the server and are probed on first use;
its declaration is what it serves on a server with a tokenizer route and
token ids in its log-probabilities (llama.cpp). `ttsc run` and `eval` ask
the server itself before compiling (setup.capabilities_of with `probe`),
`serve` once its engines are up, so an op a weaker server cannot serve is a
compile-time error at the op; `ttsc compile` alone asks no server.

A new engine calls `register_engine` with its factory, capabilities and spec
forms.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from ttsc.common.capabilities import Capabilities
from ttsc.common.errors import UserError, did_you_mean
from ttsc.common.specs import builtin_architecture, resolve_spec, spec_form
from ttsc.runtime.engines.base import Engine

EngineFactory = Callable[..., Engine]
# Why an engine cannot serve a (canonical) spec, or None when it can; decided
# without loading anything.
Refusal = Callable[[str], "str | None"]


@dataclass(frozen=True)
class EngineKind:
    factory: EngineFactory
    capabilities: Capabilities  # with the engine's default options
    refuses: Refusal | None = None


# spec form -> engine kinds that serve it, preferred first
SPEC_ENGINES: dict[str, list[str]] = {"torch": [], "vllm": [], "openai": []}

_KINDS: dict[str, EngineKind] = {}


def register_engine(kind: str, factory: EngineFactory, capabilities: Capabilities,
                    spec_forms: tuple[str, ...] = ("torch",), preferred: bool = False,
                    refuses: Refusal | None = None) -> None:
    """Make engine `kind` available for the given spec forms (except the specs
    `refuses` gives a reason for)."""
    _KINDS[kind] = EngineKind(factory, capabilities, refuses)
    for form in spec_forms:
        kinds = SPEC_ENGINES.setdefault(form, [])
        if kind in kinds:
            kinds.remove(kind)
        if preferred:
            kinds.insert(0, kind)
        else:
            kinds.append(kind)


def _refusal(kind: str, canonical: str) -> str | None:
    refuses = _KINDS[kind].refuses
    return refuses(canonical) if refuses is not None else None


def engine_kinds(spec: str) -> list[str]:
    """Engine kinds that can serve `spec`, the `auto` choice first."""
    canonical = resolve_spec(spec)
    return [k for k in SPEC_ENGINES.get(spec_form(canonical), [])
            if k in _KINDS and _refusal(k, canonical) is None]


def engine_kind(spec: str, engine: str = "auto") -> str:
    """The engine kind that serves `spec` when `engine` is asked for; UserError
    when none can (a malformed spec, an unknown engine, a spec it cannot serve)."""
    canonical = resolve_spec(spec)
    form = spec_form(canonical)
    kinds = engine_kinds(canonical)
    if engine == "auto" and kinds:
        return kinds[0]
    if engine in kinds:
        return engine
    if engine in _KINDS and engine in SPEC_ENGINES.get(form, []):  # serves the form, not this model
        raise UserError(f"engine `{engine}` cannot serve `{spec}`: {_refusal(engine, canonical)}",
                        hint="engines for this model: " + (", ".join(kinds) or "none in this build"))
    if not kinds:
        raise UserError(f"no engine in this build serves `{spec}` ({form} models)",
                        hint="supported here: built-in models, hf:ORG/NAME, local "
                             "directories and gguf:PATH")
    if engine in _KINDS:
        raise UserError(f"engine `{engine}` cannot serve `{spec}`",
                        hint="engines for this model: " + ", ".join(kinds))
    raise UserError(f"unknown engine `{engine}`",
                    hint=did_you_mean(engine, [*_KINDS, "auto"])
                    or "known engines: " + ", ".join(["auto", *_KINDS]))


def engine_capabilities(spec: str, engine: str = "auto") -> Capabilities:
    """What the engine serving `spec` can do, without loading anything."""
    return _KINDS[engine_kind(spec, engine)].capabilities


def make_engine(spec: str, *, engine: str = "auto", device: str | None = None,
                **options: Any) -> Engine:
    """An engine serving model `spec`; `options` go to the engine's constructor."""
    return _KINDS[engine_kind(spec, engine)].factory(spec, device=device, **options)


def check_options(kind: str, cls: type, options: dict[str, Any],
                  skip: tuple[str, ...] = ()) -> None:
    """UserError naming any option the engine's constructor does not take."""
    params = [p for p in inspect.signature(cls).parameters if p not in skip]
    unknown = [k for k in options if k not in params]
    if unknown:
        raise UserError(f"engine `{kind}` has no option `{unknown[0]}`",
                        hint=did_you_mean(unknown[0], params)
                        or "its options: " + ", ".join(params))


def _make_hf(spec: str, *, device: str | None = None, dtype: Any = None,
             **options: Any) -> Engine:
    from ttsc.runtime.engines.hf import HFEngine
    from ttsc.runtime.models import load_model

    check_options("hf", HFEngine, options, skip=("loaded",))
    return HFEngine(load_model(spec, device=device, dtype=dtype), **options)


def _make_paged(spec: str, *, device: str | None = None, **options: Any) -> Engine:
    from ttsc.runtime.engines.paged.engine import PagedEngine

    check_options("paged", PagedEngine, options, skip=("loaded",))
    return PagedEngine.from_spec(spec, device=device, **options)


def _make_openai(spec: str, *, device: str | None = None, **options: Any) -> Engine:
    from ttsc.common.specs import parse_spec
    from ttsc.runtime.engines.openai import OpenAIEngine

    check_options("openai", OpenAIEngine, options, skip=("urls", "model"))
    parsed = parse_spec(resolve_spec(spec))  # device: the server's business
    return OpenAIEngine(parsed.openai_url, parsed.openai_model, **options)


def _make_vllm(spec: str, **options: Any) -> Engine:
    from ttsc.runtime.engines.vllm import make_vllm_engine

    return make_vllm_engine(spec, **options)


# The HF engine serves one call at a time (concurrent callers take turns; a call
# batches its own rows), and has no prefix cache.
HF_CAPABILITIES = Capabilities(max_concurrency=1, prefix_cache=False)
# The paged engine batches every caller's requests together, up to max_num_seqs
# sequences in flight (256 by default), sharing prompt prefixes.
PAGED_CAPABILITIES = Capabilities(max_concurrency=256, prefix_cache=True)
# An OpenAI-compatible server at its best (see above); 16 requests in flight per
# URL by default (TTSC_OPENAI_CONCURRENCY); a server's prefix cache is its own.
OPENAI_CAPABILITIES = Capabilities(max_concurrency=16, prefix_cache=False)

register_engine("hf", _make_hf, HF_CAPABILITIES, ("torch",))
# The paged forward (paged/model.py) runs these transformers model types only.
PAGED_MODEL_TYPES = ("llama", "qwen2", "mistral")
# What a built-in model of another architecture needs that the paged forward
# lacks; adding it would touch every layer of the Llama forward and its CPU
# kernels (attention windows, per-layer RoPE tables, an activation).
_PAGED_MISSING = {
    "gemma3_text": "Gemma 3 interleaves sliding-window (512-token) and global attention "
                   "layers with a RoPE base per layer type, normalizes q and k, has four "
                   "norms per layer, GELU-tanh and a scaled embedding; the paged engine's "
                   "forward is Llama-shaped",
}


def _paged_refuses(canonical: str) -> str | None:
    arch = builtin_architecture(canonical)
    if arch is None or arch in PAGED_MODEL_TYPES:
        return None
    return _PAGED_MISSING.get(arch, f"the paged engine's forward does not run `{arch}` models")


register_engine("paged", _make_paged, PAGED_CAPABILITIES, ("torch",), preferred=True,  # the fast one
                refuses=_paged_refuses)
register_engine("openai", _make_openai, OPENAI_CAPABILITIES, ("openai",))
# vLLM with its defaults: 256 sequences in flight, automatic prefix caching.
VLLM_CAPABILITIES = Capabilities(max_concurrency=256, prefix_cache=True)
register_engine("vllm", _make_vllm, VLLM_CAPABILITIES, ("vllm", "torch"))  # `auto` for vllm: specs only
