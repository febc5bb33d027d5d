"""From a model spec to an engine.

A spec's prefix decides which engines can serve it (`resolve_spec` gives the
canonical form). The table below is the whole mapping: an engine kind names a
factory `(spec, device, **options) -> Engine`, and every spec form lists the
kinds that serve it, the first being what `engine="auto"` picks.

    spec form                          engines (`auto` first)
    smollm2-135m, tiny-random,         paged, hf, vllm (vllm: hf:ORG/NAME
    hf:ORG/NAME, a directory, gguf:PATH  and directories only)
    vllm:ORG/NAME                      vllm (the optional extra `ttsc[vllm]`)
    openai:URL#MODEL                   openai (any OpenAI-compatible server)

Engines arriving later (the paged torch engine, vLLM, the OpenAI-compatible
client) add a factory with `register_engine` and their kind to `SPEC_ENGINES`.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from ttsc.common.errors import UserError, did_you_mean
from ttsc.common.specs import resolve_spec, spec_form
from ttsc.runtime.engines.base import Engine

EngineFactory = Callable[..., Engine]

# spec form -> engine kinds that serve it, preferred first
SPEC_ENGINES: dict[str, list[str]] = {
    "torch": ["hf"],  # built-in names, hf:, local directories, gguf:
    "vllm": [],
    "openai": [],
}

_FACTORIES: dict[str, EngineFactory] = {}


def register_engine(kind: str, factory: EngineFactory,
                    spec_forms: tuple[str, ...] = ("torch",), preferred: bool = False) -> None:
    """Make engine `kind` available for the given spec forms."""
    _FACTORIES[kind] = factory
    for form in spec_forms:
        kinds = SPEC_ENGINES.setdefault(form, [])
        if kind in kinds:
            kinds.remove(kind)
        if preferred:
            kinds.insert(0, kind)
        else:
            kinds.append(kind)


def engine_kinds(spec: str) -> list[str]:
    """Engine kinds that can serve `spec`, the `auto` choice first."""
    return [k for k in SPEC_ENGINES.get(spec_form(spec), []) if k in _FACTORIES]


def make_engine(spec: str, *, engine: str = "auto", device: str | None = None,
                **options: Any) -> Engine:
    """An engine serving model `spec`; `options` go to the engine's constructor."""
    form = spec_form(resolve_spec(spec))
    kinds = [k for k in SPEC_ENGINES.get(form, []) if k in _FACTORIES]
    if not kinds:
        raise UserError(f"no engine in this build serves `{spec}` ({form} models)",
                        hint="supported here: built-in models, hf:ORG/NAME, local "
                             "directories and gguf:PATH")
    if engine == "auto":
        kind = kinds[0]
    elif engine in kinds:
        kind = engine
    elif engine in _FACTORIES:
        raise UserError(f"engine `{engine}` cannot serve `{spec}`",
                        hint="engines for this model: " + ", ".join(kinds))
    else:
        raise UserError(f"unknown engine `{engine}`",
                        hint=did_you_mean(engine, [*_FACTORIES, "auto"])
                        or "known engines: " + ", ".join(["auto", *_FACTORIES]))
    return _FACTORIES[kind](spec, device=device, **options)


def _make_hf(spec: str, *, device: str | None = None, dtype: Any = None,
             **options: Any) -> Engine:
    from ttsc.runtime.engines.hf import HFEngine
    from ttsc.runtime.models import load_model

    check_options("hf", HFEngine, options, skip=("loaded",))
    return HFEngine(load_model(spec, device=device, dtype=dtype), **options)


def check_options(kind: str, cls: type, options: dict[str, Any],
                  skip: tuple[str, ...] = ()) -> None:
    """UserError naming any option the engine's constructor does not take."""
    params = [p for p in inspect.signature(cls).parameters if p not in skip]
    unknown = [k for k in options if k not in params]
    if unknown:
        raise UserError(f"engine `{kind}` has no option `{unknown[0]}`",
                        hint=did_you_mean(unknown[0], params)
                        or "its options: " + ", ".join(params))


def _make_paged(spec: str, *, device: str | None = None, **options: Any) -> Engine:
    from ttsc.runtime.engines.paged.engine import PagedEngine
    from ttsc.runtime.models import load_model

    check_options("paged", PagedEngine, options, skip=("loaded",))
    # The paged engine converts the weights to its own dtype itself.
    return PagedEngine(load_model(spec, device=device), **options)


def _make_openai(spec: str, *, device: str | None = None, **options: Any) -> Engine:
    from ttsc.common.specs import parse_spec
    from ttsc.runtime.engines.openai import OpenAIEngine

    check_options("openai", OpenAIEngine, options, skip=("urls", "model"))
    parsed = parse_spec(resolve_spec(spec))  # device: the server's business
    return OpenAIEngine(parsed.openai_url, parsed.openai_model, **options)


def _make_vllm(spec: str, **options: Any) -> Engine:
    from ttsc.runtime.engines.vllm import make_vllm_engine

    return make_vllm_engine(spec, **options)


register_engine("hf", _make_hf, ("torch",))
register_engine("paged", _make_paged, ("torch",), preferred=True)  # the fast one
register_engine("openai", _make_openai, ("openai",))
register_engine("vllm", _make_vllm, ("vllm", "torch"))  # `auto` for vllm: specs only
