"""Budget allocation: solve `auto` and `choice` knobs under the `budget {}` block.

With a budget, every cost knob left open becomes a decision with one-hot
options: `n` and `max_tokens` and `k` (`auto`: the setting's `auto_grid` in
`common.sampling.SETTINGS`, powers of two; `choice`: the listed values;
`range`: the grid values inside it and its ends), the model (`auto` or
`choice`), which branch of a value `choice(...)` runs, and a
`repeat auto` round count. Each option's tokens, KV bytes and latency come
from the cost model (prompt tokens from the prompts as each model tokenizes
them); the answer's accuracy from the utility model (the strategy's
calibration from `ttsc calibrate`, or priors). CP-SAT maximizes accuracy within the budget, then
spends the fewest tokens.

What the budget lines mean at compile time (documented in --explain):
- `tokens <= X [per input]`: prompt tokens computed (shared prefixes once per
  input) plus generated tokens (max_tokens each), for one input;
- `memory <= Y`: the weights of every model used plus the KV cache of one
  input's largest stage; `memory <= Y per input` counts only the KV cache;
- `latency <= Z`: one input alone, stages one after another.

`temperature=auto` has no cost: it becomes the default temperature when
sampling several, 0 for one sample (`common.sampling.auto_temperature`).
Knobs that cost nothing (temperature ranges) are left to `select_defaults`. An infeasible budget is an error at its line that states
the smallest feasible limit.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

from ttsc.compiler import cost, model_facts, profiles
from ttsc.compiler.allocator import (FALSE, ONE, TRUE, ZERO, Cond, Const, Decision, Expr,
                                     Infeasible, Picked, Problem, Solution, Table, Task, add,
                                     all_of, any_of, evaluate, gate, maximum, minimum, mul, solve)
from ttsc.compiler.ir import Graph, Node, Op, Program
from ttsc.compiler.ir_analysis import source_prompt
from ttsc.compiler.passes.manager import PassResult
from ttsc.compiler.prefix.layout import DEFAULT_INPUT_TOKENS, LIST_ITEM_TOKENS, node_layout
from ttsc.compiler.utility import (AccuracyModel, Calibration, load_calibration, pooled,
                                   prior_model, truncated)
from ttsc.common.errors import BudgetInfeasible, Span, TTSError, error
from ttsc.common.knobs import Auto, Choice, Range, is_knob
from ttsc.common.sampling import SETTINGS, auto_temperature

AUTO_ROUNDS = (1, 2, 3, 4, 6, 8)  # what `repeat auto` weighs
COST_KNOBS = ("model", "n", "max_tokens", "k")
MAX_JOINT_OPTIONS = 20_000  # beyond this the utility table is too big to build
UTILITY_SCALE = 1_000_000
NS = 1e9  # latency unit: nanoseconds


def allocate(program: Program) -> PassResult:
    if not program.budget:
        return PassResult(False, [])
    builder = _Builder(program)
    problem = builder.build()
    try:
        solution = solve(problem)
    except Infeasible as exc:
        raise _infeasible_error(program, builder, exc) from None
    notes = builder.apply(solution)
    return PassResult(bool(builder.decisions), notes)


# ------------------------------------------------------------------ options


def _options(key: str, value: Any) -> list[Any] | None:
    """The options of one knob, or None when it is fixed (or costs nothing)."""
    grid = SETTINGS[key].auto_grid if key in SETTINGS else ()
    if isinstance(value, Choice):
        return list(value.options)
    if isinstance(value, Auto):
        return list(value.options) if value.options is not None else (list(grid) or None)
    if isinstance(value, Range) and grid:
        inside = [v for v in grid if value.lo <= v <= value.hi]
        return sorted({int(value.lo), int(value.hi), *inside})
    return None


def _rounds(count: Any) -> list[int]:
    """The round counts a `repeat` knob may take."""
    if isinstance(count, Choice):
        return list(count.options)
    if isinstance(count, Range):
        return list(range(int(count.lo), int(count.hi) + 1))
    return list(AUTO_ROUNDS)


@dataclass
class _Info:
    """What the builder knows of one node."""

    node: Node
    name: str  # unique across nested graphs: "n4", "n7/n2"
    decision: str | None
    options: list[dict[str, Any]]  # merged attrs per option ([attrs] when fixed)
    active: Cond = TRUE
    count: Expr = ZERO
    length: Expr = ZERO
    rounds: Expr = ONE
    carried: dict[str, Expr] = field(default_factory=dict)  # loops: counts after the loop

    def where(self) -> str:
        return f"line {self.node.span.line}" if self.node.span else self.name


class _Builder:
    def __init__(self, program: Program):
        self.program = program
        self.budget = program.budget or {}
        self.calibration: Calibration | None = (
            load_calibration(program.file) if not program.file.startswith("<") else None)
        cal = self.calibration
        self.input_tokens = round(cal.input_tokens) if cal and cal.input_tokens else DEFAULT_INPUT_TOKENS
        self.decisions: list[Decision] = []
        self.site_decisions: dict[tuple, str] = {}  # knob sites -> their decision
        self.infos: dict[str, _Info] = {}
        self.llm: list[_Info] = []
        self.tokens: list[Expr] = []
        self.tasks: list[Task] = []

    # -- graph walk
    def build(self) -> Problem:
        self._graph(self.program.graph, "", {}, TRUE, ONE)
        over, table = self._utility()
        limits: dict[str, int] = {}
        for resource, item in self.budget.items():
            scale = NS if resource == "latency" else 1
            limits[resource] = int(item["value"] * scale)
        return Problem(self.decisions, over, table, add(*self.tokens), self._weights(),
                       self.tasks, limits)

    def _spec(self, model: str) -> str:
        return self.program.models.get(model, model)

    def _decide(self, node: Node, name: str) -> tuple[str | None, list[dict[str, Any]]]:
        knobs: dict[str, list[Any]] = {}
        if node.is_llm or node.op is Op.TOP:
            for key in COST_KNOBS:
                opts = _options(key, node.attrs.get(key))
                if opts is not None:
                    knobs[key] = opts
        labels: list[dict[str, Any]] = []
        if node.op is Op.CHOICE and node.attrs.get("selected") is None:
            labels = [{"selected": i} for i in range(len(node.inputs))]
        elif node.op is Op.LOOP and is_knob(node.attrs.get("count")):
            labels = [{"count": r} for r in _rounds(node.attrs["count"])]
        elif knobs:
            keys = list(knobs)
            labels = [dict(zip(keys, combo)) for combo in itertools.product(*knobs.values())]
        if not labels:
            return None, [dict(node.attrs)]
        # Copies of one knob site (a strategy inlined twice) share one decision:
        # a knob is one place in the source, so one value.
        site = tuple(sorted(node.meta.get("knob_sites", {}).items()))
        if site and site in self.site_decisions:
            name = self.site_decisions[site]
        else:
            self.decisions.append(Decision(name, labels))
            if site:
                self.site_decisions[site] = name
        return name, [{**node.attrs, **lab} for lab in labels]

    def _table(self, info: _Info, f: Callable[[dict[str, Any]], float]) -> Expr:
        values = [int(round(f(o))) for o in info.options]
        if info.decision is None or len(set(values)) == 1:
            return Const(values[0])
        return Table(info.decision, tuple(values))

    def _graph(self, graph: Graph, path: str, outer: dict[str, _Info], active: Cond,
               rounds: Expr) -> None:
        nodes = list(graph.nodes())
        local: dict[str, _Info] = {}
        for node in nodes:
            dec, opts = self._decide(node, path + node.id)
            local[node.id] = info = _Info(node, path + node.id, dec, opts, rounds=rounds)
            self.infos[info.name] = info
        # Activity, users first: a node runs if some user that runs reads it.
        for node in reversed(nodes):
            info = local[node.id]
            if node.op is Op.OUTPUT:
                info.active = active
                continue
            conds = []
            for user in graph.users(node.id):
                ua = local[user.id].active
                for role, src in user.inputs.items():
                    if src != node.id:
                        continue
                    if user.op is Op.CHOICE:
                        conds.append(all_of(ua, self._selected(local[user.id], int(role[6:]))))
                    else:
                        conds.append(ua)
            info.active = any_of(*conds) if conds else FALSE
        for node in nodes:
            self._node(graph, local[node.id], local, outer, path)

    def _selected(self, choice: _Info, option: int) -> Cond:
        if choice.decision is not None:
            return Picked(choice.decision, frozenset({option}))
        return TRUE if (choice.node.attrs.get("selected") or 0) == option else FALSE

    def _node(self, graph: Graph, info: _Info, local: dict[str, _Info],
              outer: dict[str, _Info], path: str) -> None:
        node, a = info.node, info.node.attrs
        src = lambda role: local[node.inputs[role]] if role in node.inputs else None  # noqa: E731
        cands = src("candidates")
        if node.op is Op.INPUT:
            o = outer.get(a.get("name", ""))
            if o is not None:
                info.count, info.length = o.count, o.length
            else:
                info.length = Const(self.input_tokens)
        elif node.op in (Op.GENERATE, Op.UNIT_TESTS, Op.FUSE):
            info.count = self._table(info, lambda o: o["n"])
            info.length = self._table(info, lambda o: o["max_tokens"])
        elif node.op is Op.EXTEND:
            info.count = mul(cands.count, self._table(info, lambda o: o["n"]))
            info.length = add(cands.length, self._table(info, lambda o: o["max_tokens"]))
        elif node.op in (Op.CRITIQUE, Op.REFINE, Op.DEBATE):
            info.count = cands.count
            info.length = self._table(info, lambda o: o["max_tokens"])
        elif node.op in (Op.TOP, Op.RANK):
            k = a.get("k")
            if isinstance(k, int) or is_knob(k):
                info.count = minimum(self._table(info, lambda o: o["k"]), cands.count)
            else:
                info.count = cands.count
            info.length = cands.length
        elif node.op is Op.SLICE:
            info.count = Const(a["stop"] - a["start"])
            info.length = src("candidates").length
        elif node.op is Op.CONCAT:
            parts = [local[s] for s in node.inputs.values()]
            info.count = add(*(p.count for p in parts))
            info.length = maximum(*(p.length for p in parts))
        elif node.op is Op.CHOICE:
            parts = [(int(r[6:]), local[s]) for r, s in node.inputs.items()]
            info.count = add(*(gate(self._selected(info, i), p.count) for i, p in parts))
            info.length = maximum(*(p.length for _, p in parts))
        elif node.op is Op.LOOP:
            self._loop(graph, info, local, path)
        elif node.op is Op.LOOP_OUT:
            loop = local[node.inputs["loop"]]
            info.count, info.length = loop.carried[a["var"]], loop.length
        elif cands is not None:
            info.count, info.length = cands.count, cands.length
        if node.is_llm:
            self._llm_costs(graph, info, local)

    def _loop(self, graph: Graph, info: _Info, local: dict[str, _Info], path: str) -> None:
        node = info.node
        count = node.attrs["count"]
        rounds = (Table(info.decision, tuple(o["count"] for o in info.options))
                  if info.decision else Const(int(count)))
        body = node.attrs["body"]
        growth = add(*(self._growth(n) for n in body.nodes() if n.op is Op.EXTEND))
        outer: dict[str, _Info] = {}
        for role, s in node.inputs.items():
            name = role.split(":", 1)[1]
            carried = local[s]
            # Candidates grow by each round's extension (an upper bound).
            length = add(carried.length, mul(rounds, growth)) if role.startswith("carry:") \
                else carried.length
            outer[name] = _Info(carried.node, carried.name, None, [], count=carried.count,
                                length=length)
        info.length = maximum(*(o.length for o in outer.values())) if outer else ZERO
        sub = f"{path}{node.id}/"
        act, total = info.active, mul(info.rounds, rounds)
        if node.attrs.get("cond") is not None:
            self._graph(node.attrs["cond"], sub + "until/", outer, act, total)
        self._graph(body, sub, outer, act, total)
        # A carried value's count after the loop: what it starts with plus each
        # round's growth (zero for beam-style loops that keep their width).
        out = body[body.output]
        for var in node.attrs["carried"]:
            start = outer[var].count
            per_round = add(self.infos[sub + out.inputs[var]].count, mul(Const(-1), start))
            info.carried[var] = add(start, mul(rounds, per_round))

    def _growth(self, n: Node) -> Expr:
        mt = n.attrs.get("max_tokens")
        if isinstance(mt, int):
            return Const(mt)
        opts = _options("max_tokens", mt)
        return Const(max(opts) if opts else 0)

    # -- costs of one LLM node, per input
    def _llm_costs(self, graph: Graph, info: _Info, local: dict[str, _Info]) -> None:
        node = info.node
        cands = local.get(node.inputs.get("candidates", ""))
        crits = local.get(node.inputs.get("critiques", ""))
        m = cands.count if cands else ZERO
        length = cands.length if cands else ZERO
        layout = self._layout_counts(node, graph, local)
        F = self._table(info, lambda o: layout(o)[0])
        S = self._table(info, lambda o: layout(o)[1])
        own = self._table(info, lambda o: layout(o)[0] - layout(o)[1])
        n_mt = self._table(info, lambda o: o.get("n", 1) * o.get("max_tokens", 0))
        mt = self._table(info, lambda o: o.get("max_tokens", 0))
        op = node.op
        if op in (Op.GENERATE, Op.UNIT_TESTS):
            prefill, gen, steps = F, n_mt, mt
        elif op is Op.FUSE:
            listed = add(mul(m, add(length, Const(LIST_ITEM_TOKENS))),
                         mul(crits.count, add(crits.length, Const(LIST_ITEM_TOKENS))) if crits else ZERO)
            prefill, gen, steps = add(F, listed), n_mt, mt
        elif op is Op.RANK:
            prefill = add(F, mul(m, add(length, Const(LIST_ITEM_TOKENS))))
            gen, steps = mt, mt
        elif op in (Op.VERIFY, Op.SCORE):
            prefill, gen, steps = add(S, mul(m, add(own, length))), ZERO, ZERO
        elif op in (Op.CRITIQUE, Op.REFINE):
            extra = crits.length if (op is Op.REFINE and crits) else ZERO
            prefill = add(S, mul(m, add(own, length, extra)))
            gen, steps = mul(m, mt), mt
        elif op is Op.KNOCKOUT:  # m - 1 matches, each read in both orders: two candidates a prompt
            prefill = add(S, mul(Const(2), mul(add(m, Const(-1)), add(own, length, length))))
            gen, steps = ZERO, ZERO
        elif op is Op.DEBATE:  # per agent: its own answer and the m - 1 others', listed
            others = mul(add(m, Const(-1)), add(length, Const(LIST_ITEM_TOKENS)))
            prefill = add(S, mul(m, add(own, length, others)))
            gen, steps = mul(m, mt), mt
        else:  # EXTEND: the source prompt once, each candidate's text, n continuations each
            prefill = add(F, mul(m, length))
            gen, steps = mul(m, n_mt), mt
        kv_tokens = add(prefill, gen)
        self.tokens.append(gate(info.active, mul(info.rounds, add(prefill, gen))))
        model_of = lambda o: self._spec(o["model"])  # noqa: E731
        kv_bytes = self._table(info, lambda o: model_facts.model_shape(model_of(o)).kv_bytes_per_token(
            profiles.load_profile(model_of(o)).dtype_bytes))
        coeff = lambda o: cost.latency_coefficients(  # noqa: E731
            model_facts.model_shape(model_of(o)), profiles.load_profile(model_of(o)),
            layout(o)[0] + o.get("max_tokens", 0) // 2)
        c_pre = self._table(info, lambda o: coeff(o).prefill_token_s * NS)
        c_pass = self._table(info, lambda o: coeff(o).pass_s * NS)
        c_dec = self._table(info, lambda o: coeff(o).decode_token_s * NS)
        duration = add(mul(c_pre, prefill), mul(c_pass, add(steps, ONE)), mul(c_dec, gen))
        path = info.name[:len(info.name) - len(node.id)]
        after = tuple(path + a for a in _llm_ancestors(graph, node))
        self.tasks.append(Task(info.name, gate(info.active, mul(info.rounds, duration)),
                               gate(info.active, mul(kv_bytes, kv_tokens)), after))
        self.llm.append(info)

    def _layout_counts(self, node: Node, graph: Graph, local: dict[str, _Info]
                       ) -> Callable[[dict[str, Any]], tuple[int, int]]:
        """Per option: (tokens of one call without its candidates, shared prefix)."""
        target = node
        if node.op is Op.EXTEND:
            target = source_prompt(graph, node.inputs["candidates"], {}) or node

        def counts(o: dict[str, Any]) -> tuple[int, int]:
            layout = node_layout(self.program, target, self._spec(o["model"]))
            if layout is None:
                return 0, 0
            return layout.counts(lambda h: self.input_tokens if h.kind == "input" else 0)
        return counts

    def _weights(self) -> Expr:
        """Bytes of every model's weights, for the models some running node uses."""
        if self.budget.get("memory", {}).get("per_input"):
            return ZERO
        uses: dict[str, list[Cond]] = {}
        for info in self.llm:
            for i, o in enumerate(info.options):
                spec = self._spec(o["model"])
                on = Picked(info.decision, frozenset({i})) if info.decision else TRUE
                uses.setdefault(spec, []).append(all_of(info.active, on))
        terms = []
        for spec, conds in uses.items():
            w = model_facts.model_shape(spec).weight_bytes(profiles.load_profile(spec).dtype_bytes)
            terms.append(gate(any_of(*conds), Const(int(w))))
        return add(*terms)

    # -- utility
    def _utility(self) -> tuple[tuple[str, ...], dict[tuple[int, ...], int]]:
        graph = self.program.graph
        fn, used = self._util_of(graph, graph[graph.output].inputs["value"], "")
        over = tuple(d.name for d in self.decisions if d.name in used)
        sizes = [len(next(d for d in self.decisions if d.name == n).options) for n in over]
        total = 1
        for s in sizes:
            total *= s
        if total > MAX_JOINT_OPTIONS:
            raise TTSError([error(f"the budget allocation would weigh {total:,} combinations of "
                                  f"options (at most {MAX_JOINT_OPTIONS:,})", None,
                                  "fix some knobs (n, max_tokens, model), or give them fewer "
                                  "options")])
        table: dict[tuple[int, ...], int] = {}
        for combo in itertools.product(*(range(s) for s in sizes)):
            pick = dict(zip(over, combo))
            table[combo] = int(round(fn(pick) * UTILITY_SCALE))
        self.predict = fn
        return over, table

    def _util_of(self, graph: Graph, nid: str, path: str
                 ) -> tuple[Callable[[dict[str, int]], float], set[str]]:
        """Accuracy of the value `nid` as a function of the decisions, and
        which decisions it reads."""
        info = self.infos[path + nid]
        node = info.node
        if node.op is Op.CHOICE:
            branches = [(int(r[6:]), self._util_of(graph, s, path)) for r, s in node.inputs.items()]
            used = set().union(*(u for _, (_, u) in branches))
            if info.decision:
                used.add(info.decision)
            dec = info.decision
            fixed = node.attrs.get("selected") or 0

            def choice(pick: dict[str, int]) -> float:
                sel = pick[dec] if dec else fixed
                return next(f for i, (f, _) in branches if i == sel)(pick)
            return choice, used
        if node.op in (Op.VOTE, Op.BEST):
            target = node.inputs.get("answers") or node.inputs.get("candidates")
            tnode = graph[target]
            if tnode.op is Op.EXTRACT:
                target = tnode.inputs["candidates"]
            count = self.infos[path + target].count
            sources = self._sources(graph, target, path)
            used = _decisions_in(count) | {d for s, c in sources for d in
                                           ([s.decision] if s.decision else []) + list(_decisions_in(c))}
            aggregate = "vote" if node.op is Op.VOTE else "best"
            rho = self._reliability(graph, node, path) if aggregate == "best" else None
            if rho is not None:
                used |= rho[1]

            def agg(pick: dict[str, int]) -> float:
                k = evaluate(count, pick)
                if k <= 0:
                    return 0.0
                model = self._pooled(sources, pick)
                if aggregate == "vote":
                    return model.vote_accuracy(k)
                return model.best_of(k, reliability=rho[0](pick) if rho else None)
            return agg, used
        sources = self._sources(graph, nid, path)
        if not sources:
            return (lambda pick: 0.0), set()
        used = {s.decision for s, _ in sources if s.decision}
        return (lambda pick: self._pooled(sources, pick).pass_at_1()), used

    def _sources(self, graph: Graph, nid: str, path: str) -> list[tuple[_Info, Expr]]:
        """The LLM nodes whose samples make up `nid`, with how many each gives."""
        info = self.infos[path + nid]
        node = info.node
        if node.op in (Op.GENERATE, Op.UNIT_TESTS, Op.FUSE, Op.CRITIQUE, Op.REFINE, Op.EXTEND):
            return [(info, info.count)]
        if node.op is Op.CONCAT:
            return [s for src in node.inputs.values() for s in self._sources(graph, src, path)]
        if node.op is Op.CHOICE:
            return [(s, gate(self._selected(info, int(r[6:])), c))
                    for r, src in node.inputs.items() for s, c in self._sources(graph, src, path)]
        if node.op is Op.LOOP_OUT:
            loop = graph[node.inputs["loop"]]
            return self._sources(graph, loop.inputs[f"carry:{node.attrs['var']}"], path)
        nxt = node.inputs.get("candidates") or node.inputs.get("answers")
        return self._sources(graph, nxt, path) if nxt else []

    def _accuracy_model(self, model_name: str) -> AccuracyModel:
        cal = self.calibration
        if cal and model_name in cal.models:
            return cal.models[model_name].model()
        return prior_model(model_facts.model_shape(self._spec(model_name)).num_params)

    def _pooled(self, sources: list[tuple[_Info, Expr]], pick: dict[str, int]) -> AccuracyModel:
        parts = []
        for s, c in sources:
            o = s.options[pick[s.decision]] if s.decision else s.options[0]
            model = self._accuracy_model(o["model"])
            # Truncation matters to the decision only when max_tokens is decided
            # (or measured): a fixed one scales every option alike.
            if s.decision and "max_tokens" in self.decision(s.decision).options[0] or model.calibrated:
                model = truncated(model, model.finish_prob(o.get("max_tokens")))
            parts.append((model, max(evaluate(c, pick), 0)))
        parts = [(m, c) for m, c in parts if c > 0] or [(parts[0][0], 1)]
        return pooled(parts)

    def decision(self, name: str) -> Decision:
        return next(d for d in self.decisions if d.name == name)

    def _reliability(self, graph: Graph, node: Node, path: str
                     ) -> tuple[Callable[[dict[str, int]], float], set[str]] | None:
        by = node.inputs.get("by")
        if by is None or graph[by].op not in (Op.VERIFY, Op.SCORE):
            return None
        info = self.infos[path + by]
        cal = self.calibration

        def rho(pick: dict[str, int]) -> float:
            o = info.options[pick[info.decision]] if info.decision else info.options[0]
            name = o["model"]
            if cal and name in cal.verifiers:
                return cal.verifiers[name]
            return self._accuracy_model(name).verifier_reliability
        return rho, ({info.decision} if info.decision else set())

    # -- applying the solution
    def apply(self, solution: Solution) -> list[str]:
        notes: list[str] = []
        chosen: dict[str, Any] = {}
        for info in self.infos.values():
            if info.decision is not None:
                info.node.attrs.update(self.decision(info.decision).options[solution.pick[info.decision]])
        for d in self.decisions:
            info = self.infos[d.name]
            label = d.options[solution.pick[d.name]]
            node = info.node
            shown = ", ".join(f"{k}={v}" for k, v in label.items())
            chosen[f"{node.op.value} at {info.where()}"] = label
            notes.append(f"{node.op.value} at {info.where()}: {shown} (of {len(d.options)} options)")
        for info in self.infos.values():
            t = info.node.attrs.get("temperature")
            if isinstance(t, Auto) and info.node.is_llm:
                n = info.node.attrs.get("n", 1)
                info.node.attrs["temperature"] = auto_temperature(n if isinstance(n, int) else 1)
                notes.append(f"{info.node.op.value} at {info.where()}: temperature="
                             f"{info.node.attrs['temperature']} (auto: no cost; "
                             f"{auto_temperature(2)} when sampling several, 0 for one)")
        usage = solution.usage
        used = [f"tokens {usage['tokens']:,}/input", f"memory {_fmt_bytes(usage['memory'])}",
                f"latency {usage['latency'] / NS:.2f} s"]
        limits = [_fmt_limit(r, item) for r, item in self.budget.items()]
        accuracy = solution.utility / UTILITY_SCALE
        basis = (f"calibrated ({self.calibration.data})" if self.calibration
                 else "priors (no calibration for this file; run `ttsc calibrate`)")
        notes.append(f"predicted {', '.join(used)} within {'; '.join(limits)}; "
                     f"predicted accuracy {accuracy:.3f} from {basis}; "
                     f"CP-SAT {'optimal' if solution.optimal else 'feasible (time limit)'}")
        unknown = sorted({self._spec(o['model']) for i in self.llm for o in i.options
                          if model_facts.model_shape(self._spec(o['model'])).source == "default"})
        if unknown:
            notes.append("no config known for " + ", ".join(unknown)
                         + ": costed as a Llama-3-8B-shaped model")
        self.program.meta["allocation"] = {
            "chosen": chosen,
            "predicted_accuracy": round(accuracy, 4),
            "tokens_per_input": usage["tokens"],
            "memory_bytes": usage["memory"],
            "latency_s": round(usage["latency"] / NS, 3),
            "budget": {r: item["value"] for r, item in self.budget.items()},
            "utility_model": basis,
            "solver": "CP-SAT optimal" if solution.optimal else "CP-SAT feasible",
        }
        return notes


def _llm_ancestors(graph: Graph, node: Node) -> list[str]:
    import networkx as nx

    return sorted(a for a in nx.ancestors(graph.g, node.id) if graph[a].is_llm)


def _decisions_in(e: Expr) -> set[str]:
    from ttsc.compiler.allocator import Gate, Max, Min, Prod, Sum

    if isinstance(e, Table):
        return {e.decision}
    if isinstance(e, (Sum, Min, Max)):
        return set().union(*(_decisions_in(t) for t in e.terms))
    if isinstance(e, Prod):
        return _decisions_in(e.left) | _decisions_in(e.right)
    if isinstance(e, Gate):
        return _decisions_in(e.expr) | _cond_decisions(e.cond)
    return set()


def _cond_decisions(c: Cond) -> set[str]:
    if isinstance(c, Picked):
        return {c.decision}
    return set().union(*(_cond_decisions(x) for x in c.conds)) if c.conds else set()


# ------------------------------------------------------------------ errors


def _fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def _fmt_value(resource: str, value: float) -> str:
    if resource == "tokens":
        return f"{int(value):,} tokens"
    if resource == "memory":
        return _fmt_bytes(value)
    return f"{value:.2f} s"


def _fmt_limit(resource: str, item: dict[str, Any]) -> str:
    """A budget line as written (normalized units)."""
    per = " per input" if item.get("per_input") else ""
    value = f"{int(item['value']):,}" if resource == "tokens" else _fmt_value(resource, item["value"])
    return f"{resource} <= {value}{per}"


def _budget_spans(program: Program) -> dict[str, Span]:
    """Where each budget line is (the IR keeps values only; re-parse the file)."""
    from ttsc.dsl import ast
    from ttsc.dsl.parser import parse

    try:
        module = parse(program.source, program.file)
    except TTSError:
        return {}
    spans: dict[str, Span] = {}
    for d in module.definitions:
        if isinstance(d, ast.BudgetDef):
            for item in d.items:
                spans.setdefault(item.resource, item.span)
    return spans


def _infeasible_error(program: Program, builder: _Builder, exc: Infeasible) -> BudgetInfeasible:
    spans = _budget_spans(program)
    budget = program.budget or {}
    diags = []

    def real(resource: str, value: int) -> float:
        return value / NS if resource == "latency" else value

    culprits = {r: v for r, v in exc.smallest.items() if v is not None and v > _limit(budget, r)}
    for resource, value in culprits.items():
        item = budget[resource]
        per = " per input" if item.get("per_input") or resource == "tokens" else ""
        diags.append(error(
            f"the budget `{_fmt_limit(resource, item)}` cannot be met: the smallest feasible "
            f"{resource} budget is {_fmt_value(resource, real(resource, value))}{per}"
            + (" with the other limits kept" if len(budget) > 1 else ""),
            spans.get(resource),
            f"raise it to {_fmt_value(resource, real(resource, value))}, or lower n, "
            "max_tokens or the number of calls"))
    if not diags:
        # No single limit can be raised alone: state each one's own minimum.
        parts = ", ".join(f"{r} >= {_fmt_value(r, real(r, v))}" for r, v in exc.least.items()
                          if r in budget)
        for resource, item in budget.items():
            diags.append(error(
                f"the budget cannot be met as a whole; `{_fmt_limit(resource, item)}` is part of "
                f"the conflict (the cheapest plan needs {parts})", spans.get(resource),
                "raise several limits together"))
    return BudgetInfeasible(diags, {program.file: program.source},
                            {r: real(r, v) for r, v in culprits.items()})


def _limit(budget: dict[str, Any], resource: str) -> int:
    value = budget[resource]["value"]
    return int(value * NS) if resource == "latency" else int(value)
