"""Building IR from source, the passes, lowering and the Plan."""

import json
from pathlib import Path

import pytest

from ttsc.compiler.build import build
from ttsc.compiler.ir import Graph, Op, Program
from ttsc.compiler.ops import T
from ttsc.compiler.passes.cse import cse
from ttsc.compiler.passes.dce import dce
from ttsc.compiler.passes.fold import fold_constants
from ttsc.compiler.passes.inline import inline
from ttsc.compiler.passes.manager import PassError, PassResult, run_passes
from ttsc.compiler.passes.merge_samples import merge_samples
from ttsc.compiler.pipeline import compile_source, program_for
from ttsc.compiler.plan import Plan
from ttsc.dsl.parser import parse

EXAMPLES = sorted(Path(__file__).resolve().parent.parent.joinpath("examples").glob("*.tts"))

HEAD = '''model policy = "smollm2-135m"
model judge = policy
prompt solve = """{question}"""
prompt check = """Q: {question} A: {candidate} Correct?"""
'''


def program(body: str, strategy: str = "s") -> Program:
    source = HEAD + body
    built = build(parse(source, "t.tts"))
    assert not built.diagnostics.errors, [d.message for d in built.diagnostics.errors]
    return program_for(built, strategy)


def ops(graph: Graph) -> list[str]:
    return [n.op.value for n in graph.nodes()]


def test_self_consistency_builds_typed_graph():
    p = program("strategy s(question) {\n  c = generate(policy, solve, n=16, temperature=0.8)\n"
                "  return vote(extract(c, number))\n}\n")
    assert ops(p.graph) == ["input", "generate", "extract", "vote", "output"]
    gen = next(n for n in p.graph.nodes() if n.op is Op.GENERATE)
    assert gen.type is T.CANDIDATES
    assert gen.attrs["n"] == 16 and gen.attrs["temperature"] == 0.8 and gen.attrs["model"] == "policy"
    assert gen.inputs == {"hole:question": "n0"}
    assert p.graph[p.graph.output].type is T.TEXT


def test_alias_model_resolves_to_spec():
    p = program("strategy s(question) {\n  return vote(extract(generate(judge, solve), number))\n}\n")
    assert p.models == {"policy": "smollm2-135m", "judge": "smollm2-135m"}


def test_inline_splices_callee_and_reports():
    p = program("strategy d(question) {\n  return generate(policy, solve, n=4)\n}\n"
                "strategy s(question) {\n  return vote(extract(d(question) + d(question), number))\n}\n")
    assert Op.CALL in {n.op for n in p.graph.nodes()}
    result = inline(p)
    assert result.changed and len(result.notes) == 2
    assert Op.CALL not in {n.op for n in p.graph.nodes()}
    assert ops(p.graph).count("generate") == 2
    assert not inline(p).changed


def test_merge_samples_combines_identical_generates():
    p = program("strategy s(question) {\n  a = generate(policy, solve, n=4)\n"
                "  b = generate(policy, solve, n=12)\n  return vote(extract(a + b, number))\n}\n")
    result = merge_samples(p)
    assert result.changed
    gens = [n for n in p.graph.nodes() if n.op is Op.GENERATE]
    assert len(gens) == 1 and gens[0].attrs["n"] == 16
    slices = sorted((n.attrs["start"], n.attrs["stop"]) for n in p.graph.nodes() if n.op is Op.SLICE)
    assert slices == [(0, 4), (4, 16)]
    assert not merge_samples(p).changed


def test_merge_samples_keeps_different_settings_apart():
    p = program("strategy s(question) {\n  a = generate(policy, solve, n=4, temperature=0.2)\n"
                "  b = generate(policy, solve, n=4)\n  return vote(extract(a + b, number))\n}\n")
    assert not merge_samples(p).changed


def test_cse_merges_deterministic_nodes_but_not_samples():
    p = program("strategy s(question) {\n  c = generate(policy, solve, n=4)\n"
                "  d = generate(policy, solve, n=4, temperature=0.9)\n"
                "  x = best(c, by=verify(judge, c, check))\n"
                "  y = best(c, by=verify(judge, c, check))\n"
                "  return vote(extract(d, number)) + x + y\n}\n")
    assert ops(p.graph).count("verify") == 2
    result = cse(p)
    assert result.changed
    assert ops(p.graph).count("verify") == 1 and ops(p.graph).count("best") == 1
    assert ops(p.graph).count("generate") == 2


def test_dce_removes_unused_work():
    p = program("strategy s(question) {\n  spare = generate(policy, solve, n=8)\n"
                "  return vote(extract(generate(policy, solve), number))\n}\n")
    assert ops(p.graph).count("generate") == 2
    result = dce(p)
    assert result.changed and "removed 1 dead node" in result.notes[0]
    assert ops(p.graph).count("generate") == 1
    assert not dce(p).changed


def test_fold_drops_never_true_condition_and_zero_round_loops():
    p = program("strategy s(question) {\n  c = generate(policy, solve, n=2)\n"
                "  repeat 3 until 1 > 2 {\n    c = c + generate(policy, solve, n=2)\n  }\n"
                "  repeat 0 {\n    c = c + generate(policy, solve, n=2)\n  }\n"
                "  return vote(extract(c, number))\n}\n")
    result = fold_constants(p)
    assert result.changed
    loops = [n for n in p.graph.nodes() if n.op is Op.LOOP]
    assert len(loops) == 1 and loops[0].attrs["cond"] is not None  # compare folded inside cond
    fold_constants(p)
    assert loops[0].attrs["cond"] is None
    assert any("zero rounds" in note for note in result.notes)


def test_pass_manager_names_a_pass_that_breaks_invariants():
    p = program("strategy s(question) {\n  return vote(extract(generate(policy, solve), number))\n}\n")

    def breaker(program: Program) -> PassResult:
        program.graph.output = None
        return PassResult(True, ["broke it"])

    with pytest.raises(PassError, match="breaker"):
        run_passes(p, [breaker])


def test_beam_search_lowers_to_loop_stage_with_counts():
    compiled = compile_source(Path("examples/beam_search.tts").read_text(), "beam_search.tts")
    plan = compiled.plan
    loops = [s for s in plan.region.stages if s.kind == "loop"]
    assert len(loops) == 1
    loop = loops[0]
    assert loop.count == 8 and loop.carried == ["beams"] and loop.cond is not None
    body_llm = [s for s in loop.body.stages if s.kind == "llm"]
    assert [s.facts["ops"] for s in body_llm] == [["verify"], ["extend"]]
    assert body_llm[0].facts["requests_per_input"] == 16
    assert body_llm[1].facts["samples_per_input"] == 16


def test_independent_llm_nodes_of_one_model_share_a_stage():
    compiled = compile_source(HEAD + "strategy s(question) {\n  a = generate(policy, solve, n=4)\n"
                              "  b = generate(judge, solve, n=4, temperature=0.1)\n"
                              "  return vote(extract(a + b, number))\n}\n", "t.tts")
    llm = compiled.plan.llm_stages()
    # policy and judge name one spec, so one engine: one batch of 2 requests.
    assert len(llm) == 1
    assert llm[0].facts["requests_per_input"] == 2 and llm[0].facts["samples_per_input"] == 8


def test_llm_nodes_of_different_models_get_separate_stages():
    source = HEAD.replace('model judge = policy', 'model judge = "tiny-random"')
    compiled = compile_source(source + "strategy s(question) {\n  a = generate(policy, solve, n=4)\n"
                              "  b = generate(judge, solve, n=4)\n"
                              "  return vote(extract(a + b, number))\n}\n", "t.tts")
    assert sorted(s.model for s in compiled.plan.llm_stages()) == ["judge", "policy"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_compiles_and_plan_round_trips(path):
    compiled = compile_source(path.read_text(), str(path))
    text = compiled.plan.to_json()
    again = Plan.from_json(text)
    assert again == compiled.plan
    assert again.to_json() == text
    json.loads(text)  # plain JSON


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_models_load_here(path):
    """Every example runs on this machine: its models are built in (installed
    by scripts/install.sh, loaded with no network), not downloads."""
    from ttsc.common.specs import BUILTIN_MODELS

    compiled = compile_source(path.read_text(), str(path))
    assert set(compiled.plan.models.values()) <= set(BUILTIN_MODELS), compiled.plan.models


def test_examples_exist():
    names = {p.name for p in EXAMPLES}
    assert {"self_consistency.tts", "best_of_n.tts", "weighted_vote.tts", "archon.tts",
            "beam_search.tts", "adaptive_consistency.tts", "search_space.tts"} <= names
