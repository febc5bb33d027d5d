"""Lowering: optimized IR -> Plan.

Nodes are scheduled as soon as their inputs are ready (by dependency level).
At each level, the LLM nodes of one model form one LLM stage: the executor
sends all their requests, for every input of a batch, to the engine at once.
Static facts (requests and samples per input) are computed here from the
candidate counts the IR implies.
"""

from __future__ import annotations

from typing import Any


from ttsc.compiler.ir import Graph, Node, Op, Program
from ttsc.compiler.ops import T
from ttsc.compiler.plan import Plan, PlanNode, Region, Stage


def lower(program: Program, passes: list[dict[str, Any]] | None = None) -> Plan:
    region = _lower_graph(program.graph, prefix="s", counts={}, models=program.models)
    plan = Plan(
        file=program.file,
        strategy=program.strategy,
        params=list(program.params),
        models=dict(program.models),
        prompts={k: dict(v) for k, v in program.prompts.items()},
        region=region,
        budget=program.budget,
        allocation=dict(program.meta.get("allocation", {})),
        kernels=list(program.meta.get("kernels", [])),
        passes=list(passes or []),
    )
    plan.facts = _totals(region)
    plan.facts.update(program.meta.get("plan_facts", {}))
    return plan


def candidate_counts(graph: Graph, outer: dict[str, int | None]) -> dict[str, int | None]:
    """How many candidates (or answers/scores) each node holds per input, where
    fixed at compile time; None where it depends on run time."""
    counts: dict[str, int | None] = {}
    for node in graph.nodes():
        c = lambda role: counts.get(node.inputs.get(role, ""))  # noqa: E731
        a = node.attrs
        n = a.get("n") if isinstance(a.get("n"), int) else None
        if node.op is Op.INPUT:
            counts[node.id] = outer.get(a.get("name", ""))
        elif node.op in (Op.GENERATE, Op.FUSE, Op.UNIT_TESTS):
            counts[node.id] = n
        elif node.op is Op.EXTEND:
            counts[node.id] = c("candidates") * n if c("candidates") is not None and n else None
        elif node.op in (Op.EXTRACT, Op.VERIFY, Op.SCORE, Op.CRITIQUE, Op.REFINE, Op.RUN_TESTS):
            counts[node.id] = c("candidates")
        elif node.op is Op.TOP:
            k, m = a.get("k"), c("candidates")
            counts[node.id] = min(k, m) if isinstance(k, int) and m is not None else (
                k if isinstance(k, int) else None)
        elif node.op is Op.RANK:
            k, m = a.get("k"), c("candidates")
            counts[node.id] = (min(k, m) if isinstance(k, int) and m is not None
                               else (m if k is None else None))
        elif node.op is Op.SLICE:
            counts[node.id] = a["stop"] - a["start"]
        elif node.op is Op.CONCAT and node.type in (T.CANDIDATES, T.ANSWERS, T.SCORES):
            parts = [counts.get(s) for s in node.inputs.values()]
            counts[node.id] = None if None in parts else sum(parts)
        elif node.op is Op.CHOICE:
            parts = {counts.get(s) for s in node.inputs.values()}
            counts[node.id] = parts.pop() if len(parts) == 1 else None
        elif node.op is Op.LOOP:
            carried_in = {v: counts.get(node.inputs[f"carry:{v}"]) for v in a["carried"]}
            body_counts = candidate_counts(a["body"], carried_in)
            out = a["body"][a["body"].output]
            stable = all(body_counts.get(out.inputs[v]) == carried_in[v] for v in a["carried"])
            counts[node.id] = None
            node.meta["stable_counts"] = stable
        elif node.op is Op.LOOP_OUT:
            loop = graph[node.inputs["loop"]]
            init = counts.get(loop.inputs[f"carry:{a['var']}"])
            counts[node.id] = init if loop.meta.get("stable_counts") else None
        else:
            counts[node.id] = None
    return counts


def _requests(node: Node, counts: dict[str, int | None]) -> tuple[int | None, int | None]:
    """(requests, samples) per input that an LLM node sends to its engine."""
    m = counts.get(node.inputs.get("candidates", ""))
    n = node.attrs.get("n") if isinstance(node.attrs.get("n"), int) else None
    if node.op in (Op.GENERATE, Op.UNIT_TESTS, Op.FUSE):
        return 1, n
    if node.op is Op.EXTEND:
        return m, (m * n if m is not None and n else None)
    if node.op in (Op.VERIFY, Op.CRITIQUE, Op.REFINE):
        return m, m
    if node.op is Op.RANK:
        return 1, 1
    if node.op is Op.SCORE:
        return None, None  # one verifier call per step: known at run time only
    return None, None


def _lower_graph(graph: Graph, prefix: str, counts: dict[str, int | None],
                 models: dict[str, str]) -> Region:
    counts = candidate_counts(graph, counts)
    level: dict[str, int] = {}
    for node in graph.nodes():
        preds = [level[p] for p in graph.g.predecessors(node.id)]
        level[node.id] = 1 + max(preds) if preds else 0
    nodes = {n.id: _plan_node(n, counts) for n in graph.nodes()}
    stages: list[Stage] = []
    owner: dict[str, str] = {}
    by_level: dict[int, list[Node]] = {}
    for node in graph.nodes():
        if node.op not in (Op.INPUT, Op.OUTPUT):
            by_level.setdefault(level[node.id], []).append(node)
    for lv in sorted(by_level):
        groups: dict[tuple, list[Node]] = {}
        for node in by_level[lv]:
            if node.op is Op.LOOP:
                key: tuple = ("loop", node.id)
            elif node.is_llm:
                # Model names that share a spec share an engine, so one batch.
                key = ("llm", models.get(node.attrs["model"], node.attrs["model"]))
            elif node.meta.get("kernel"):
                key = ("kernel", node.id)
            else:
                key = ("host",)
            groups.setdefault(key, []).append(node)
        for key, members in groups.items():
            if key[0] == "llm":  # longest-prefix-first, as the prefix-sharing pass ranked them
                members.sort(key=lambda m: m.meta.get("prefix_rank", 0))
            sid = f"{prefix}{len(stages)}"
            stage = Stage(sid, key[0], [m.id for m in members])
            if key[0] == "llm":
                stage.model = members[0].attrs["model"]
                stage.facts = _llm_facts(members, counts)
            elif key[0] == "kernel":
                stage.facts = {"kernel": members[0].meta["kernel"]}
            elif key[0] == "loop":
                loop = members[0]
                carried_in = {v: counts.get(loop.inputs[f"carry:{v}"]) for v in loop.attrs["carried"]}
                count = loop.attrs["count"]
                stage.count = count if isinstance(count, int) else None
                stage.carried = list(loop.attrs["carried"])
                if loop.attrs.get("cond") is not None:
                    stage.cond = _lower_graph(loop.attrs["cond"], f"{sid}c", carried_in, models)
                stage.body = _lower_graph(loop.attrs["body"], f"{sid}b", carried_in, models)
                stage.facts = {"max_rounds": stage.count, "stops_early": stage.cond is not None}
            for m in members:
                owner[m.id] = sid
            stages.append(stage)
    for stage in stages:
        deps = {owner[p] for nid in stage.nodes for p in graph.g.predecessors(nid) if p in owner}
        stage.deps = sorted(deps - {stage.id}, key=lambda s: int(s[len(prefix):]))
    return Region(nodes, stages, graph.output)


def _llm_facts(members: list[Node], counts: dict[str, int | None]) -> dict[str, Any]:
    requests, samples = 0, 0
    for m in members:
        r, s = _requests(m, counts)
        requests = None if r is None or requests is None else requests + r
        samples = None if s is None or samples is None else samples + s
    return {
        "ops": [m.op.value for m in members],
        "prompts": sorted({m.attrs["prompt"] for m in members if m.attrs.get("prompt")}
                          | {f"<default {m.op.value}>" for m in members
                             if not m.attrs.get("prompt") and m.op is not Op.EXTEND}),
        "requests_per_input": requests,
        "samples_per_input": samples,
    }


def _plan_node(node: Node, counts: dict[str, int | None]) -> PlanNode:
    attrs = {k: v for k, v in node.attrs.items() if k not in ("body", "cond")}
    facts = {k: v for k, v in node.meta.items() if _jsonable(v)}
    if counts.get(node.id) is not None:
        facts["count"] = counts[node.id]
    return PlanNode(node.id, node.op.value, node.type.value if node.type else None,
                    dict(node.inputs), _to_json(attrs), str(node.span) if node.span else None, facts)


def _to_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


def _jsonable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, type(None), list, dict))


def _totals(region: Region) -> dict[str, Any]:
    llm = [s for s in region.walk_stages() if s.kind == "llm"]
    return {
        "stages": sum(1 for _ in region.walk_stages()),
        "llm_stages": len(llm),
        "models_used": sorted({s.model for s in llm if isinstance(s.model, str)}),
    }
