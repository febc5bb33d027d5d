"""Seed keys: name each LLM call and loop by what it computes, not by its node id.

The executor seeds a call from (run seed, the call's place in the plan,
input, round). Node ids depend on how a program was written: a search space
builds every branch of every choice, so the call a chosen configuration
makes has another id there than in the concrete program written for it.
Keyed by structure instead (the op, its settings but `n`, and the keys of
its inputs, recursively), the same call gets the same seeds in both: the
winner a search writes reproduces its trial exactly, from the call cache.
`n` is left out so that n=4 and n=8 of one call share their first four
samples. Two calls of one graph with the same structure are told apart by
their order.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ttsc.compiler.ir import Graph, Op, Program
from ttsc.compiler.passes.manager import PassResult

LEFT_OUT = ("n", "body", "cond")


def seed_keys(program: Program) -> PassResult:
    _graph(program.graph, {})
    return PassResult(False, [])  # facts for the runtime; nothing a reader needs to see


def _graph(graph: Graph, outer: dict[str, str]) -> None:
    keys: dict[str, str] = {}
    seen: dict[str, int] = {}
    for node in graph.nodes():
        if node.op is Op.INPUT:
            keys[node.id] = _digest(["input", node.attrs.get("name"), node.attrs.get("role")])
            continue
        attrs = {k: v for k, v in node.attrs.items() if k not in LEFT_OUT}
        parts: list[Any] = [node.op.value, _plain(attrs),
                            sorted((role, keys[src]) for role, src in node.inputs.items())]
        if node.op is Op.LOOP:
            body_keys: dict[str, str] = {}
            for key in ("cond", "body"):
                sub = node.attrs.get(key)
                if isinstance(sub, Graph):
                    _graph(sub, body_keys)
                    parts.append([key, sorted(body_keys.values())])
        digest = _digest(parts)
        # The same structure twice in one graph: the first, the second, ...
        seen[digest] = seen.get(digest, 0) + 1
        keys[node.id] = digest if seen[digest] == 1 else _digest([digest, seen[digest]])
        if node.is_llm or node.op in (Op.LOOP, Op.RESAMPLE):  # resample draws with a seed too
            node.meta["seed_key"] = keys[node.id][:16]
    outer.update(keys)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def _digest(parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=repr).encode()).hexdigest()
