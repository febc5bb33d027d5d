"""The executor: runs a Plan over a batch of inputs.

A plain loop over the plan's stages. Host stages evaluate their nodes input by
input. An LLM stage gathers the requests of all its nodes for all inputs and
makes one engine call of each kind (sample, score): that is where batching
across nodes and across a data set's inputs happens. Loop stages run their
`cond` and `body` regions for the inputs still looping.

Seeds are derived from (run seed, node, input content, round), so an input's
answer does not depend on which other inputs share its batch.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ttsc.compiler.plan import Plan, Region, Stage
from ttsc.common.errors import UserError
from ttsc.runtime.engines.base import Engine, Usage, total_usage
from ttsc.runtime.ops import LLM_OPS, OpContext, host_op

Values = dict[str, list[Any]]  # node id -> one value per input of the batch


@dataclass
class StageTrace:
    stage: str
    kind: str
    ops: list[str]
    model: str | None
    requests: int
    seconds: float
    usage: dict[str, int] = field(default_factory=dict)
    round: int | None = None


@dataclass
class RunResult:
    outputs: list[Any]
    trace: list[StageTrace]
    usage: dict[str, Usage]  # per model name
    seconds: float
    sample_answers: list[list[Any]] | None = None  # per input, when the output is a vote

    @property
    def total_usage(self) -> Usage:
        total = Usage()
        for u in self.usage.values():
            total = total + u
        return total

    def summary(self) -> str:
        u = self.total_usage
        return (f"{u.calls} calls, {u.prompt_tokens} prompt tokens "
                f"({u.prompt_tokens_reused} reused), {u.generated_tokens} generated tokens, "
                f"{self.seconds:.1f} s")


def input_key(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _seed(*parts: Any) -> int:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class Executor:
    def __init__(self, plan: Plan, engines: dict[str, Engine], *, seed: int = 0,
                 on_stage: Callable[[StageTrace], None] | None = None):
        self.plan = plan
        self.engines = engines
        self.seed = seed
        self.on_stage = on_stage
        missing = [m for m in plan.models if m not in engines and self._uses(m)]
        if missing:
            raise ValueError(f"no engine for model(s) {missing}")

    def _uses(self, model: str) -> bool:
        return any(s.model == model for s in self.plan.llm_stages())

    def run(self, inputs: list[dict[str, Any]]) -> RunResult:
        """Run the plan on each input (a dict of the strategy's parameters)."""
        for i, row in enumerate(inputs):
            missing = [p for p in self.plan.params if p not in row]
            if missing:
                raise UserError(f"input {i + 1} lacks `{missing[0]}` (strategy `{self.plan.strategy}` "
                                f"takes {', '.join(self.plan.params)})",
                                hint=f"pass it with --input {missing[0]}=...")
        start = time.perf_counter()
        self.usage: dict[str, Usage] = {}
        self.trace: list[StageTrace] = []
        self.keys = [input_key({p: row[p] for p in self.plan.params}) for row in inputs]
        env: Values = {}
        region = self.plan.region
        for nid, node in region.nodes.items():
            if node.op == "input":
                env[nid] = [str(row[node.attrs["name"]]) for row in inputs]
        self._region(region, env, list(range(len(inputs))), path="", round_=None)
        out = region.nodes[region.output].inputs["value"]
        samples = self._sample_answers(region, env, out)
        return RunResult(env[out], self.trace, self.usage, time.perf_counter() - start, samples)

    def _sample_answers(self, region: Region, env: Values, out: str) -> list[list[Any]] | None:
        """The per-sample answers the output was voted or picked from, when the
        output is a vote over one extract: what single-sample accuracy reads."""
        node = region.nodes[out]
        if node.op != "vote":
            return None
        src = region.nodes[node.inputs["answers"]]
        return env[src.id] if src.op == "extract" else None

    # -- regions
    def _region(self, region: Region, env: Values, rows: list[int], path: str,
                round_: int | None) -> None:
        """Evaluate every stage of `region`; env lists are aligned with `rows`."""
        for stage in region.stages:
            t0 = time.perf_counter()
            if stage.kind == "loop":
                self._loop(stage, region, env, rows, path)
                continue
            n, usage = 0, Usage()
            if stage.kind == "llm":
                n, usage = self._llm_stage(stage, region, env, rows, path, round_)
                self.usage[stage.model] = self.usage.get(stage.model, Usage()) + usage
            elif stage.kind == "kernel":
                for nid in stage.nodes:
                    self._kernel_node(region, nid, env, len(rows))
            else:
                for nid in stage.nodes:
                    self._host_node(region, nid, env, len(rows))
            trace = StageTrace(path + stage.id, stage.kind, [region.nodes[n_].op for n_ in stage.nodes],
                               stage.model, n, time.perf_counter() - t0,
                               usage.as_dict() if stage.kind == "llm" else {}, round_)
            self.trace.append(trace)
            if self.on_stage:
                self.on_stage(trace)

    def _args(self, region: Region, nid: str, env: Values, i: int) -> dict[str, Any]:
        return {role: env[src][i] for role, src in region.nodes[nid].inputs.items()}

    def _host_node(self, region: Region, nid: str, env: Values, width: int) -> None:
        node = region.nodes[nid]
        env[nid] = [host_op(node.op, node.attrs, self._args(region, nid, env, i)) for i in range(width)]

    def _kernel_node(self, region: Region, nid: str, env: Values, width: int) -> None:
        """A vote over a whole batch in one generated-kernel call."""
        from ttsc.runtime.aggregate import run_vote_kernel

        node = region.nodes[nid]
        answers = env[node.inputs["answers"]]
        weights = env[node.inputs["weights"]] if "weights" in node.inputs else None
        env[nid] = run_vote_kernel(node.facts["kernel"], answers, weights)

    def _llm_stage(self, stage: Stage, region: Region, env: Values, rows: list[int], path: str,
                   round_: int | None) -> tuple[int, Usage]:
        engine = self.engines[stage.model]
        batches: dict[str, list] = {"sample": [], "score": []}
        spans: list[tuple[str, int, str, int, int, dict, OpContext, list]] = []
        for nid in stage.nodes:
            node = region.nodes[nid]
            op = LLM_OPS[node.op]
            for i, row in enumerate(rows):
                ctx = OpContext(self.plan.prompts, self._seed_fn(path + nid, row, round_))
                args = self._args(region, nid, env, i)
                reqs = op.requests(node.attrs, args, ctx)
                batch = batches[op.kind]
                spans.append((nid, i, op.kind, len(batch), len(reqs), args, ctx, reqs))
                batch.extend(reqs)
        outputs = {
            "sample": engine.sample(batches["sample"]) if batches["sample"] else [],
            "score": engine.score_next(batches["score"]) if batches["score"] else [],
        }
        results = {"sample": [o.completions for o in outputs["sample"]],
                   "score": [o.logprobs for o in outputs["score"]]}
        for nid in stage.nodes:
            env[nid] = [None] * len(rows)
        for nid, i, kind, start, count, args, ctx, reqs in spans:
            node = region.nodes[nid]
            got = results[kind][start:start + count]
            env[nid][i] = LLM_OPS[node.op].collect(node.attrs, args, reqs, got)
        usage = total_usage(outputs["sample"]) + total_usage(outputs["score"])
        return sum(len(b) for b in batches.values()), usage

    def _seed_fn(self, node_path: str, row: int, round_: int | None) -> Callable[[int], int]:
        key = self.keys[row]
        return lambda salt: _seed(self.seed, node_path, key, round_, salt)

    def _loop(self, stage: Stage, region: Region, env: Values, rows: list[int], path: str) -> None:
        loop_id = stage.nodes[0]
        loop = region.nodes[loop_id]
        carried = {v: list(env[loop.inputs[f"carry:{v}"]]) for v in stage.carried}
        captured = {r[8:]: env[s] for r, s in loop.inputs.items() if r.startswith("capture:")}
        active = list(range(len(rows)))
        rounds = stage.count if stage.count is not None else 0
        for r in range(rounds):
            if stage.cond is not None:
                done = self._subregion(stage.cond, carried, captured, active, rows,
                                       f"{path}{stage.id}/until/", r)
                active = [a for a, d in zip(active, done) if not d]
            if not active:
                break
            out = self._subregion(stage.body, carried, captured, active, rows,
                                  f"{path}{stage.id}/", r)
            for v in stage.carried:
                for a, value in zip(active, out[v]):
                    carried[v][a] = value
        # LOOP_OUT nodes read their variable from this bundle.
        env[loop_id] = [{v: carried[v][r] for v in stage.carried} for r in range(len(rows))]

    def _subregion(self, sub: Region, carried: dict[str, list], captured: dict[str, list],
                   active: list[int], rows: list[int], path: str, round_: int) -> Any:
        env: Values = {}
        for nid, node in sub.nodes.items():
            if node.op == "input":
                source = carried if node.attrs["name"] in carried else captured
                env[nid] = [source[node.attrs["name"]][a] for a in active]
        self._region(sub, env, [rows[a] for a in active], path, round_)
        out = sub.nodes[sub.output]
        if out.type == "bool":  # an `until` region
            return env[out.inputs["value"]]
        return {v: env[src] for v, src in out.inputs.items()}
