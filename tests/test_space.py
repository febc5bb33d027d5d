"""The seam search uses: a program's knob sites as dimensions, compiling with
an assignment, and writing the program an assignment makes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ttsc.common.errors import UserError
from ttsc.common.knobs import Auto, Choice, Range
from ttsc.compiler.explain import explain
from ttsc.compiler.passes.allocate import _Builder
from ttsc.compiler.passes.inline import inline
from ttsc.compiler.passes.manager import run_passes
from ttsc.compiler.pipeline import compile_program, compile_source, load_program
from ttsc.compiler.space import concrete_source, space_dimensions, space_size

SPACE = Path(__file__).resolve().parent.parent / "examples" / "search_space.tts"

NESTED = '''model policy = "smollm2-135m"
prompt solve = "{question} Answer:"

strategy inner(question) {
    s = generate(policy, solve, n=choice(4, 8), max_tokens=range(16, 24), stop=choice("\\n", ["."]))
    return vote(extract(s, number))
}

strategy outer(question) {
    a = inner(question)
    b = inner(question)
    samples = generate(policy, solve, n=2, temperature=range(0.2, 0.9))
    repeat auto until agreement(extract(samples, number)) >= 0.75 {
        samples = samples + generate(policy, solve, n=choice(1, 2), max_tokens=16)
    }
    return choice(a, b, vote(extract(samples, number)))
}
budget { tokens <= 3000 per input }
'''


def dims_of(source: str, file: str = "t.tts"):
    program, _ = load_program(source, file)
    return space_dimensions(program)


def plan_json(compiled) -> dict:
    plan = compiled.plan.to_dict()
    plan.pop("passes")
    text = re.sub(r'"span": "[^"]*"', '"span": null', json.dumps(plan, sort_keys=True))
    return json.loads(re.sub(r"line \d+", "line ?", text))


def same_program(plan: dict) -> dict:
    """What runs and what is predicted, with node ids renumbered in order (a
    space's graph has the nodes of branches it dropped) and the record of
    decided knobs left out."""
    plan = dict(plan, region=canonical(plan["region"]), allocation={},
                kernels=[{k: v for k, v in kernel.items() if k != "node"} for kernel in plan["kernels"]])
    plan["facts"] = {k: v for k, v in plan["facts"].items() if k not in ("knob_values", "prefix_stages")}
    return plan


def canonical(region: dict) -> dict:
    ids = {old: f"n{i}" for i, old in enumerate(region["nodes"])}
    nodes = {}
    for old, node in region["nodes"].items():
        facts = {k: v for k, v in node["facts"].items() if k != "knob_sites"}
        inputs = {role: ids[src] for role, src in node["inputs"].items()}
        nodes[ids[old]] = dict(node, id=ids[old], inputs=inputs, facts=facts)
    stages = []
    for stage in region["stages"]:
        stage = dict(stage, nodes=[ids[n] for n in stage["nodes"]])
        for key in ("cond", "body"):
            if stage.get(key) is not None:
                stage[key] = canonical(stage[key])
        stages.append(stage)
    return {"nodes": nodes, "stages": stages, "output": ids[region["output"]]}


def test_dimensions_of_the_example_space():
    dims = dims_of(SPACE.read_text(), str(SPACE))
    assert [(d.id, d.setting) for d in dims] == [
        ("space.s.generate.model", "model"), ("space.s.generate.n", "n"),
        ("space.s.generate.temperature", "temperature"), ("space.return.choice", "branch")]
    model, n, temperature, branch = dims
    assert model.knob == Choice(("policy", "judge")) and model.values == ("policy", "judge")
    assert n.knob == Auto() and n.values == (1, 2, 4, 8, 16, 32, 64)  # the allocator's grid
    assert temperature.knob == Range(0.3, 1.1) and temperature.size is None
    assert branch.values == (0, 1)
    assert (model.span.line, model.span.column) == (19, 18)  # where `choice(policy, judge)` is written
    assert space_size(dims) is None and space_size([model, n, branch]) == 28


def test_a_strategy_inlined_twice_has_one_site_per_knob():
    dims = dims_of(NESTED)
    assert [d.id for d in dims] == [
        "inner.s.generate.n", "inner.s.generate.max_tokens", "inner.s.generate.stop",
        "outer.samples.generate.temperature", "outer.repeat.count", "outer.samples.generate.n",
        "outer.return.choice"]
    assert dims[1].values == tuple(range(16, 25))  # an integer range: every whole number in it
    assert dims[4].setting == "count" and dims[4].values == (1, 2, 3, 4, 6, 8)


def test_compiling_with_an_assignment_fixes_those_knobs():
    program, _ = load_program(NESTED)
    assignment = {"inner.s.generate.n": 8, "inner.s.generate.max_tokens": 20.0,
                  "outer.return.choice": 1, "outer.repeat.count": 2}
    plan, report = compile_program(program, assignment)
    nodes = plan.region.all_nodes().values()
    generates = [n for n in nodes if n.op == "generate"]
    assert {(n.attrs["n"], n.attrs["max_tokens"]) for n in generates} == {(8, 20)}  # branch 1 kept
    assert isinstance(generates[0].attrs["max_tokens"], int)
    assert plan.facts["knob_values"]["outer.return.choice"] == 1
    notes = next(r for r in report if r.name == "assign_knobs").notes
    assert any("`inner.s.generate.n`" in n for n in notes)


def test_copies_of_one_site_share_one_allocator_decision():
    program, _ = load_program(NESTED)
    run_passes(program, [inline])
    problem = _Builder(program).build()
    inner = [d for d in problem.decisions if set(d.options[0]) == {"n", "max_tokens"}]
    assert len(inner) == 1  # one knob in the source, one value: not one per inlined copy


@pytest.mark.parametrize("assignment, message", [
    ({"inner.s.generate.m": 4}, "no knob `inner.s.generate.m`"),
    ({"inner.s.generate.n": 5}, "cannot be 5"),
    ({"outer.samples.generate.temperature": 2.0}, "cannot be 2.0"),
    ({"outer.return.choice": 3}, "cannot be 3"),
])
def test_a_bad_assignment_is_a_user_error(assignment, message):
    program, _ = load_program(NESTED)
    with pytest.raises(UserError, match=re.escape(message)):
        compile_program(program, assignment)


def test_the_concrete_program_of_the_decided_values_compiles_to_the_same_plan(tmp_path, monkeypatch):
    monkeypatch.setenv("TTSC_CACHE_DIR", str(tmp_path / "cache"))
    for source, file in ((SPACE.read_text(), str(SPACE)), (NESTED, "t.tts")):
        compiled = compile_source(source, file)
        decided = compiled.plan.facts["knob_values"]
        text = concrete_source(source, file, decided)
        assert not dims_of(text, file)  # no knob left
        assert "choice" not in text and "auto" not in text and "range" not in text
        concrete = compile_source(text, file)
        assert same_program(plan_json(concrete)) == same_program(plan_json(compiled))


def test_a_partial_assignment_leaves_the_other_knobs_as_written():
    text = concrete_source(NESTED, "t.tts", {"outer.return.choice": 2, "inner.s.generate.n": 4})
    assert "return vote(extract(samples, number))" in text  # the chosen branch replaces choice(...)
    assert "n=4, max_tokens=range(16, 24)" in text
    assert "repeat auto until" in text


def test_explain_prints_the_dimensions_and_the_size():
    compiled = compile_source(NESTED, "t.tts")
    text = explain(compiled)
    assert "search space: 7 knobs, 2 x 9 x 2 x continuous x 6 x 2 x 3 = continuous; 1,296 " \
           "combinations of its discrete knobs" in text
    assert re.search(r"inner\.s\.generate\.max_tokens +max_tokens +range\(16, 24\) +9 values +t\.tts:5:60",
                     text)
    fixed = compile_source('model m = "tiny-random"\nprompt p = "{q}"\nstrategy s(q) {\n'
                           '    return vote(extract(generate(m, p, n=2), number))\n}\n', "t.tts")
    assert "search space" not in explain(fixed)
