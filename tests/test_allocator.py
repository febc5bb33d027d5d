"""The CP-SAT allocator against brute force, and the allocation pass on strategies."""

import random

import pytest

from ttsc.compiler import model_facts
from ttsc.compiler.allocator import (ONE, Const, Decision, Infeasible, Picked, Problem, Table, Task,
                                     add, allocate_across_inputs, brute_force,
                                     brute_force_across_inputs, gate, maximum, minimum, mul, solve)
from ttsc.compiler.build import build
from ttsc.compiler.ir import Op
from ttsc.compiler.passes.allocate import _Builder
from ttsc.compiler.passes.inline import inline
from ttsc.compiler.pipeline import compile_source, program_for
from ttsc.compiler.utility import prior_model
from ttsc.common.errors import TTSError
from ttsc.dsl.parser import parse


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    # Defaults only: no measured profile or cached tokenizer changes the figures.
    monkeypatch.setenv("TTSC_CACHE_DIR", str(tmp_path / "cache"))


# ------------------------------------------------------------------ CP-SAT vs brute force


def random_problem(rng: random.Random) -> Problem:
    decisions = [Decision(f"d{i}", list(range(rng.randint(2, 4)))) for i in range(rng.randint(1, 3))]

    def table(lo=0, hi=40):
        d = rng.choice(decisions)
        return Table(d.name, tuple(rng.randint(lo, hi) for _ in d.options))

    first = decisions[0]
    tokens = add(table(), mul(table(1, 6), table()), gate(Picked(first.name, frozenset({0})), table()),
                 minimum(table(), table()))
    tasks = [Task("a", add(table(), ONE), table()),
             Task("b", add(mul(table(0, 3), table()), ONE), maximum(table(), table()), ("a",)),
             Task("c", add(gate(Picked(first.name, frozenset({1})), table()), ONE), table(), ("a",))]
    static = gate(Picked(first.name, frozenset({len(first.options) - 1})), Const(rng.randint(0, 30)))
    over = tuple(d.name for d in decisions if rng.random() < 0.8)
    sizes = [len(next(d for d in decisions if d.name == n).options) for n in over]
    utility = {}

    def combos(i, prefix):
        if i == len(sizes):
            utility[tuple(prefix)] = rng.randint(0, 1000)
            return
        for o in range(sizes[i]):
            combos(i + 1, prefix + [o])
    combos(0, [])
    problem = Problem(decisions, over, utility, tokens, static, tasks)
    measures = [problem.measure(p) for p in problem.assignments()]
    for r in ("tokens", "memory", "latency"):
        if rng.random() < 0.6:
            values = sorted(m[r] for m in measures)
            problem.limits[r] = rng.choice(values) - rng.choice((0, 0, 1))
    return problem


@pytest.mark.parametrize("seed", range(40))
def test_cp_sat_matches_brute_force(seed):
    problem = random_problem(random.Random(seed))
    try:
        want = brute_force(problem)
    except Infeasible as exc:
        with pytest.raises(Infeasible) as got:
            solve(problem)
        assert got.value.smallest == exc.smallest
        assert got.value.least == exc.least
        return
    got = solve(problem)
    assert (got.utility, got.usage["tokens"]) == (want.utility, want.usage["tokens"])
    assert all(got.usage[r] <= lim for r, lim in problem.limits.items())
    assert got.optimal


def test_smallest_feasible_limit_is_feasible():
    for seed in range(60):
        problem = random_problem(random.Random(1000 + seed))
        try:
            brute_force(problem)
        except Infeasible as exc:
            for r, value in exc.smallest.items():
                if value is not None:
                    relaxed = Problem(problem.decisions, problem.utility_over, problem.utility,
                                      problem.tokens, problem.static_memory, problem.tasks,
                                      {**problem.limits, r: value})
                    brute_force(relaxed)  # raises if the stated limit were not feasible


def test_across_inputs_matches_brute_force():
    rng = random.Random(3)
    for _ in range(15):
        m = rng.randint(2, 4)
        utilities = [sorted(rng.random() for _ in range(3)) for _ in range(m)]
        costs = [sorted(rng.randint(1, 30) for _ in range(3)) for _ in range(m)]
        budget = rng.randint(sum(c[0] for c in costs), sum(c[-1] for c in costs))
        picks = allocate_across_inputs(utilities, costs, budget)
        assert sum(costs[i][j] for i, j in enumerate(picks)) <= budget
        total = sum(int(round(utilities[i][j] * 1_000_000)) for i, j in enumerate(picks))
        assert total == brute_force_across_inputs(utilities, costs, budget)
    with pytest.raises(Infeasible):
        allocate_across_inputs([[0.1, 0.2]], [[10, 20]], 5)


# ------------------------------------------------------------------ the pass

HEAD = '''model policy = "smollm2-135m"
model big = "openai:http://localhost:8000/v1#big"
prompt solve = """
{question}
Answer with the number only.
"""
prompt check = """
Problem: {question}
Answer: {candidate}
Is the answer correct? Answer Yes or No.
"""
'''


def program(body: str):
    source = HEAD + body
    built = build(parse(source, "t.tts"))
    assert not built.diagnostics.errors, [d.message for d in built.diagnostics.errors]
    prog = program_for(built, list(built.info.strategies)[-1])
    inline(prog)
    return prog


def compiled(body: str):
    return compile_source(HEAD + body, "t.tts")


def node(c, op: Op):
    return next(n for _, n in c.program.graph.walk() if n.op is op)


SC = '''strategy s(question) {{
    samples = generate({model}, solve, n={n}, max_tokens={mt}, temperature=auto)
    return {ret}
}}
budget {{ {budget} }}
'''


def sc(model="policy", n="auto", mt="24", ret="vote(extract(samples, number))",
       budget="tokens <= 2000 per input"):
    return SC.format(model=model, n=n, mt=mt, ret=ret, budget=budget)


def test_pass_agrees_with_brute_force_on_its_own_problem():
    for body in (sc(), sc(model="choice(policy, big)", mt="auto"),
                 sc(ret="choice(vote(extract(samples, number)), best(samples, by=verify(policy, samples, check)))",
                    budget="tokens <= 3000 per input; latency <= 20 s")):
        problem = _Builder(program(body)).build()
        got, want = solve(problem), brute_force(problem)
        assert (got.utility, got.usage["tokens"]) == (want.utility, want.usage["tokens"])


def test_n_auto_takes_the_most_samples_the_token_budget_buys():
    # Best-of-n under a verifier gains with every sample (coverage grows), so
    # the budget is what stops n.
    ret = "best(samples, by=verify(policy, samples, check))"
    tight = compiled(sc(ret=ret, budget="tokens <= 600 per input"))
    loose = compiled(sc(ret=ret, budget="tokens <= 3000 per input"))
    n_tight, n_loose = node(tight, Op.GENERATE).attrs["n"], node(loose, Op.GENERATE).attrs["n"]
    assert n_tight < n_loose
    alloc = loose.plan.allocation
    assert alloc["tokens_per_input"] <= 3000 and alloc["chosen"]
    assert node(loose, Op.GENERATE).attrs["temperature"] == 0.7  # auto, several samples
    # The next option (twice the samples) would not have fit.
    problem = _Builder(program(sc(ret=ret, budget="tokens <= 3000 per input"))).build()
    [decision] = problem.decisions
    doubled = [o["n"] for o in decision.options].index(2 * n_loose)
    assert problem.measure({decision.name: doubled})["tokens"] > 3000


def test_vote_accuracy_may_peak_so_n_auto_spends_only_what_helps():
    # Under the prior, wrong answers that cluster make a long vote lose on hard
    # questions: the allocator stops at the best n, not at the budget.
    c = compiled(sc(budget="tokens <= 20000 per input"))
    n = node(c, Op.GENERATE).attrs["n"]
    m = prior_model(model_facts.model_shape("smollm2-135m").num_params)
    assert m.vote_accuracy(n) == max(m.vote_accuracy(k) for k in (1, 2, 4, 8, 16, 32, 64))


def test_model_choice_follows_the_memory_budget():
    roomy = compiled(sc(model="choice(policy, big)", n="4", budget="tokens <= 4000 per input"))
    assert node(roomy, Op.GENERATE).attrs["model"] == "big"  # the larger prior accuracy
    small = compiled(sc(model="choice(policy, big)", n="4",
                        budget="tokens <= 4000 per input; memory <= 2 GiB"))
    assert node(small, Op.GENERATE).attrs["model"] == "policy"  # an 8B model's weights do not fit


def test_value_choice_is_decided_by_utility_within_budget():
    ret = "choice(vote(extract(samples, number)), best(samples, by=verify(policy, samples, check)))"
    m = prior_model(model_facts.model_shape("smollm2-135m").num_params)
    best_wins = m.best_of(8) > m.vote_accuracy(8)
    roomy = compiled(sc(n="8", ret=ret, budget="tokens <= 5000 per input"))
    assert chosen_option(roomy) == (1 if best_wins else 0)
    # The decided choice folds away and the other branch is dead code.
    assert not any(n.op is Op.CHOICE for _, n in roomy.program.graph.walk())
    assert any(n.op is (Op.VERIFY if best_wins else Op.VOTE) for _, n in roomy.program.graph.walk())
    # Too few tokens for 8 verifier calls: the vote branch is the only one that fits.
    vote_only = _Builder(program(sc(n="8", ret=ret, budget="tokens <= 10 per input"))).build()
    cheapest = min(vote_only.measure(p)["tokens"] for p in vote_only.assignments())
    tight = compiled(sc(n="8", ret=ret, budget=f"tokens <= {cheapest} per input"))
    assert chosen_option(tight) == 0
    assert not any(n.op is Op.VERIFY for _, n in tight.program.graph.walk())


def chosen_option(c) -> int:
    [choice] = [v for k, v in c.plan.allocation["chosen"].items() if k.startswith("choice")]
    return choice["selected"]


def test_repeat_auto_rounds_fit_the_budget():
    body = '''strategy s(question) {
    samples = generate(policy, solve, n=4, max_tokens=8)
    repeat auto until agreement(extract(samples, number)) >= 0.75 {
        samples = samples + generate(policy, solve, n=4, max_tokens=8)
    }
    return vote(extract(samples, number))
}
budget { tokens <= 400 per input }
'''
    c = compiled(body)
    loop = node(c, Op.LOOP)
    assert isinstance(loop.attrs["count"], int) and loop.attrs["count"] >= 1
    assert c.plan.allocation["tokens_per_input"] <= 400
    problem = _Builder(program(body)).build()
    assert solve(problem).utility == brute_force(problem).utility


def test_infeasible_budget_states_the_smallest_feasible_one():
    body = sc(budget="tokens <= 10 per input")
    problem = _Builder(program(body)).build()
    least = min(problem.measure(p)["tokens"] for p in problem.assignments())
    with pytest.raises(TTSError) as exc:
        compiled(body)
    diag = exc.value.diagnostics[0]
    budget_line = (HEAD + body).splitlines().index("budget { tokens <= 10 per input }") + 1
    assert diag.span is not None and diag.span.line == budget_line
    assert f"smallest feasible tokens budget is {least:,} tokens per input" in diag.message
    assert "`tokens <= 10 per input` cannot be met" in diag.message
    # ... and that budget is indeed feasible, with one sample.
    ok = compiled(sc(budget=f"tokens <= {least} per input"))
    assert node(ok, Op.GENERATE).attrs["n"] == 1


def test_infeasible_memory_names_its_line():
    body = sc(budget="tokens <= 4000 per input\n    memory <= 1 MiB")
    with pytest.raises(TTSError) as exc:
        compiled(body)
    [diag] = exc.value.diagnostics
    assert "memory <= 1.00 MiB" in diag.message and "smallest feasible memory budget is" in diag.message
    lines = (HEAD + body).splitlines()
    assert diag.span.line == next(i for i, t in enumerate(lines, 1) if "memory <= 1 MiB" in t)
    assert "error:" in exc.value.render()


def test_fixed_plan_over_budget_is_an_error_too():
    with pytest.raises(TTSError, match="cannot be met"):
        compiled(sc(n="64", budget="tokens <= 100 per input"))


def test_without_budget_auto_is_left_to_defaults_which_reject_it():
    body = '''strategy s(question) {
    return vote(extract(generate(policy, solve, n=auto), number))
}
'''
    with pytest.raises(TTSError, match="needs a budget"):
        compiled(body)
