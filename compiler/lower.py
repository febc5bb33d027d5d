"""Lowering: optimized IR -> Plan.

Nodes are scheduled as soon as their inputs are ready (by dependency level).
At each level, the LLM nodes of one model form one LLM stage: the executor
sends all their requests, for every input of a batch, to the engine at once.
Static facts (requests and samples per input) are computed here from the
candidate counts the IR implies (`ir_analysis`).
"""

from __future__ import annotations

from typing import Any

from ttsc.compiler import ir_analysis
from ttsc.compiler.ir import Graph, Node, Op, Program
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


def _requests(node: Node, counts: dict[str, int | None]) -> tuple[int | None, int | None]:
    """(requests, samples) per input that an LLM node sends to its engine."""
    m = counts.get(node.inputs.get("candidates", ""))
    n = ir_analysis.fixed_int(node.attrs, "n")
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
    if node.op is Op.DEBATE:
        return m, m
    if node.op is Op.KNOCKOUT:  # m - 1 matches, each read in both orders; nothing sampled
        return (2 * (m - 1) if m else 0) if m is not None else None, 0
    return None, None


def _lower_graph(graph: Graph, prefix: str, counts: dict[str, int | None],
                 models: dict[str, str]) -> Region:
    counts = ir_analysis.candidate_counts(graph, counts)
    nodes = {n.id: _plan_node(n, counts) for n in graph.nodes()}
    stages: list[Stage] = []
    owner: dict[str, str] = {}
    for _, level in ir_analysis.by_level(graph, lambda n: n.op not in (Op.INPUT, Op.OUTPUT)):
        groups: dict[tuple, list[Node]] = {}
        for node in level:
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
                inner, _ = ir_analysis.loop_inputs(loop, counts)
                count = loop.attrs["count"]
                stage.count = count if isinstance(count, int) else None
                stage.carried = list(loop.attrs["carried"])
                if loop.attrs.get("cond") is not None:
                    stage.cond = _lower_graph(loop.attrs["cond"], f"{sid}c", inner, models)
                stage.body = _lower_graph(loop.attrs["body"], f"{sid}b", inner, models)
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
