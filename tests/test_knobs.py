"""Knobs and sampling settings in the compiler: one typed vocabulary
(common/knobs.py), one table of settings (common/sampling.py)."""

import pytest

from ttsc.common.errors import TTSError
from ttsc.common.knobs import Auto, Choice, Range, knob_from_json
from ttsc.common.sampling import SETTINGS
from ttsc.compiler.build import build
from ttsc.compiler.ir import Op
from ttsc.compiler.ops import SIGNATURES
from ttsc.compiler.pipeline import check_source, compile_source, program_for
from ttsc.dsl.parser import parse

HEAD = '''model policy = "smollm2-135m"
model judge = "tiny-random"
prompt solve = """{question}"""
'''


def generate_attrs(call: str) -> dict:
    source = HEAD + f"strategy s(question) {{\n    return vote(extract({call}, number))\n}}\n"
    built = build(parse(source, "t.tts"))
    assert not built.diagnostics.errors, [d.message for d in built.diagnostics.errors]
    graph = program_for(built, "s").graph
    return next(n for n in graph.nodes() if n.op is Op.GENERATE).attrs


def errors(call: str) -> list[str]:
    source = HEAD + f"strategy s(question) {{\n    return vote(extract({call}, number))\n}}\n"
    return [d.message for d in check_source(source, "t.tts") if d.severity == "error"]


def test_the_builder_makes_typed_knobs():
    a = generate_attrs("generate(choice(policy, judge), solve, n=auto, temperature=range(0.3, 1.1), "
                       "max_tokens=range(16, 64), top_k=choice(0, 20))")
    assert a["model"] == Choice(("policy", "judge"))
    assert a["n"] == Auto()
    assert a["temperature"] == Range(0.3, 1.1, integer=False)
    assert a["max_tokens"] == Range(16, 64, integer=True)  # an integer setting: its range too
    assert a["top_k"] == Choice((0, 20))
    assert generate_attrs("generate(auto, solve)")["model"] == Auto(("policy", "judge"))


def test_unset_settings_take_the_table_defaults_and_op_rules():
    a = generate_attrs("generate(policy, solve)")
    for name in ("n", "temperature", "max_tokens", "top_p", "top_k"):
        assert a[name] == SETTINGS[name].default
    # Judges read deterministically: the op table's rules, in one place.
    assert SIGNATURES["critique"].arg("temperature").default == 0.0
    assert SIGNATURES["critique"].arg("max_tokens").default == 128
    assert SIGNATURES["rank"].arg("max_tokens").default == 64


def test_rank_settings_reach_the_plan_and_can_be_set():
    body = ('strategy s(question) {\n    c = generate(policy, solve, n=3)\n'
            '    return best(rank(policy, c, k=2EXTRA), by=verify(policy, rank(policy, c, k=2EXTRA)))\n}\n')
    for extra, want in (("", 64), (", max_tokens=32", 32)):
        plan = compile_source(HEAD + body.replace("EXTRA", extra), "t.tts").plan
        ranks = [n for n in plan.region.all_nodes().values() if n.op == "rank"]
        assert ranks and all(r.attrs["max_tokens"] == want and r.attrs["temperature"] == 0.0 for r in ranks)


@pytest.mark.parametrize("call, message", [
    ("generate(policy, solve, n=0)", "argument `n` of `generate` must be at least 1, got 0"),
    ("generate(policy, solve, n=2.5)", "argument `n` of `generate` must be a whole number, got 2.5"),
    ("generate(policy, solve, top_p=0)", "argument `top_p` of `generate` must be in (0, 1], got 0"),
    ("generate(policy, solve, temperature=9)",
     "argument `temperature` of `generate` is implausibly high (at most 5), got 9"),
    ("generate(policy, solve, seed=-1)", "argument `seed` of `generate` must not be negative, got -1"),
    ("generate(policy, solve, max_tokens=range(0, 8))",
     "argument `max_tokens` of `generate` must be at least 1, got 0"),
    ("generate(policy, solve, n=range(1.5, 4))",
     "argument `n` of `generate` must be a whole number, got 1.5"),
    ("generate(policy, solve, top_k=auto)", "`top_k` cannot be auto"),
    ("generate(policy, solve, n=choice(2, auto))", "choice options must be plain constants"),
])
def test_constants_are_checked_against_the_settings_table(call, message):
    assert message in errors(call)


def test_cannot_be_auto_names_the_settings_the_table_allows():
    source = HEAD + "strategy s(question) {\n    return vote(extract(generate(policy, solve, seed=auto), number))\n}\n"
    [diag] = [d for d in check_source(source, "t.tts") if d.severity == "error"]
    allowed = [name for name, s in SETTINGS.items() if s.auto_ok]
    assert diag.hint == "auto works for " + ", ".join(allowed[:-1]) + " and " + allowed[-1]


def test_defaults_decide_every_knob_whatever_the_setting():
    # seed and stop knobs used to pass through undecided into the plan.
    source = HEAD + '''strategy s(question) {
    c = generate(policy, solve, n=2, seed=choice(7, 8), stop=choice("\\n", ["."]),
                 max_tokens=range(16, 63))
    return vote(extract(c, number))
}
'''
    plan = compile_source(source, "t.tts").plan
    [gen] = [n for n in plan.region.nodes.values() if n.op == "generate"]
    assert gen.attrs["seed"] == 7 and gen.attrs["stop"] == ["\n"]
    assert gen.attrs["max_tokens"] == 40 and isinstance(gen.attrs["max_tokens"], int)


def test_auto_without_a_budget_is_an_error_but_model_auto_takes_the_first_model():
    with pytest.raises(TTSError, match="needs a budget"):
        compile_source(HEAD + "strategy s(question) {\n    return vote(extract("
                       "generate(policy, solve, max_tokens=auto), number))\n}\n", "t.tts")
    plan = compile_source(HEAD + "strategy s(question) {\n    return vote(extract("
                          "generate(auto, solve), number))\n}\n", "t.tts").plan
    assert [n.attrs["model"] for n in plan.region.nodes.values() if n.op == "generate"] == ["policy"]


def test_knobs_round_trip_through_json():
    for knob in (Choice((1, 2)), Range(0.1, 0.9), Range(1, 8, integer=True), Auto(), Auto(("a", "b"))):
        assert knob_from_json(knob.to_json()) == knob
    assert Range(1, 8, integer=True).size() == 8 and Range(0.1, 0.9).size() is None
