"""What search spaces need from the language: optional steps (`none`),
ensembles of models, choices of prompts and of round counts; all six of
Archon's axes in one file."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from ttsc.common.errors import BudgetInfeasible, TTSError
from ttsc.compiler.passes.allocate import _Builder
from ttsc.compiler.passes.inline import inline
from ttsc.compiler.passes.manager import run_passes
from ttsc.compiler.pipeline import compile_program, compile_source, load_program
from ttsc.compiler.space import concrete_source, space_dimensions
from ttsc.dsl.parser import parse
from ttsc.dsl.unparse import unparse

from test_unparse import program

ROOT = Path(__file__).resolve().parent.parent
SEARCH_EXAMPLES = sorted((ROOT / "examples" / "search").glob("*.tts"))

HEAD = '''model a = "tiny-random"
model b = "tiny-random"
prompt solve = "{question} Answer:"
prompt terse = "{question}"
prompt check = "{question} {candidate} Yes or No?"
'''


def dims(body: str):
    program, _ = load_program(HEAD + body, "t.tts")
    return space_dimensions(program)


def plan_of(body: str, assignment: dict | None = None):
    program, _ = load_program(HEAD + body, "t.tts")
    plan, _ = compile_program(program, assignment)
    return plan


def ops(plan) -> list[str]:
    return sorted(n.op for n in plan.region.all_nodes().values())


def errors(body: str) -> list[str]:
    with pytest.raises(TTSError) as info:
        load_program(HEAD + body, "t.tts")
    return [f"{d.span.line}:{d.span.column}: {d.message}" for d in info.value.diagnostics]


# ------------------------------------------------------------------ optional steps

OPTIONAL_STEP = '''strategy s(question) {
    c = generate(a, solve, n=4)
    c = choice(rank(b, c, k=2), none)
    return vote(extract(c, number))
}
'''


def test_an_optional_step_is_a_branch_whose_none_keeps_the_variable():
    (d,) = dims(OPTIONAL_STEP)
    assert d.id == "s.c.choice" and d.setting == "branch" and d.values == (0, 1)
    assert d.labels == ("rank(b, c, k=2)", "none") and d.label(1) == "none"
    assert "rank" in ops(plan_of(OPTIONAL_STEP, {d.id: 0}))
    assert "rank" not in ops(plan_of(OPTIONAL_STEP, {d.id: 1}))


def test_a_chosen_none_is_left_out_of_the_concrete_program():
    text = concrete_source(HEAD + OPTIONAL_STEP, "t.tts", {"s.c.choice": 1})
    assert "none" not in text and "rank" not in text
    assert "c = generate(a, solve, n=4)\n    return vote(extract(c, number))" in text
    kept = concrete_source(HEAD + OPTIONAL_STEP, "t.tts", {"s.c.choice": 0})
    assert "c = rank(b, c, k=2)" in kept


OPTIONAL_ARG = '''strategy s(question) {
    c = generate(a, solve, n=2)
    f = fuse(b, c, critiques=choice(critique(b, c), none), n=1)
    return best(f, by=verify(b, f, choice(check, none)))
}
'''


def test_an_optional_argument_or_prompt_may_be_left_out():
    crit, prompt = dims(OPTIONAL_ARG)
    assert (crit.id, crit.labels) == ("s.f.fuse.critiques", ("critique(b, c)", "none"))
    assert (prompt.id, prompt.labels) == ("s.return.verify.prompt", ("check", "none"))
    with_all = plan_of(OPTIONAL_ARG, {crit.id: 0, prompt.id: 0})
    fuse = next(n for n in with_all.region.all_nodes().values() if n.op == "fuse")
    verify = next(n for n in with_all.region.all_nodes().values() if n.op == "verify")
    assert "critiques" in fuse.inputs and verify.attrs["prompt"] == "check"
    bare = plan_of(OPTIONAL_ARG, {crit.id: 1, prompt.id: 1})
    fuse = next(n for n in bare.region.all_nodes().values() if n.op == "fuse")
    verify = next(n for n in bare.region.all_nodes().values() if n.op == "verify")
    assert "critiques" not in fuse.inputs and "critique" not in ops(bare)
    assert verify.attrs.get("prompt") is None  # the shipped default prompt
    text = concrete_source(HEAD + OPTIONAL_ARG, "t.tts", {crit.id: 1, prompt.id: 1})
    assert "fuse(b, c, n=1)" in text and "verify(b, f)" in text
    assert "critiques" not in text and "none" not in text


@pytest.mark.parametrize("body, message", [
    ("strategy s(question) {\n    return choice(generate(a, solve), none)\n}\n",
     "7:39: `none` can only be an option of choice(...) that sets a variable or an optional argument"),
    ("strategy s(question) {\n    y = choice(generate(a, solve), none)\n    return best(y, by=verify(b, y))\n}\n",
     "7:36: `none` would leave `y` without a value: it has none before this line"),
    ("strategy s(question) {\n    c = generate(a, solve)\n    return best(choice(c, none), by=verify(b, c))\n}\n",
     "8:17: argument `candidates` of `best` cannot be left out"),
    ("strategy s(question) {\n    return none\n}\n",
     "7:12: `none` can only be an option of choice(...)"),
])
def test_none_anywhere_else_is_an_error_at_its_place(body, message):
    found = errors(body)
    assert any(f.startswith(message) for f in found), found


def test_none_is_a_reserved_word():
    with pytest.raises(TTSError, match="`none` is a reserved word"):
        parse("strategy s(q) {\n    none = 3\n    return q\n}\n", "t.tts")


# ------------------------------------------------------------------ ensembles

ENSEMBLE = '''strategy s(question) {
    c = generate([a, b], solve, n=choice(1, 2))
    return vote(extract(c, number))
}
'''


def test_a_list_of_models_is_one_call_per_model_joined():
    (n,) = dims(ENSEMBLE)  # one knob: the n of both calls
    plan = plan_of(ENSEMBLE, {n.id: 2})
    gens = [x for x in plan.region.all_nodes().values() if x.op == "generate"]
    assert sorted(g.attrs["model"] for g in gens) == ["a", "b"] and {g.attrs["n"] for g in gens} == {2}


def test_a_choice_of_ensembles_is_a_branch_per_option():
    body = ENSEMBLE.replace("[a, b]", "choice([a], [b], [a, b])")
    model, n = dims(body)
    assert model.setting == "branch" and model.labels == ("[a]", "[b]", "[a, b]")
    for option, models in ((0, ["a"]), (1, ["b"]), (2, ["a", "b"])):
        plan = plan_of(body, {model.id: option, n.id: 1})
        assert sorted(x.attrs["model"] for x in plan.region.all_nodes().values()
                      if x.op == "generate") == models
    text = concrete_source(HEAD + body, "t.tts", {model.id: 2, n.id: 2})
    assert "generate([a, b], solve, n=2)" in text
    compile_source(text, "t.tts")


def test_copies_of_an_ensemble_share_one_allocator_decision():
    body = ENSEMBLE.replace("n=choice(1, 2)", "n=auto") + "budget { tokens <= 600 per input }\n"
    program, _ = load_program(HEAD + body, "t.tts")
    run_passes(program, [inline])
    problem = _Builder(program).build()
    assert len(problem.decisions) == 1


@pytest.mark.parametrize("body, message", [
    ("strategy s(question) {\n    c = generate(a, solve)\n    return best(c, by=verify([a, b], c))\n}\n",
     "8:23: `verify` takes one model, not a list"),
    ("strategy s(question) {\n    return vote(extract(generate([a, a], solve), number))\n}\n",
     "7:34: `a` is listed twice in this ensemble"),
    ("strategy s(question) {\n    return vote(extract(generate([a, zz], solve), number))\n}\n",
     "7:38: unknown model `zz`"),
])
def test_a_bad_ensemble_is_an_error_at_its_place(body, message):
    found = errors(body)
    assert any(f.startswith(message) for f in found), found


def test_a_choice_of_prompts_binds_each_prompts_holes():
    body = '''strategy s(question) {
    c = generate(a, choice(solve, terse), n=2)
    return vote(extract(c, number))
}
'''
    (d,) = dims(body)
    assert d.labels == ("solve", "terse")
    assert {n.attrs["prompt"] for n in plan_of(body, {d.id: 1}).region.all_nodes().values()
            if n.op == "generate"} == {"terse"}
    bad = body.replace("terse)", "check)")  # check has {candidate}, which generate cannot fill
    assert any("names no variable" in e for e in errors(bad))


# ------------------------------------------------------------------ layers

LAYERS = '''strategy s(question) {
    c = generate(a, solve, n=2)
    repeat choice(0, 1, 3) {
        c = fuse(b, c, n=2)
    }
    return vote(extract(c, number))
}
'''


def test_a_choice_of_round_counts_is_a_count_knob():
    (d,) = dims(LAYERS)
    assert (d.id, d.setting, d.values) == ("s.repeat.count", "count", (0, 1, 3))
    assert "fuse" not in ops(plan_of(LAYERS, {d.id: 0}))  # zero layers: the loop is gone
    plan = plan_of(LAYERS, {d.id: 3})
    (loop,) = [s for s in plan.region.stages if s.kind == "loop"]
    assert loop.count == 3
    assert "repeat 3 {" in concrete_source(HEAD + LAYERS, "t.tts", {d.id: 3})
    ranged = dims(LAYERS.replace("choice(0, 1, 3)", "range(1, 3)"))[0]
    assert ranged.values == (1, 2, 3)


def test_the_allocator_decides_a_round_count_choice_under_a_budget():
    source = HEAD + LAYERS + "budget { tokens <= 1000 per input }\n"
    plan = compile_source(source, "t.tts").plan
    assert plan.facts["knob_values"]["s.repeat.count"] == 0  # the only count within 1000 tokens
    with pytest.raises(BudgetInfeasible) as info:
        compile_source(source, "t.tts", assignment={"s.repeat.count": 3})
    assert info.value.smallest["tokens"] > 1000  # what three layers need, for search to report


@pytest.mark.parametrize("count, message", [
    ("range(3, 1)", "range(3, 1) is empty: the low end is above the high end"),
    ("choice(1, -1)", "the options of a round count must be whole numbers >= 0"),
    ("choice(1, 0.5)", "the options of a round count must be whole numbers >= 0"),
    ("range(1, 2.5)", "a range of round counts takes two whole numbers >= 0"),
])
def test_a_bad_round_count_knob_is_an_error(count, message):
    found = errors(LAYERS.replace("choice(0, 1, 3)", count))
    assert any(message in f and f.startswith("8:") for f in found), found


# ------------------------------------------------------------------ the examples


def test_the_archon_space_has_all_six_axes():
    program, _ = load_program((ROOT / "examples/search/archon.tts").read_text(), "archon.tts")
    by_id = {d.id: d for d in space_dimensions(program)}
    assert by_id["archon.drafts.generate.model"].labels == ("[small]", "[large]", "[small, large]")  # 1
    assert by_id["archon.drafts.generate.n"].values == (1, 2, 4)  # 2 samples per model
    assert by_id["archon.repeat.count"].values == (0, 1, 2)  # 3 fusion layers
    assert by_id["archon.drafts.fuse.model"].labels == ("[large]", "[small, large]")  # 4 fusers
    assert by_id["archon.drafts.choice"].labels[0].startswith("rank(")  # 5 ranker
    assert by_id["archon.drafts.fuse.critiques"].labels[0].startswith("critique(")  # 5 critic
    assert "verify(" in by_id["archon.drafts.choice#2"].labels[0]  # 6 verifier before fusion


@pytest.mark.parametrize("path", SEARCH_EXAMPLES, ids=lambda p: p.name)
def test_search_examples_round_trip_and_their_configurations_compile(path, tmp_path, monkeypatch):
    monkeypatch.setenv("TTSC_CACHE_DIR", str(tmp_path / "cache"))
    source = path.read_text()
    first = parse(source, str(path))
    assert program(parse(unparse(first), str(path))) == program(first)
    space, _ = load_program(source, str(path))
    dimensions = space_dimensions(space)
    rng = random.Random(0)
    for _ in range(4):
        assignment = {d.id: rng.choice(d.values) for d in dimensions}
        compiled = compile_source(source, str(path), assignment=assignment)
        text = concrete_source(source, str(path), assignment)
        assert not re.search(r"\b(choice|none)\b", text)
        assert structure(compile_source(text, str(path)).plan.region) == structure(compiled.plan.region)


def structure(region) -> tuple:
    """A region as what it computes, whatever its node ids: each node by its
    op, settings and the structure of its inputs; the stages in order."""
    memo: dict[str, str] = {}

    def key(nid: str) -> str:
        if nid not in memo:
            node = region.nodes[nid]
            inputs = sorted((role, key(src)) for role, src in node.inputs.items())
            memo[nid] = json.dumps([node.op, node.attrs, inputs], sort_keys=True, default=str)
        return memo[nid]

    stages = [(s.kind, s.model, sorted(key(n) for n in s.nodes), s.count,
               structure(s.body) if s.body else None, structure(s.cond) if s.cond else None)
              for s in region.stages]
    return key(region.output), stages
