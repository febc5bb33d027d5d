"""Kernel generation: aggregate chains (extract -> vote / weighted vote ->
argmax) become one generated Triton kernel, rendered from what the IR knows
(weighted or not, samples per input) and cached by content hash. The torch
reference runs where Triton cannot."""

from __future__ import annotations

from ttsc.compiler.ir import Op, Program
from ttsc.compiler.ir_analysis import candidate_counts
from ttsc.compiler.passes.manager import PassResult
from ttsc.compiler.passes.walk import graphs
from ttsc.kernels.aggregate_codegen import AggregateSpec, write_source


def generate_kernels(program: Program) -> PassResult:
    notes: list[str] = []
    kernels = program.meta.setdefault("kernels", [])
    for graph in list(graphs(program.graph)):
        counts = candidate_counts(graph, {}) if graph is program.graph else {}
        for node in graph.nodes():
            if node.op is not Op.VOTE or "kernel" in node.meta:
                continue
            src = graph[node.inputs["answers"]]
            if src.op is not Op.EXTRACT:
                continue
            spec = AggregateSpec(weighted="weights" in node.inputs, num_samples=counts.get(src.id))
            path, content_hash = write_source(spec)
            info = {"name": "weighted_vote" if spec.weighted else "vote", "chain": spec.chain,
                    "num_samples": spec.num_samples, "hash": content_hash[:16], "source": str(path)}
            node.meta["kernel"] = info
            kernels.append({**info, "node": f"{graph.name}/{node.id}"})
            notes.append(f"{graph.name}: {spec.chain} at {node.id} -> generated kernel {path.name}")
    return PassResult(bool(notes), notes)
