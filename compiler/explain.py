"""Human-readable views of a compilation: pass report, plan stages, traces."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ttsc.compiler.plan import Plan, Region, Stage
from ttsc.compiler.space import Dimension, space_size


def _fmt(v: Any) -> str:
    return "?" if v is None else str(v)


def _stage_line(stage: Stage, region: Region, indent: str) -> list[str]:
    deps = f" after {', '.join(stage.deps)}" if stage.deps else ""
    if stage.kind == "llm":
        f = stage.facts
        ops = ", ".join(f"{region.nodes[n].op} {n}" for n in stage.nodes)
        return [f"{indent}{stage.id} llm   model={stage.model}{deps}",
                f"{indent}      ops: {ops}",
                f"{indent}      requests/input={_fmt(f.get('requests_per_input'))} "
                f"samples/input={_fmt(f.get('samples_per_input'))} "
                f"prompts={', '.join(f.get('prompts', []))}"]
    if stage.kind == "loop":
        lines = [f"{indent}{stage.id} loop  up to {_fmt(stage.count)} rounds"
                 f"{' (stops early)' if stage.cond else ''}, carries {', '.join(stage.carried)}{deps}"]
        if stage.cond is not None:
            lines.append(f"{indent}      until:")
            for s in stage.cond.stages:
                lines += _stage_line(s, stage.cond, indent + "        ")
        lines.append(f"{indent}      body:")
        for s in stage.body.stages:
            lines += _stage_line(s, stage.body, indent + "        ")
        return lines
    ops = ", ".join(f"{region.nodes[n].op} {n}" for n in stage.nodes)
    extra = ""
    if stage.kind == "kernel":
        k = stage.facts["kernel"]
        extra = f"  [generated {k['name']} kernel {Path(k['source']).name}]"
    return [f"{indent}{stage.id} {stage.kind:<5} {ops}{extra}{deps}"]


def stages_text(plan: Plan) -> str:
    lines: list[str] = []
    for stage in plan.region.stages:
        lines += _stage_line(stage, plan.region, "  ")
    return "\n".join(lines)


def plan_summary(plan: Plan) -> str:
    models = ", ".join(f"{k}={v}" for k, v in plan.models.items())
    head = (f"plan for strategy `{plan.strategy}`({', '.join(plan.params)}) from {plan.file}\n"
            f"models: {models}\n"
            f"{plan.facts.get('stages', 0)} stages, {plan.facts.get('llm_stages', 0)} LLM stages")
    extra = []
    f = plan.facts
    if "predicted_tokens_per_input" in f:
        extra.append(f"predicted tokens/input: {f['predicted_tokens_per_input']} computed, "
                     f"{f.get('predicted_tokens_requested_per_input')} requested, "
                     f"{f.get('predicted_generated_tokens_per_input')} generated "
                     f"(lengths from {f.get('predicted_lengths')})")
    for key, label in (("prefill_tokens_saved", "prefill tokens saved by sharing"),
                       ("kv_peak_bytes", "KV peak bytes"), ("predicted_latency_s", "predicted latency s")):
        if key in f:
            extra.append(f"{label}: {f[key]}")
    return "\n".join([head, *extra, "stages:", stages_text(plan)])


def space_text(dims: list[Dimension]) -> str:
    """The knobs of a search space, one a line, and how many programs it holds."""
    if not dims:
        return "search space: none (every setting is fixed)"
    size = space_size(dims)
    sizes = " x ".join(str(d.size) if d.size is not None else "continuous" for d in dims)
    total = f"{size:,} programs" if size is not None else (
        f"continuous; {math.prod(d.size for d in dims if d.size is not None):,} combinations "
        "of its discrete knobs")
    lines = [f"search space: {len(dims)} knob{'s' if len(dims) != 1 else ''}, {sizes} = {total}"]
    width = max(len(d.id) for d in dims)
    knob_width = max(28, *(len(d.written()) for d in dims))
    for d in dims:
        where = f"{d.span.file}:{d.span.line}:{d.span.column}" if d.span else "?"
        count = f"{d.size} values" if d.size is not None else "[{:g}, {:g}]".format(*d.bounds())
        lines.append(f"  {d.id:<{width}}  {d.setting:<11} {d.written():<{knob_width}} {count:<12} {where}")
    return "\n".join(lines)


def explain(compiled: Any) -> str:
    plan = compiled.plan
    lines = ["passes:"]
    width = max((len(r.name) for r in compiled.report), default=0)
    for r in compiled.report:
        status = "changed" if r.changed else "no change"
        lines.append(f"  {r.name:<{width}} {status}")
        for note in r.notes:
            lines.append(f"      - {note}")
    dims = compiled.program.meta.get("space") or []
    if dims:
        lines.append(space_text(dims))
        decided = plan.facts.get("knob_values", {})
        lines += [f"  compiled with {d.id} = {d.label(decided[d.id])}" for d in dims
                  if d.id in decided]
    if plan.allocation:
        lines.append("allocation:")
        for k, v in plan.allocation.items():
            lines.append(f"  {k}: {v}")
    if plan.kernels:
        lines.append("generated kernels:")
        for k in plan.kernels:
            lines.append(f"  {k.get('name', 'kernel')} for node {k.get('node')}: {k.get('source')}")
    lines.append(plan_summary(plan))
    return "\n".join(lines)


def trace_table(trace: list[Any]) -> str:
    lines = [f"{'stage':<14} {'kind':<5} {'round':>5} {'reqs':>5} {'prompt':>7} {'reused':>7} "
             f"{'gen':>6} {'sec':>7}  ops"]
    for t in trace:
        u = t.usage
        lines.append(f"{t.stage:<14} {t.kind:<5} {_fmt(t.round) if t.round is not None else '':>5} "
                     f"{t.requests:>5} {u.get('prompt_tokens', 0):>7} "
                     f"{u.get('prompt_tokens_reused', 0):>7} {u.get('generated_tokens', 0):>6} "
                     f"{t.seconds:>7.2f}  {', '.join(t.ops)}")
    return "\n".join(lines)
