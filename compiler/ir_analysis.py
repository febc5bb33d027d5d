"""Static facts over the IR, computed one way for every pass that needs them.

- `levels`, `by_level`: each node's dependency level (0 for nodes without
  inputs); nodes of one level can run together, which is how lowering forms
  stages and how prefix sharing walks them.
- `candidate_counts`: how many candidates (or answers, scores) a node holds
  per input, where fixed at compile time.
- `candidate_lengths`: tokens per candidate a node holds: at most (the
  max_tokens of what made it, plus what loops of `extend` add), or as
  expected when given each generating node's expected length.
- `loop_inputs`: the counts and lengths a loop's regions start from.
- `source_prompt`: the generate-like node whose prompt some candidates continue.

Lowering, prefix sharing and kernel generation read these; the budget
allocator builds the same quantities symbolically (as expressions over its
decisions), from the same rules.
"""

from __future__ import annotations

from typing import Any, Callable

from ttsc.compiler import cost
from ttsc.compiler.ir import Graph, Node, Op
from ttsc.compiler.ops import T, keep_count

# Ops whose candidates are new text of up to max_tokens tokens (a debate: one
# revision per agent).
MAKES_TEXT = (Op.GENERATE, Op.FUSE, Op.UNIT_TESTS, Op.CRITIQUE, Op.REFINE, Op.DEBATE)


def fixed_int(attrs: dict[str, Any], key: str) -> int | None:
    """An integer setting when it is fixed; None when unset or still a knob."""
    value = attrs.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def max_tokens(node: Node) -> int:
    """Tokens a sample of `node` generates at most (0 when not fixed)."""
    return fixed_int(node.attrs, "max_tokens") or 0


# Tokens a sample of a generating node is taken to hold: `max_tokens` (an
# upper bound) unless a caller knows better (expected lengths).
Made = Callable[[Node], int]


def levels(graph: Graph) -> dict[str, int]:
    """Dependency level of every node: 1 + the highest level of its inputs."""
    level: dict[str, int] = {}
    for node in graph.nodes():
        preds = [level[p] for p in graph.g.predecessors(node.id)]
        level[node.id] = 1 + max(preds) if preds else 0
    return level


def by_level(graph: Graph, keep: Callable[[Node], bool]) -> list[tuple[int, list[Node]]]:
    """The nodes `keep` selects, grouped by dependency level, lowest first
    (within a level in the graph's order): what can run together."""
    level = levels(graph)
    groups: dict[int, list[Node]] = {}
    for node in graph.nodes():
        if keep(node):
            groups.setdefault(level[node.id], []).append(node)
    return sorted(groups.items())


def loop_growth(body: Graph, made: Made = max_tokens) -> int:
    """Tokens one round of a loop body adds to each carried candidate (what
    its `extend` calls generate)."""
    return sum(made(n) for n in body.nodes() if n.op is Op.EXTEND)


def loop_rounds(loop: Node) -> int:
    """Rounds a loop runs at most; 1 while its count is still undecided."""
    return fixed_int(loop.attrs, "count") or (0 if loop.attrs.get("count") == 0 else 1)


def loop_inputs(loop: Node, counts: dict[str, int | None], lengths: dict[str, int] | None = None,
                made: Made = max_tokens) -> tuple[dict[str, int | None], dict[str, int]]:
    """(counts, lengths) of a loop's INPUT names (carried and captured
    variables): carried candidates grow by every round's extension."""
    grown = loop_rounds(loop) * loop_growth(loop.attrs["body"], made)
    inner_counts: dict[str, int | None] = {}
    inner_lengths: dict[str, int] = {}
    for role, src in loop.inputs.items():
        name = role.split(":", 1)[1]
        inner_counts[name] = counts.get(src)
        inner_lengths[name] = (lengths or {}).get(src, 0) + (grown if role.startswith("carry:") else 0)
    return inner_counts, inner_lengths


def candidate_counts(graph: Graph, outer: dict[str, int | None]) -> dict[str, int | None]:
    """How many candidates (or answers/scores) each node holds per input, where
    fixed at compile time; None where it depends on run time. `outer` gives
    the counts of the graph's INPUT nodes by name. A loop's carried values
    keep their count after it when its body keeps them the same size
    (recorded as the loop node's `stable_counts`)."""
    counts: dict[str, int | None] = {}
    for node in graph.nodes():
        c = lambda role: counts.get(node.inputs.get(role, ""))  # noqa: E731
        a = node.attrs
        n = fixed_int(a, "n")
        if node.op is Op.INPUT:
            counts[node.id] = outer.get(a.get("name", ""))
        elif node.op is Op.GENERATE and fixed_int(a, "first"):
            counts[node.id] = min(fixed_int(a, "first"), n) if n else None  # first-finish: k kept
        elif node.op in (Op.GENERATE, Op.FUSE, Op.UNIT_TESTS):
            counts[node.id] = n
        elif node.op is Op.EXTEND:
            counts[node.id] = c("candidates") * n if c("candidates") is not None and n else None
        elif node.op in (Op.EXTRACT, Op.VERIFY, Op.SCORE, Op.CRITIQUE, Op.REFINE, Op.RUN_TESTS,
                         Op.CONFIDENCE):
            counts[node.id] = c("candidates")
        elif node.op is Op.TOP and a.get("groups") is not None:  # DVTS: k per subtree
            k, g, m = fixed_int(a, "k"), fixed_int(a, "groups"), c("candidates")
            kept = k * g if k is not None and g is not None else None
            counts[node.id] = min(kept, m) if kept is not None and m is not None else kept
        elif node.op is Op.TOP and a.get("keep") is not None:
            m = c("candidates")
            counts[node.id] = keep_count(a["keep"], m) if m is not None else None
        elif node.op is Op.TOP:
            k, m = fixed_int(a, "k"), c("candidates")
            counts[node.id] = min(k, m) if k is not None and m is not None else k
        elif node.op is Op.RESAMPLE:
            counts[node.id] = fixed_int(a, "k")
        elif node.op is Op.DEBATE:
            counts[node.id] = c("candidates")
        elif node.op is Op.RANK:
            k, m = fixed_int(a, "k"), c("candidates")
            counts[node.id] = (min(k, m) if k is not None and m is not None
                               else (m if a.get("k") is None else None))
        elif node.op is Op.SLICE:
            counts[node.id] = a["stop"] - a["start"]
        elif node.op is Op.CONCAT and node.type in (T.CANDIDATES, T.ANSWERS, T.SCORES):
            parts = [counts.get(s) for s in node.inputs.values()]
            counts[node.id] = None if None in parts else sum(parts)
        elif node.op is Op.CHOICE:
            parts = {counts.get(s) for s in node.inputs.values()}
            counts[node.id] = parts.pop() if len(parts) == 1 else None
        elif node.op is Op.LOOP:
            inner, _ = loop_inputs(node, counts)
            body_counts = candidate_counts(a["body"], inner)
            out = a["body"][a["body"].output]
            node.meta["stable_counts"] = all(body_counts.get(out.inputs[v]) == inner[v]
                                             for v in a["carried"])
            counts[node.id] = None
        elif node.op is Op.LOOP_OUT:
            loop = graph[node.inputs["loop"]]
            init = counts.get(loop.inputs[f"carry:{a['var']}"])
            counts[node.id] = init if loop.meta.get("stable_counts") else None
        else:
            counts[node.id] = None
    return counts


def candidate_lengths(graph: Graph, outer: dict[str, int], made: Made = max_tokens) -> dict[str, int]:
    """Tokens per candidate each node holds (`made`: what a sample of the node
    that made it holds, by default its max_tokens); `outer` gives the lengths
    of the graph's INPUT nodes by name."""
    lengths: dict[str, int] = {}
    for node in graph.nodes():
        a = node.attrs
        mt = made(node) if node.op in MAKES_TEXT or node.op is Op.EXTEND else 0
        ffs = first_finish(node, made)  # None unless a generate(..., first=k)
        if node.op is Op.INPUT:
            lengths[node.id] = outer.get(a.get("name", ""), 0)
        elif ffs is not None:
            lengths[node.id] = round(ffs.kept_length)
        elif node.op in MAKES_TEXT:
            lengths[node.id] = mt
        elif node.op is Op.RANK:
            lengths[node.id] = lengths.get(node.inputs.get("candidates", ""), 0)
        elif node.op is Op.EXTEND:
            lengths[node.id] = lengths.get(node.inputs["candidates"], 0) + mt
        elif node.op is Op.LOOP_OUT:
            loop = graph[node.inputs["loop"]]
            _, inner = loop_inputs(loop, {}, lengths, made)
            lengths[node.id] = inner[a["var"]]
        else:
            lengths[node.id] = max((lengths.get(s, 0) for s in node.inputs.values()), default=0)
    return lengths


def first_finish(node: Node, made: Made = max_tokens) -> "cost.FirstFinish | None":
    """What a `generate(..., n, first=k)` is expected to generate in all and
    keep per sample, from `made` (one sample's length); None without `first`."""
    n, k = fixed_int(node.attrs, "n"), fixed_int(node.attrs, "first")
    if node.op is not Op.GENERATE or not n or not k or k >= n:
        return None
    return cost.first_finish_tokens(n, k, made(node), max_tokens(node))


def source_prompt(graph: Graph, nid: str, sources: dict[str, Node]) -> Node | None:
    """The generate-like node whose prompt the candidates `nid` continue
    (`sources` maps a loop region's INPUT names to nodes outside it)."""
    seen = set()
    cur: Node | None = graph[nid]
    while cur is not None and cur.id not in seen:
        seen.add(cur.id)
        if cur.op in MAKES_TEXT:
            return cur
        if cur.op is Op.INPUT:
            return sources.get(cur.attrs.get("name", ""))
        if cur.op is Op.LOOP_OUT:
            loop = graph[cur.inputs["loop"]]
            nxt = loop.inputs.get(f"carry:{cur.attrs['var']}")
        else:
            nxt = cur.inputs.get("candidates") or cur.inputs.get("item0") or cur.inputs.get("option0")
        cur = graph[nxt] if nxt else None
    return None
