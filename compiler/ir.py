"""The IR: a networkx DiGraph of typed op nodes.

A `Node` names its inputs by role (`{"candidates": "n3", "by": "n5"}`) and
keeps compile-time constants in `attrs` (model name, prompt name, n,
temperature, ...); a setting a search space leaves open is a `common.knobs`
value there until the allocator, an assignment or the defaults decide it.
`meta` is open: passes record what they learn there (`knob_sites` names the
source knob behind each open attribute).
Edges mirror the inputs so networkx answers topology questions.

A `repeat` loop is one LOOP node holding two sub-graphs (`cond`, `body`) whose
INPUT nodes stand for loop-carried and captured variables; LOOP_OUT nodes
read a carried variable's final value.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Iterator, Mapping

import networkx as nx

from ttsc.common.capabilities import Capabilities
from ttsc.compiler.ops import T
from ttsc.common.errors import Span


class Op(str, Enum):
    INPUT = "input"
    OUTPUT = "output"
    CONST = "const"
    CALL = "call"  # a call of another strategy, before inlining
    GENERATE = "generate"
    EXTEND = "extend"
    EXTRACT = "extract"
    VOTE = "vote"
    VERIFY = "verify"
    SCORE = "score"
    BEST = "best"
    TOP = "top"
    RANK = "rank"
    CRITIQUE = "critique"
    FUSE = "fuse"
    REFINE = "refine"
    UNIT_TESTS = "unit_tests"
    RUN_TESTS = "run_tests"
    AGREEMENT = "agreement"
    ALL_DONE = "all_done"
    CONFIDENCE = "confidence"
    RESAMPLE = "resample"  # particle filtering: draw candidates by their weights (seeded)
    KNOCKOUT = "knockout"  # the strategy library's pairwise judge
    DEBATE = "debate"  # the strategy library's multi-agent round
    CONCAT = "concat"
    COMPARE = "compare"
    LOGIC = "logic"  # and / or / not
    CHOICE = "choice"  # pick one of several alternative values (search space)
    SLICE = "slice"  # candidates[start:stop], made by sample merging
    LOOP = "loop"
    LOOP_OUT = "loop_out"


LLM_OPS = frozenset({Op.GENERATE, Op.EXTEND, Op.VERIFY, Op.SCORE, Op.RANK, Op.CRITIQUE,
                     Op.FUSE, Op.REFINE, Op.UNIT_TESTS})
# Ops whose output is a function of their inputs alone (no sampling).
PURE_OPS = frozenset({Op.EXTRACT, Op.VOTE, Op.BEST, Op.TOP, Op.AGREEMENT, Op.ALL_DONE, Op.CONCAT,
                      Op.COMPARE, Op.LOGIC, Op.CONST, Op.SLICE, Op.RUN_TESTS, Op.VERIFY, Op.SCORE,
                      Op.CONFIDENCE})
# The strategy library's ops: both call a model; a knockout reads scores only.
LLM_OPS = LLM_OPS | {Op.KNOCKOUT, Op.DEBATE}
PURE_OPS = PURE_OPS | {Op.KNOCKOUT}


@dataclass
class Node:
    id: str
    op: Op
    type: T | None
    inputs: dict[str, str] = field(default_factory=dict)  # role -> node id
    attrs: dict[str, Any] = field(default_factory=dict)
    span: Span | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_llm(self) -> bool:
        return self.op in LLM_OPS

    @property
    def is_deterministic(self) -> bool:
        """Same inputs give the same output: safe to merge two copies."""
        if self.op in PURE_OPS:
            return True
        return self.is_llm and self.attrs.get("temperature", 1.0) == 0

    def key(self) -> tuple:
        """Identity for common-subexpression elimination."""
        return (self.op, tuple(sorted(self.inputs.items())), _freeze(self.attrs))


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Graph):
        return id(value)
    return value


class Graph:
    """A DAG of nodes with one OUTPUT node (sub-graphs of loops included)."""

    def __init__(self, name: str = "main"):
        self.name = name
        self.g = nx.DiGraph()
        self._ids = itertools.count()
        self.output: str | None = None

    # -- construction
    def fresh_id(self, prefix: str = "n") -> str:
        while True:
            nid = f"{prefix}{next(self._ids)}"
            if nid not in self.g:
                return nid

    def add(self, op: Op, type: T | None, inputs: dict[str, str] | None = None,
            attrs: dict[str, Any] | None = None, span: Span | None = None,
            id: str | None = None, meta: dict[str, Any] | None = None) -> Node:
        node = Node(id or self.fresh_id(), op, type, dict(inputs or {}), dict(attrs or {}), span,
                    dict(meta or {}))
        self.insert(node)
        return node

    def insert(self, node: Node) -> None:
        if node.id in self.g:
            raise ValueError(f"duplicate node id {node.id}")
        self.g.add_node(node.id, node=node)
        for src in node.inputs.values():
            self.g.add_edge(src, node.id)
        if node.op is Op.OUTPUT:
            self.output = node.id

    def set_inputs(self, nid: str, inputs: dict[str, str]) -> None:
        for src in list(self.g.predecessors(nid)):
            self.g.remove_edge(src, nid)
        self[nid].inputs = dict(inputs)
        for src in inputs.values():
            self.g.add_edge(src, nid)

    def remove(self, nid: str) -> None:
        if any(True for _ in self.g.successors(nid)):
            raise ValueError(f"node {nid} still has users")
        self.g.remove_node(nid)
        if self.output == nid:
            self.output = None

    def replace_uses(self, old: str, new: str) -> int:
        """Point every user of `old` at `new`; returns how many inputs changed."""
        changed = 0
        for user in list(self.g.successors(old)):
            node = self[user]
            inputs = {r: (new if s == old else s) for r, s in node.inputs.items()}
            changed += sum(1 for s in node.inputs.values() if s == old)
            self.set_inputs(user, inputs)
        return changed

    # -- queries
    def __getitem__(self, nid: str) -> Node:
        return self.g.nodes[nid]["node"]

    def __contains__(self, nid: str) -> bool:
        return nid in self.g

    def __len__(self) -> int:
        return self.g.number_of_nodes()

    def nodes(self) -> Iterator[Node]:
        """Nodes in a deterministic topological order."""
        for nid in nx.lexicographical_topological_sort(self.g, key=_id_order):
            yield self[nid]

    def users(self, nid: str) -> list[Node]:
        return [self[u] for u in sorted(self.g.successors(nid), key=_id_order)]

    def inputs_of(self) -> list[Node]:
        return [n for n in self.nodes() if n.op is Op.INPUT]

    def walk(self) -> Iterator[tuple["Graph", Node]]:
        """Every node of this graph and of nested loop graphs, with its graph."""
        for node in self.nodes():
            yield self, node
            if node.op is Op.LOOP:
                for sub in (node.attrs.get("cond"), node.attrs["body"]):
                    if sub is not None:
                        yield from sub.walk()

    def copy(self) -> "Graph":
        return copy.deepcopy(self)

    def check(self) -> None:
        """Invariants every pass must keep; raises AssertionError naming the break."""
        assert nx.is_directed_acyclic_graph(self.g), f"{self.name}: cycle in IR"
        assert self.output is not None and self.output in self.g, f"{self.name}: no output node"
        for nid in self.g:
            node = self[nid]
            assert node.id == nid, f"{self.name}: node key {nid} != id {node.id}"
            for role, src in node.inputs.items():
                assert src in self.g, f"{self.name}: {nid}.{role} points at missing {src}"
                assert self.g.has_edge(src, nid), f"{self.name}: missing edge {src}->{nid}"
            if node.op is Op.LOOP:
                node.attrs["body"].check()
                if node.attrs.get("cond") is not None:
                    node.attrs["cond"].check()

    def __repr__(self) -> str:
        return f"Graph({self.name}, {len(self)} nodes)"

    def pretty(self, indent: str = "") -> str:
        """A readable listing, one node a line (used by --explain and tests)."""
        lines = []
        for node in self.nodes():
            args = ", ".join(f"{r}={s}" for r, s in node.inputs.items())
            attrs = ", ".join(f"{k}={_show(v)}" for k, v in node.attrs.items()
                              if k not in ("body", "cond"))
            sep = "; " if args and attrs else ""
            lines.append(f"{indent}{node.id}: {node.type.value if node.type else '-'} = "
                         f"{node.op.value}({args}{sep}{attrs})")
            if node.op is Op.LOOP:
                if node.attrs.get("cond") is not None:
                    lines.append(f"{indent}  until:")
                    lines.append(node.attrs["cond"].pretty(indent + "    "))
                lines.append(f"{indent}  body:")
                lines.append(node.attrs["body"].pretty(indent + "    "))
        return "\n".join(lines)


def _show(v: Any) -> str:
    return repr(v) if isinstance(v, str) else str(v)


def _id_order(nid: str) -> tuple:
    head = nid.rstrip("0123456789")
    tail = nid[len(head):]
    return (head, int(tail) if tail else -1, nid)


# What compile_program is told of the engines: by model name, or a function
# of a model's spec; None assumes everything.
CapabilitiesGiven = Mapping[str, Capabilities] | Callable[[str], Capabilities] | None


@dataclass
class Program:
    """Everything the compiler knows about one .tts file, for one strategy."""

    file: str
    source: str
    strategy: str
    params: list[str]
    graph: Graph
    models: dict[str, str]  # model name -> spec (aliases resolved)
    prompts: dict[str, dict[str, Any]]  # name -> {user, system, raw, holes}
    budget: dict[str, Any] | None = None  # resource -> {value, per_input}
    knob_sites: dict[str, Any] = field(default_factory=dict)  # id -> build.KnobSite, as written
    meta: dict[str, Any] = field(default_factory=dict)

    def capabilities(self, model: str) -> Capabilities | None:
        """What the engine serving model `model` can do, as `compile_program`
        was told (by model name, or as a function of the model's spec); None:
        nothing was said, assume everything."""
        given = self.meta.get("capabilities")
        if callable(given):
            known = self.meta.setdefault("capabilities_known", {})
            spec = self.models.get(model)
            if spec is not None and spec not in known:
                known[spec] = given(spec)
            return known.get(spec)
        return (given or {}).get(model)
