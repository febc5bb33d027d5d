"""The executor: runs a Plan, each input at its own pace.

`run_one` walks the plan for one input: a plain dispatch loop over its stages.
A host stage evaluates its nodes; an LLM stage makes one engine call per kind
(sample, score) holding every request its nodes need for this input (an op
played in rounds, such as a knockout, then sends each round of every such
op in the stage in one call: `play_rounds`); a loop stage runs its `until`
and body regions until the input's condition holds or the rounds run out.

`run` runs many inputs at once, each in its own worker thread, keeping at
most `concurrency` in flight and starting the next input as soon as one
finishes. Batching across inputs happens in the engine: concurrent calls from
the workers join the same engine batches (continuous batching), so an input
that stops early never waits for the slowest one, and the engine's batch
stays full. `serve` and `search` call `run_one` from their own threads the
same way.

Seeds are derived from (run seed, node, input content, round), so an input's
answer does not depend on which other inputs run beside it. A node is named
there by its `seed_key` fact (what it computes, from the compiler's
seed_keys pass) where it has one: the same call in two programs (a search
space's trial and the concrete program written for it) draws the same
samples.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Sequence

from ttsc.common.errors import UserError
from ttsc.common.sampling import SAMPLING_KEYS
from ttsc.compiler.plan import Plan, Region, Stage
from ttsc.runtime.engines.base import Engine, NextTokenRequest, Usage, total_usage
from ttsc.runtime.ops import LLM_OPS, OpContext, RoundsOp, host_op

Env = dict[str, Any]  # node id -> value, for one input
# Per-input overrides of sampling settings: node path -> {setting: value}.
# A node's path is its id, prefixed by its loop stages' ids ("s3/n7").
Settings = dict[str, dict[str, Any]]


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
class InputResult:
    """What one input's run made and cost."""

    output: Any
    usage: dict[str, Usage]  # per model name
    trace: list[StageTrace]
    seconds: float
    sample_answers: list[Any] | None = None  # when the output is a vote over one extract
    samples: list[Any] | None = None  # the candidates those answers were extracted from
    values: dict[str, Any] = field(default_factory=dict)  # nodes asked for with `keep`

    @property
    def total_usage(self) -> Usage:
        return _sum(self.usage.values())


@dataclass
class RunResult:
    """The results of several inputs, in input order."""

    results: list[InputResult]
    seconds: float

    @property
    def outputs(self) -> list[Any]:
        return [r.output for r in self.results]

    @property
    def sample_answers(self) -> list[list[Any]] | None:
        if any(r.sample_answers is None for r in self.results):
            return None
        return [r.sample_answers for r in self.results]  # type: ignore[misc]

    @property
    def trace(self) -> list[StageTrace]:
        return [t for r in self.results for t in r.trace]

    @property
    def usage(self) -> dict[str, Usage]:
        out: dict[str, Usage] = {}
        for r in self.results:
            for model, u in r.usage.items():
                out[model] = out.get(model, Usage()) + u
        return out

    @property
    def total_usage(self) -> Usage:
        return _sum(r.total_usage for r in self.results)

    def summary(self) -> str:
        return usage_summary(self.total_usage, self.seconds)


def usage_summary(u: Usage, seconds: float) -> str:
    """One line: the headline token figures of the engine calls behind a run."""
    line = (f"{u.calls} calls, {u.tokens_computed} tokens computed "
            f"({u.prompt_tokens_computed} prompt + {u.generated_tokens} generated tokens; "
            f"{u.prompt_tokens + u.generated_tokens} requested, "
            f"{u.prompt_tokens_reused} prompt tokens reused), {seconds:.1f} s")
    if u.samples_stopped:  # first-finish search
        line += (f"; {u.samples_stopped} samples stopped early "
                 f"(up to {u.tokens_saved} tokens not generated)")
    if u.cache_hits or u.cache_misses:
        line += f"; call cache: {u.cache_hits} hits, {u.cache_misses} misses"
    return line


def _sum(usages: Any) -> Usage:
    total = Usage()
    for u in usages:
        total = total + u
    return total


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
        self.on_stage = on_stage  # called from worker threads
        used = {s.model for s in plan.llm_stages()}
        missing = [m for m in plan.models if m in used and m not in engines]
        if missing:
            raise ValueError(f"no engine for model(s) {missing}")

    # ------------------------------------------------------------ many inputs

    def run(self, inputs: Sequence[dict[str, Any]], *, concurrency: int = 8,
            settings: Sequence[Settings | None] | None = None, keep: Sequence[str] = (),
            on_result: Callable[[int, InputResult], None] | None = None) -> RunResult:
        """Run every input, at most `concurrency` at once, each at its own pace.

        `on_result(i, result)` is called in the calling thread as each input
        finishes, in finishing order; if an input fails, the error is raised
        once the inputs already running have finished, and every input that
        finished has been reported.
        """
        for i, row in enumerate(inputs):
            self._check_inputs(row, i)
        if concurrency < 1:
            raise UserError(f"concurrency must be at least 1 (got {concurrency})")
        start = time.perf_counter()
        results: list[InputResult | None] = [None] * len(inputs)
        pending = iter(range(len(inputs)))
        take = threading.Lock()
        finished: queue.Queue[tuple[int, InputResult | None, BaseException | None]] = queue.Queue()
        stop = threading.Event()

        def worker() -> None:
            while not stop.is_set():
                with take:
                    i = next(pending, None)
                if i is None:
                    return
                try:
                    result = self.run_one(inputs[i], settings=settings[i] if settings else None,
                                          keep=keep)
                    finished.put((i, result, None))
                except BaseException as exc:  # reported to the caller's thread
                    stop.set()
                    finished.put((i, None, exc))
                    return

        workers = [threading.Thread(target=worker, daemon=True, name=f"ttsc-input-{k}")
                   for k in range(min(concurrency, len(inputs)))]
        for w in workers:
            w.start()
        error: BaseException | None = None
        received = 0
        try:
            while received < len(inputs):
                try:
                    i, result, exc = finished.get(timeout=0.2)
                except queue.Empty:
                    if not any(w.is_alive() for w in workers) and finished.empty():
                        break  # an input failed and the others have stopped
                    continue
                received += 1
                if exc is not None:
                    error = error or exc
                    continue
                results[i] = result
                if on_result:
                    on_result(i, result)
        except BaseException:
            stop.set()  # e.g. Ctrl-C: running inputs finish their current call, then stop
            raise
        if error is not None:
            raise error
        return RunResult([r for r in results if r is not None], time.perf_counter() - start)

    # --------------------------------------------------------------- one input

    def run_one(self, inputs: dict[str, Any], *, settings: Settings | None = None,
                keep: Sequence[str] = ()) -> InputResult:
        """Run the plan on one input (a dict of the strategy's parameters).
        Thread-safe: call it from as many threads as there are inputs in flight.
        `keep` names top-level nodes whose values come back in `values`."""
        self._check_inputs(inputs)
        run = _InputRun(self, inputs, settings or {})
        start = time.perf_counter()
        region = self.plan.region
        env: Env = {nid: str(inputs[node.attrs["name"]])
                    for nid, node in region.nodes.items() if node.op == "input"}
        run.region(region, env, path="", round_=None)
        out = region.nodes[region.output].inputs["value"]
        answers, samples = _sample_answers(region, env, out)
        return InputResult(env[out], run.usage, run.trace, time.perf_counter() - start,
                           answers, samples, {nid: env[nid] for nid in keep})

    def _check_inputs(self, row: dict[str, Any], index: int = 0) -> None:
        missing = [p for p in self.plan.params if p not in row]
        if missing:
            raise UserError(f"input {index + 1} lacks `{missing[0]}` (strategy `{self.plan.strategy}` "
                            f"takes {', '.join(self.plan.params)})",
                            hint=f"pass it with --input {missing[0]}=...")


def _sample_answers(region: Region, env: Env, out: str) -> tuple[list[Any] | None, list[Any] | None]:
    """The per-sample answers the output was voted from, and their candidates,
    when the output is a vote over one extract: what single-sample accuracy
    and the data-set allocation read."""
    node = region.nodes[out]
    if node.op != "vote":
        return None, None
    src = region.nodes[node.inputs["answers"]]
    if src.op != "extract":
        return None, None
    return env[src.id], env[src.inputs["candidates"]]


def call_engine(engine: Engine, batches: dict[str, list]) -> tuple[dict[str, list], Usage]:
    """One engine call per kind for a stage's batched requests ("sample",
    "score"): each request's result (completions, next-token log-probs), by
    kind, and the calls' usage."""
    samples = engine.sample(batches["sample"]) if batches["sample"] else []
    scores = engine.score_next(batches["score"]) if batches["score"] else []
    values = {"sample": [o.completions for o in samples], "score": [o.logprobs for o in scores]}
    return values, total_usage(samples) + total_usage(scores)


def play_rounds(engine: Engine, games: dict[str, Generator], env: Env) -> tuple[int, Usage]:
    """Play ops that need several engine calls (a knockout) to their ends.
    Each round sends the next requests of every game still playing in one
    engine call per kind, so a stage's knockouts advance in step; a game's
    value goes to `env` when it returns. Returns (requests sent, usage)."""
    requests, usage = 0, Usage()
    results: dict[str, list | None] = {nid: None for nid in games}  # None starts a game
    while results:
        batches: dict[str, list] = {"sample": [], "score": []}
        spans = []
        for nid, got in results.items():
            try:
                reqs = games[nid].send(got)
            except StopIteration as done:
                env[nid] = done.value
                continue
            kind = "score" if reqs and isinstance(reqs[0], NextTokenRequest) else "sample"
            spans.append((nid, kind, len(batches[kind]), len(reqs)))
            batches[kind].extend(reqs)
        values, round_usage = call_engine(engine, batches)
        usage = usage + round_usage
        requests += len(batches["sample"]) + len(batches["score"])
        results = {nid: values[kind][start:start + n] for nid, kind, start, n in spans}
    return requests, usage


class _InputRun:
    """The walk of one input through the plan: its values, usage and trace."""

    def __init__(self, executor: Executor, inputs: dict[str, Any], settings: Settings):
        self.ex = executor
        self.key = input_key({p: inputs[p] for p in executor.plan.params})
        self.settings = settings
        self.usage: dict[str, Usage] = {}
        self.trace: list[StageTrace] = []
        self.seed_paths: dict[str, str] = {"": ""}  # a region's node path -> its seed path

    def region(self, region: Region, env: Env, path: str, round_: int | None) -> None:
        for stage in region.stages:
            t0 = time.perf_counter()
            if stage.kind == "loop":
                self.loop(stage, region, env, path)
                continue
            requests, usage = 0, Usage()
            if stage.kind == "llm":
                requests, usage = self.llm_stage(stage, region, env, path, round_)
                self.usage[stage.model] = self.usage.get(stage.model, Usage()) + usage
            else:
                for nid in stage.nodes:
                    env[nid] = self.host_value(region, nid, env, stage.kind, path, round_)
            trace = StageTrace(path + stage.id, stage.kind, [region.nodes[n].op for n in stage.nodes],
                               stage.model, requests, time.perf_counter() - t0,
                               usage.as_dict() if stage.kind == "llm" else {}, round_)
            self.trace.append(trace)
            if self.ex.on_stage:
                self.ex.on_stage(trace)

    def host_value(self, region: Region, nid: str, env: Env, kind: str, path: str = "",
                   round_: int | None = None) -> Any:
        node = region.nodes[nid]
        args = {role: env[src] for role, src in node.inputs.items()}
        if node.op == "resample":
            return host_op(node.op, self._resample_attrs(node, path, round_), args)
        if kind == "kernel":
            from ttsc.runtime.aggregate import run_vote_kernel

            weights = [args["weights"]] if "weights" in args else None
            return run_vote_kernel(node.facts["kernel"], [args["answers"]], weights)[0]
        return host_op(node.op, node.attrs, args)

    def llm_stage(self, stage: Stage, region: Region, env: Env, path: str,
                  round_: int | None) -> tuple[int, Usage]:
        engine = self.ex.engines[stage.model]
        batches: dict[str, list] = {"sample": [], "score": []}
        spans = []
        games: dict[str, Generator] = {}  # ops played in rounds (runtime.ops.RoundsOp)
        for nid in stage.nodes:
            node = region.nodes[nid]
            op = LLM_OPS[node.op]
            attrs = self._attrs(node.attrs, path + nid)
            seed_path = self.seed_paths[path] + node.facts.get("seed_key", nid)
            ctx = OpContext(self.ex.plan.prompts, self._seed_fn(seed_path, round_))
            args = {role: env[src] for role, src in node.inputs.items()}
            if isinstance(op, RoundsOp):
                games[nid] = op.play(attrs, args, ctx)
                continue
            reqs = op.requests(attrs, args, ctx)
            batch = batches[op.kind]
            spans.append((nid, op, attrs, args, reqs, op.kind, len(batch)))
            batch.extend(reqs)
        values, usage = call_engine(engine, batches)
        for nid, op, attrs, args, reqs, kind, start in spans:
            env[nid] = op.collect(attrs, args, reqs, values[kind][start:start + len(reqs)])
        requests = sum(len(b) for b in batches.values())
        if games:
            more, more_usage = play_rounds(engine, games, env)
            requests, usage = requests + more, usage + more_usage
        return requests, usage

    def _resample_attrs(self, node: Any, path: str, round_: int | None) -> dict[str, Any]:
        """`resample` draws with a seed like a sampling op's: the node's own
        seed plus the round, or one derived from (run seed, node, input,
        round), so an input's draws do not depend on its batch mates."""
        seed_path = self.seed_paths[path] + node.facts.get("seed_key", node.id)
        seed = (int(node.attrs["seed"]) + (round_ or 0) if node.attrs.get("seed") is not None
                else self._seed_fn(seed_path, round_)(0))
        return {**node.attrs, "seed": seed}

    def _attrs(self, attrs: dict[str, Any], node_path: str) -> dict[str, Any]:
        override = self.settings.get(node_path)
        if not override:
            return attrs
        unknown = [k for k in override if k not in SAMPLING_KEYS]
        if unknown:
            raise ValueError(f"per-input settings of {node_path}: `{unknown[0]}` is not a sampling setting")
        return {**attrs, **override}

    def _seed_fn(self, node_path: str, round_: int | None) -> Callable[[int], int]:
        seed, key = self.ex.seed, self.key
        return lambda salt: _seed(seed, node_path, key, round_, salt)

    def loop(self, stage: Stage, region: Region, env: Env, path: str) -> None:
        loop_id = stage.nodes[0]
        loop = region.nodes[loop_id]
        carried = {v: env[loop.inputs[f"carry:{v}"]] for v in stage.carried}
        captured = {r[8:]: env[s] for r, s in loop.inputs.items() if r.startswith("capture:")}
        seeds = self.seed_paths[path] + loop.facts.get("seed_key", stage.id)
        self.seed_paths[f"{path}{stage.id}/"] = f"{seeds}/"
        self.seed_paths[f"{path}{stage.id}/until/"] = f"{seeds}/until/"
        for r in range(stage.count or 0):
            if stage.cond is not None:
                if self.subregion(stage.cond, carried, captured, f"{path}{stage.id}/until/", r):
                    break
            carried.update(self.subregion(stage.body, carried, captured, f"{path}{stage.id}/", r))
        env[loop_id] = dict(carried)  # LOOP_OUT nodes read their variable from this bundle

    def subregion(self, sub: Region, carried: dict[str, Any], captured: dict[str, Any], path: str,
                  round_: int) -> Any:
        env: Env = {}
        for nid, node in sub.nodes.items():
            if node.op == "input":
                name = node.attrs["name"]
                env[nid] = carried[name] if name in carried else captured[name]
        self.region(sub, env, path, round_)
        out = sub.nodes[sub.output]
        if out.type == "bool":  # an `until` region
            return env[out.inputs["value"]]
        return {v: env[src] for v, src in out.inputs.items()}
