"""Pilot samples: `samples` completions of a strategy's generate for every dev
question, extracted, scored, and (for each verifier) judged.

They are drawn by the executor itself, on a small plan cut from the
strategy's plan (the generate, an extract and a vote, and any verifiers
reading the generate), so they go through the same ops, seeds, engines and
call cache as an evaluation does.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ttsc.common.errors import UserError
from ttsc.compiler.plan import Plan, PlanNode, Region, Stage
from ttsc.runtime.engines.base import Engine
from ttsc.runtime.executor import Executor

EXTRACT, VOTE, OUTPUT = "pilot_extract", "pilot_vote", "pilot_output"


@dataclass
class PilotSamples:
    """Every sample drawn for every question, with what scoring made of it."""

    model: str
    spec: str
    answers: list[list[str | None]]
    correct: list[list[bool]]
    lengths: list[list[int]]  # generated tokens
    finished: list[list[bool]]
    texts: list[list[str]]
    prompt_tokens: list[int]
    seconds: float
    # Mean log-probability of each sample's generated tokens (the engine's,
    # after temperature); empty when the pool was drawn without them.
    mean_logprobs: list[list[float]] = field(default_factory=list)
    # Per verifier model name: P(Yes) of each sample, as `verify` reads it.
    verdicts: dict[str, list[list[float]]] = field(default_factory=dict)

    @property
    def counts(self) -> list[int]:
        return [sum(c) for c in self.correct]


def mean_logprob(logprobs: Sequence[float]) -> float:
    """Mean per-token log-probability of one completion (0 for an empty one)."""
    return sum(logprobs) / len(logprobs) if logprobs else 0.0


def pilot_plan(plan: Plan, gen: PlanNode, samples: int, how: dict[str, Any],
               verifiers: Sequence[PlanNode] = ()) -> Plan:
    """A plan drawing `samples` completions of `gen` per input, extracting
    their answers with `how`, and judging them with each of `verifiers`."""
    region = plan.region
    inputs = {nid: n for nid, n in region.nodes.items() if n.op == "input"}
    for node in (gen, *verifiers):
        for role, src in node.inputs.items():
            if role != "candidates" and src not in inputs:
                raise UserError(f"`{node.op}` at {node.span or node.id} reads `{role[5:] or role}`, "
                                "a value computed by the strategy; calibration needs a generate and "
                                "verifiers whose prompts read only the strategy's inputs")
    nodes = dict(inputs)
    nodes[gen.id] = PlanNode(gen.id, "generate", "candidates", dict(gen.inputs),
                             {**gen.attrs, "n": samples}, gen.span)
    stages = [Stage("pilot_generate", "llm", [gen.id], model=gen.attrs["model"])]
    for v in verifiers:
        nodes[v.id] = PlanNode(v.id, "verify", "scores", {**v.inputs, "candidates": gen.id},
                               dict(v.attrs), v.span)
        stages.append(Stage(f"pilot_{v.id}", "llm", [v.id], model=v.attrs["model"]))
    nodes[EXTRACT] = PlanNode(EXTRACT, "extract", "answers", {"candidates": gen.id}, {"how": how})
    nodes[VOTE] = PlanNode(VOTE, "vote", "text", {"answers": EXTRACT})
    nodes[OUTPUT] = PlanNode(OUTPUT, "output", None, {"value": VOTE})
    stages += [Stage("pilot_extract", "host", [EXTRACT]), Stage("pilot_vote", "host", [VOTE])]
    return Plan(plan.file, plan.strategy, list(plan.params), dict(plan.models), dict(plan.prompts),
                Region(nodes, stages, OUTPUT))


def draw_pool(plan: Plan, engines: dict[str, Engine], rows: Sequence[dict[str, Any]],
              gen: PlanNode, *, samples: int, how: dict[str, Any],
              gold: Callable[[dict[str, Any]], str], is_right: Callable[[str | None, str], bool],
              verifiers: Sequence[PlanNode] = (), seed: int = 0, concurrency: int = 8,
              on_item: Callable[[int], None] | None = None) -> PilotSamples:
    """`samples` completions of `gen` for each row, extracted, scored, judged."""
    pilot = pilot_plan(plan, gen, samples, how, verifiers)
    model = gen.attrs["model"]
    out = PilotSamples(model, plan.models[model], [], [], [], [], [], [], 0.0, [],
                       {v.id: [] for v in verifiers})
    start = time.perf_counter()
    done = 0

    def progress(_: int, __: Any) -> None:
        nonlocal done
        done += 1
        if on_item:
            on_item(done)

    run = Executor(pilot, engines, seed=seed).run(
        [{p: row[p] for p in plan.params} for row in rows], concurrency=concurrency,
        keep=[v.id for v in verifiers], on_result=progress)
    for row, result in zip(rows, run.results):
        cands, answers = result.samples, result.sample_answers
        out.answers.append(answers)
        out.correct.append([bool(is_right(a, gold(row))) for a in answers])
        out.lengths.append([c.tokens for c in cands])
        out.finished.append([c.finished or not _cut_off(c, gen) for c in cands])
        out.texts.append([c.text for c in cands])
        out.mean_logprobs.append([c.mean_logprob or 0.0 for c in cands])
        usage = result.usage[model]
        out.prompt_tokens.append(round(usage.prompt_tokens / max(1, samples)))
        for v in verifiers:
            out.verdicts[v.id].append(result.values[v.id])
    out.seconds = time.perf_counter() - start
    return out


def _cut_off(candidate: Any, gen: PlanNode) -> bool:
    """Whether a candidate stopped at max_tokens (not at its end or a stop string)."""
    return candidate.tokens >= int(gen.attrs.get("max_tokens") or math.inf)
