"""Prompt layouts: a node's prompt as literal token ids and typed holes.

A hole's text is unknown at compile time; its kind says how it varies:
"input" holes (the task input) are the same for every call of one input,
"call" holes (a candidate) differ per call, "list" holes hold all candidates.
Token ids come from `model_facts.PromptTokenizer`: token-exact when the
runtime has cached the model's tokenizer, else a stated estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ttsc.common.capabilities import Capabilities
from ttsc.common.prompts import HOLE, OP_HOLES, default_prompt
from ttsc.compiler import model_facts
from ttsc.compiler.ir import Node, Program

DEFAULT_INPUT_TOKENS = 32  # tokens a task input (question) is assumed to take
LIST_ITEM_TOKENS = 4  # "[i] " and the blank line around each listed candidate


def op_holes(op: str, kind: str) -> tuple[str, ...]:
    """Holes `op` fills once per call ("call") or with all candidates ("list")."""
    return tuple(h for h, k in OP_HOLES.get(op, {}).items() if k == kind)


@dataclass(frozen=True)
class Hole:
    name: str
    kind: str  # "input": same for every call of an input; "call": one per call; "list": all candidates


Part = str | Hole


def prompt_def(program: Program, node: Node) -> dict[str, Any] | None:
    """The prompt definition an LLM node renders ({user, system, raw})."""
    name = node.attrs.get("prompt")
    if name:
        return program.prompts[name]
    d = default_prompt(node.op.value)
    return None if d is None else d.to_dict()


def template_parts(text: str, op: str) -> list[Part]:
    """A template as literal text and holes, `{{`/`}}` unescaped."""
    parts: list[Part] = []
    pos = 0
    for m in HOLE.finditer(text):
        parts.append(text[pos:m.start()])
        if m.group(1) is None:
            parts.append(m.group(0)[0])
        else:
            name = m.group(1)
            kind = OP_HOLES.get(op, {}).get(name, "input")
            parts.append(Hole(name, kind))
        pos = m.end()
    parts.append(text[pos:])
    return _merge(parts)


def _merge(parts: Sequence[Part]) -> list[Part]:
    out: list[Part] = []
    for p in parts:
        if isinstance(p, str):
            if not p:
                continue
            if out and isinstance(out[-1], str):
                out[-1] += p
                continue
        out.append(p)
    return out


def rendered_parts(pdef: dict[str, Any], op: str, tok: model_facts.PromptTokenizer) -> list[Part]:
    """The whole prompt as the engine sees it: chat frame, system, user."""
    user = template_parts(pdef["user"], op)
    system = template_parts(pdef["system"], op) if pdef.get("system") else None
    if pdef.get("raw"):
        return _merge((system + ["\n"] if system else []) + user)
    if system is not None:
        pre, mid, post = tok.frame(system=True)
        return _merge([pre, *system, mid, *user, post])
    pre, post = tok.frame(system=False)
    return _merge([pre, *user, post])


@dataclass
class Layout:
    """A node's prompt for one model: token ids of its text, and its holes."""

    pieces: list[tuple[int, ...] | Hole]

    @staticmethod
    def of(parts: Sequence[Part], tok: model_facts.PromptTokenizer) -> "Layout":
        return Layout([p if isinstance(p, Hole) else tuple(tok.encode(p)) for p in parts])

    def counts(self, hole_tokens: Callable[[Hole], int]) -> tuple[int, int]:
        """(tokens of one call with calls' own holes empty, tokens before the
        first per-call or list hole)."""
        total = shared = 0
        open_ = True
        for p in self.pieces:
            if isinstance(p, Hole):
                if p.kind != "input":
                    open_ = False
                    continue
                n = hole_tokens(p)
            else:
                n = len(p)
            total += n
            if open_:
                shared += n
        return total, shared


_layouts: dict[tuple, Layout] = {}
FULL = Capabilities()  # nothing said: assume everything


def tokenizer_for(program: Program, spec: str) -> model_facts.PromptTokenizer:
    """How the compiler counts a model's prompt tokens: exactly where it can,
    estimated where the engine serving the model has no tokenizer (the
    capabilities `compile_program` was given)."""
    blind = sorted(name for name in _models_of(program, spec)
                   if not (program.capabilities(name) or FULL).tokenizer)
    reason = f"the engine serving `{blind[0]}` has no tokenizer" if blind else None
    return model_facts.prompt_tokenizer(spec, reason)


def caches_prefixes(program: Program, spec: str) -> bool:
    """Whether the engine serving `spec` computes a shared prompt prefix once
    (True unless the capabilities given to the compiler say otherwise)."""
    return all((program.capabilities(name) or FULL).prefix_cache
               for name in _models_of(program, spec))


def _models_of(program: Program, spec: str) -> list[str]:
    return [name for name, s in program.models.items() if s == spec]


def node_layout(program: Program, node: Node, spec: str) -> Layout | None:
    pdef = prompt_def(program, node)
    if pdef is None:
        return None
    tok = tokenizer_for(program, spec)
    key = (str(tok.dir), tok.exact, node.op.value, pdef["user"], pdef.get("system"), bool(pdef.get("raw")))
    if key not in _layouts:
        _layouts[key] = Layout.of(rendered_parts(pdef, node.op.value, tok), tok)
    return _layouts[key]
