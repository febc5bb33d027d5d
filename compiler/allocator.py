"""Budget allocation with OR-Tools CP-SAT.

A `Problem` is a small declarative model: decisions with one-hot options,
integer expressions over them (token counts, KV bytes, durations, built from
constants, per-option tables, sums, products, min/max and gates that switch a
term off when a `choice` branch is not taken), a utility table over the joint
options of the decisions that change accuracy, and limits.

`solve` encodes it for CP-SAT: one Boolean per option (exactly one per
decision), the token knapsack as a linear constraint, KV memory as a
cumulative constraint over the LLM tasks (plus the model weights for the whole
run), latency as the makespan of tasks linked by precedence (the executor runs
one stage at a time: no overlap). It maximizes utility, then minimizes tokens.
`brute_force` evaluates the same expressions on every joint assignment; the
tests hold the two to the same answers.

An infeasible problem raises `Infeasible` carrying, for each limited resource,
the smallest limit that would be feasible with the other limits kept.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Iterator, Union

RESOURCES = ("tokens", "memory", "latency")

# ------------------------------------------------------------------ expressions


@dataclass(frozen=True)
class Const:
    value: int


@dataclass(frozen=True)
class Table:
    """The value of the option chosen for `decision`."""

    decision: str
    values: tuple[int, ...]


@dataclass(frozen=True)
class Sum:
    terms: tuple["Expr", ...]


@dataclass(frozen=True)
class Prod:
    left: "Expr"
    right: "Expr"


@dataclass(frozen=True)
class Min:
    terms: tuple["Expr", ...]


@dataclass(frozen=True)
class Max:
    terms: tuple["Expr", ...]


@dataclass(frozen=True)
class Gate:
    """`expr` where `cond` holds, else 0."""

    cond: "Cond"
    expr: "Expr"


Expr = Union[Const, Table, Sum, Prod, Min, Max, Gate]


@dataclass(frozen=True)
class Picked:
    """True when `decision` takes one of `options` (indices)."""

    decision: str
    options: frozenset[int]


@dataclass(frozen=True)
class AllOf:
    conds: tuple["Cond", ...]


@dataclass(frozen=True)
class AnyOf:
    conds: tuple["Cond", ...]


Cond = Union[Picked, AllOf, AnyOf]
TRUE: Cond = AllOf(())
FALSE: Cond = AnyOf(())

ZERO, ONE = Const(0), Const(1)


# Builders that fold constants, so fixed plans give small models.
def add(*terms: Expr) -> Expr:
    flat: list[Expr] = []
    total = 0
    for t in terms:
        parts = t.terms if isinstance(t, Sum) else (t,)
        for p in parts:
            if isinstance(p, Const):
                total += p.value
            else:
                flat.append(p)
    if not flat:
        return Const(total)
    if total:
        flat.append(Const(total))
    return flat[0] if len(flat) == 1 else Sum(tuple(flat))


def mul(a: Expr, b: Expr) -> Expr:
    if isinstance(a, Const) and isinstance(b, Const):
        return Const(a.value * b.value)
    for x, y in ((a, b), (b, a)):
        if isinstance(x, Const):
            if x.value == 0:
                return ZERO
            if x.value == 1:
                return y
            if isinstance(y, Table):
                return Table(y.decision, tuple(x.value * v for v in y.values))
    return Prod(a, b)


def minimum(*terms: Expr) -> Expr:
    if all(isinstance(t, Const) for t in terms):
        return Const(min(t.value for t in terms))
    return terms[0] if len(terms) == 1 else Min(tuple(terms))


def maximum(*terms: Expr) -> Expr:
    if not terms:
        return ZERO
    if all(isinstance(t, Const) for t in terms):
        return Const(max(t.value for t in terms))
    return terms[0] if len(terms) == 1 else Max(tuple(terms))


def gate(cond: Cond, expr: Expr) -> Expr:
    if cond == TRUE or (isinstance(expr, Const) and expr.value == 0):
        return expr
    if cond == FALSE:
        return ZERO
    return Gate(cond, expr)


def all_of(*conds: Cond) -> Cond:
    if any(c == FALSE for c in conds):
        return FALSE
    flat = tuple(c for c in conds if c != TRUE)
    return TRUE if not flat else flat[0] if len(flat) == 1 else AllOf(flat)


def any_of(*conds: Cond) -> Cond:
    if any(c == TRUE for c in conds):
        return TRUE
    flat = tuple(dict.fromkeys(c for c in conds if c != FALSE))
    return FALSE if not flat else flat[0] if len(flat) == 1 else AnyOf(flat)


def evaluate(e: Expr, pick: dict[str, int]) -> int:
    if isinstance(e, Const):
        return e.value
    if isinstance(e, Table):
        return e.values[pick[e.decision]]
    if isinstance(e, Sum):
        return sum(evaluate(t, pick) for t in e.terms)
    if isinstance(e, Prod):
        return evaluate(e.left, pick) * evaluate(e.right, pick)
    if isinstance(e, Min):
        return min(evaluate(t, pick) for t in e.terms)
    if isinstance(e, Max):
        return max(evaluate(t, pick) for t in e.terms)
    if isinstance(e, Gate):
        return evaluate(e.expr, pick) if holds(e.cond, pick) else 0
    raise TypeError(e)


def holds(c: Cond, pick: dict[str, int]) -> bool:
    if isinstance(c, Picked):
        return pick[c.decision] in c.options
    if isinstance(c, AllOf):
        return all(holds(x, pick) for x in c.conds)
    return any(holds(x, pick) for x in c.conds)


def bounds(e: Expr) -> tuple[int, int]:
    if isinstance(e, Const):
        return e.value, e.value
    if isinstance(e, Table):
        return min(e.values), max(e.values)
    if isinstance(e, Sum):
        parts = [bounds(t) for t in e.terms]
        return sum(p[0] for p in parts), sum(p[1] for p in parts)
    if isinstance(e, Prod):
        (a, b), (c, d) = bounds(e.left), bounds(e.right)
        corners = (a * c, a * d, b * c, b * d)
        return min(corners), max(corners)
    if isinstance(e, (Min, Max)):
        parts = [bounds(t) for t in e.terms]
        f = min if isinstance(e, Min) else max
        return f(p[0] for p in parts), f(p[1] for p in parts)
    if isinstance(e, Gate):
        lo, hi = bounds(e.expr)
        return min(lo, 0), max(hi, 0)
    raise TypeError(e)


# ------------------------------------------------------------------ problem


@dataclass
class Decision:
    name: str
    options: list[Any]  # labels, reported back in the solution


@dataclass
class Task:
    """An LLM call group that holds KV memory while it runs."""

    name: str
    duration: Expr  # time units (the builder's; the pass uses microseconds)
    demand: Expr  # memory units while running
    after: tuple[str, ...] = ()


@dataclass
class Problem:
    decisions: list[Decision]
    utility_over: tuple[str, ...]  # decisions the utility table is indexed by
    utility: dict[tuple[int, ...], int]  # joint option indices -> scaled utility
    tokens: Expr
    static_memory: Expr  # held for the whole run (model weights)
    tasks: list[Task] = field(default_factory=list)
    limits: dict[str, int] = field(default_factory=dict)  # resource -> limit

    def decision(self, name: str) -> Decision:
        return next(d for d in self.decisions if d.name == name)

    def measure(self, pick: dict[str, int]) -> dict[str, int]:
        """Tokens, memory peak and latency of one assignment (tasks run one at a time)."""
        demands = [evaluate(t.demand, pick) for t in self.tasks]
        return {
            "tokens": evaluate(self.tokens, pick),
            "memory": evaluate(self.static_memory, pick) + max(demands, default=0),
            "latency": sum(max(evaluate(t.duration, pick), 0) for t in self.tasks),
        }

    def utility_of(self, pick: dict[str, int]) -> int:
        return self.utility[tuple(pick[d] for d in self.utility_over)]

    def assignments(self) -> Iterator[dict[str, int]]:
        names = [d.name for d in self.decisions]
        for combo in itertools.product(*(range(len(d.options)) for d in self.decisions)):
            yield dict(zip(names, combo))

    def size(self) -> int:
        total = 1
        for d in self.decisions:
            total *= len(d.options)
        return total


@dataclass
class Solution:
    pick: dict[str, int]  # decision -> option index
    utility: int
    usage: dict[str, int]
    optimal: bool = True

    def labels(self, problem: Problem) -> dict[str, Any]:
        return {d.name: d.options[self.pick[d.name]] for d in problem.decisions}


class Infeasible(Exception):
    """No assignment meets the limits. `smallest[r]` is the least limit on r
    that is feasible with the other limits kept (None: none is, whatever r)."""

    def __init__(self, smallest: dict[str, int | None], least: dict[str, int]):
        self.smallest = smallest
        self.least = least  # each resource's minimum with no limits at all
        super().__init__(f"infeasible budget; smallest feasible limits: {smallest}")


# ------------------------------------------------------------------ brute force


def brute_force(problem: Problem) -> Solution:
    """Best assignment by enumeration: most utility, then fewest tokens, then
    the first in option order."""
    best: Solution | None = None
    for pick in problem.assignments():
        usage = problem.measure(pick)
        if any(usage[r] > lim for r, lim in problem.limits.items()):
            continue
        u = problem.utility_of(pick)
        if best is None or (u, -usage["tokens"]) > (best.utility, -best.usage["tokens"]):
            best = Solution(pick, u, usage)
    if best is None:
        raise _infeasible(problem, _brute_min)
    return best


def _brute_min(problem: Problem, resource: str, limits: dict[str, int]) -> int | None:
    values = [problem.measure(p) for p in problem.assignments()]
    ok = [v[resource] for v in values if all(v[r] <= lim for r, lim in limits.items())]
    return min(ok) if ok else None


def _infeasible(problem: Problem, minimize) -> Infeasible:
    smallest: dict[str, int | None] = {}
    for r in problem.limits:
        others = {k: v for k, v in problem.limits.items() if k != r}
        smallest[r] = minimize(problem, r, others)
    least = {r: minimize(problem, r, {}) for r in RESOURCES}
    return Infeasible(smallest, {r: v for r, v in least.items() if v is not None})


# ------------------------------------------------------------------ CP-SAT


class _Encoder:
    """Expressions and conditions as CP-SAT variables, each built once."""

    def __init__(self, problem: Problem):
        from ortools.sat.python import cp_model

        self.cp = cp_model
        self.model = cp_model.CpModel()
        self.problem = problem
        self.x = {}
        for d in problem.decisions:
            lits = [self.model.NewBoolVar(f"{d.name}={i}") for i in range(len(d.options))]
            self.model.AddExactlyOne(lits)
            self.x[d.name] = lits
        self._vars: dict[Expr, Any] = {}
        self._lits: dict[Cond, Any] = {}

    def var(self, e: Expr) -> Any:
        if isinstance(e, Const):
            return e.value
        if e in self._vars:
            return self._vars[e]
        lo, hi = bounds(e)
        v = self.model.NewIntVar(lo, hi, "")
        m = self.model
        if isinstance(e, Table):
            m.Add(v == sum(val * lit for val, lit in zip(e.values, self.x[e.decision])))
        elif isinstance(e, Sum):
            m.Add(v == sum(self.var(t) for t in e.terms))
        elif isinstance(e, Prod):
            a, b = self.var(e.left), self.var(e.right)
            if isinstance(a, int) or isinstance(b, int):
                m.Add(v == a * b)
            else:
                m.AddMultiplicationEquality(v, [a, b])
        elif isinstance(e, (Min, Max)):
            parts = [self.var(t) for t in e.terms]
            (m.AddMinEquality if isinstance(e, Min) else m.AddMaxEquality)(v, parts)
        elif isinstance(e, Gate):
            c = self.lit(e.cond)
            m.Add(v == self.var(e.expr)).OnlyEnforceIf(c)
            m.Add(v == 0).OnlyEnforceIf(c.Not())
        self._vars[e] = v
        return v

    def lit(self, c: Cond) -> Any:
        if c in self._lits:
            return self._lits[c]
        b = self.model.NewBoolVar("")
        m = self.model
        if isinstance(c, Picked):
            m.Add(sum(self.x[c.decision][i] for i in c.options) == b)
        elif isinstance(c, AllOf):
            parts = [self.lit(x) for x in c.conds]
            if parts:
                m.AddBoolAnd(parts).OnlyEnforceIf(b)
                m.AddBoolOr([p.Not() for p in parts]).OnlyEnforceIf(b.Not())
            else:
                m.Add(b == 1)
        else:
            parts = [self.lit(x) for x in c.conds]
            m.AddBoolOr(parts).OnlyEnforceIf(b)
            m.AddBoolAnd([p.Not() for p in parts]).OnlyEnforceIf(b.Not())
        self._lits[c] = b
        return b

    def resources(self) -> dict[str, Any]:
        """Variables for tokens, memory peak and latency (makespan)."""
        m, p = self.model, self.problem
        tokens = self.var(p.tokens)
        static = self.var(p.static_memory)
        horizon = sum(max(bounds(t.duration)[1], 0) for t in p.tasks) + 1
        ends: dict[str, Any] = {}
        intervals, demands = [], []
        for t in p.tasks:
            dur = self.var(t.duration)
            start = m.NewIntVar(0, horizon, f"start:{t.name}")
            end = m.NewIntVar(0, horizon, f"end:{t.name}")
            intervals.append(m.NewIntervalVar(start, dur, end, f"task:{t.name}"))
            demands.append(self.var(t.demand))
            ends[t.name] = (start, end)
        for t in p.tasks:
            for before in t.after:
                if before in ends:
                    m.Add(ends[t.name][0] >= ends[before][1])
        if intervals:
            m.AddNoOverlap(intervals)
        makespan = m.NewIntVar(0, horizon, "makespan")
        for _, end in ends.values():
            m.Add(makespan >= end)
        mem_hi = bounds(p.static_memory)[1] + max((bounds(t.demand)[1] for t in p.tasks), default=0)
        memory = m.NewIntVar(0, max(mem_hi, 0), "memory")
        if intervals:
            # Weights stay for the whole run; each task's KV while it runs.
            whole = m.NewIntervalVar(0, horizon, horizon, "weights")
            m.AddCumulative(intervals + [whole], demands + [static], memory)
        else:
            m.Add(memory >= static)
        return {"tokens": tokens, "memory": memory, "latency": makespan}

    def utility(self) -> Any:
        p = self.problem
        if not p.utility_over:
            return p.utility[()]
        ys = []
        total = 0
        for combo, u in p.utility.items():
            y = self.model.NewBoolVar("")
            for d, i in zip(p.utility_over, combo):
                self.model.AddImplication(y, self.x[d][i])
            ys.append(y)
            total += u * y
        self.model.AddExactlyOne(ys)
        return total

    def pick(self, solver: Any) -> dict[str, int]:
        return {d: next(i for i, lit in enumerate(lits) if solver.Value(lit))
                for d, lits in self.x.items()}


def _solver(time_limit: float) -> Any:
    from ortools.sat.python import cp_model

    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit
    solver.parameters.num_workers = 1  # deterministic, and this runs at compile time
    return solver


def solve(problem: Problem, time_limit: float = 10.0) -> Solution:
    """Most utility within the limits, then fewest tokens (CP-SAT)."""
    from ortools.sat.python import cp_model

    enc = _Encoder(problem)
    res = enc.resources()
    for r, lim in problem.limits.items():
        enc.model.Add(res[r] <= lim)
    util = enc.utility()
    enc.model.Maximize(util)
    solver = _solver(time_limit)
    status = solver.Solve(enc.model)
    if status == cp_model.INFEASIBLE:
        raise _infeasible(problem, _cp_min)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise RuntimeError(f"CP-SAT gave no answer ({solver.StatusName(status)})")
    optimal = status == cp_model.OPTIMAL
    best_u = int(round(solver.ObjectiveValue()))
    # Second round: keep the best utility, spend the fewest tokens.
    enc.model.Add(util >= best_u)
    enc.model.Minimize(res["tokens"])
    status2 = solver.Solve(enc.model)
    if status2 in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        optimal = optimal and status2 == cp_model.OPTIMAL
    pick = enc.pick(solver)
    return Solution(pick, problem.utility_of(pick), problem.measure(pick), optimal)


def _cp_min(problem: Problem, resource: str, limits: dict[str, int]) -> int | None:
    from ortools.sat.python import cp_model

    enc = _Encoder(problem)
    res = enc.resources()
    enc.utility()  # keeps the joint-option variables consistent
    for r, lim in limits.items():
        enc.model.Add(res[r] <= lim)
    enc.model.Minimize(res[resource])
    solver = _solver(10.0)
    status = solver.Solve(enc.model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    return problem.measure(enc.pick(solver))[resource]


# ------------------------------------------------------------------ across inputs


def allocate_across_inputs(utilities: list[list[float]], costs: list[list[int]], budget: int,
                           scale: int = 1_000_000, time_limit: float = 30.0) -> list[int]:
    """Per-input option indices maximizing total utility with total cost <= budget.

    Input i has options j with utility utilities[i][j] and cost costs[i][j]
    (a multiple-choice knapsack): difficulty-aware allocation across a data
    set, as in Snell et al. (2024). Inputs with the same curves (one
    difficulty class) are interchangeable, so they are counted, not chosen one
    by one: an integer per (class, option) instead of a Boolean per (input,
    option), which spares CP-SAT a search through symmetric assignments.
    Raises Infeasible when even the cheapest options exceed the budget.
    """
    from ortools.sat.python import cp_model

    if len(utilities) != len(costs):
        raise ValueError("one utility list and one cost list per input")
    cheapest = sum(min(c) for c in costs)
    if cheapest > budget:
        raise Infeasible({"tokens": cheapest}, {"tokens": cheapest})
    classes: dict[tuple, list[int]] = {}
    for i, (us, cs) in enumerate(zip(utilities, costs)):
        key = (tuple(int(round(u * scale)) for u in us), tuple(cs))
        classes.setdefault(key, []).append(i)
    model = cp_model.CpModel()
    counts: dict[tuple, list[Any]] = {}
    spend, gain = [], []
    for key, members in classes.items():
        us, cs = key
        ys = [model.NewIntVar(0, len(members), "") for _ in us]
        model.Add(sum(ys) == len(members))
        counts[key] = ys
        spend += [c * y for c, y in zip(cs, ys)]
        gain += [u * y for u, y in zip(us, ys)]
    model.Add(sum(spend) <= budget)
    model.Maximize(sum(gain))
    solver = _solver(time_limit)
    status = solver.Solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise RuntimeError(f"CP-SAT gave no answer ({solver.StatusName(status)})")
    picks = [0] * len(utilities)
    for key, members in classes.items():
        it = iter(members)
        for j, y in enumerate(counts[key]):
            for _ in range(solver.Value(y)):
                picks[next(it)] = j
    return picks


def brute_force_across_inputs(utilities: list[list[float]], costs: list[list[int]], budget: int,
                              scale: int = 1_000_000) -> float:
    """The best total scaled utility by enumeration (tests only: exponential)."""
    best = None
    for combo in itertools.product(*(range(len(u)) for u in utilities)):
        if sum(costs[i][j] for i, j in enumerate(combo)) <= budget:
            total = sum(int(round(utilities[i][j] * scale)) for i, j in enumerate(combo))
            best = total if best is None or total > best else best
    if best is None:
        raise Infeasible({"tokens": sum(min(c) for c in costs)}, {})
    return best
