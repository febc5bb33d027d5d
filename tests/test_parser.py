"""The parser builds the expected AST for every construct of the .tts language."""

from __future__ import annotations

import pytest

from ttsc.dsl import ast
from ttsc.common.errors import Span, TTSError, UserError
from ttsc.dsl.parser import parse, parse_file

# The examples of DESIGN.md ("The language, by example"), exactly as written there.
DESIGN_BASICS = '''\
model policy = "smollm2-135m"              # embedded default (see below)
model judge  = policy

prompt solve = """
{question}
Think step by step, then finish with "Answer: <number>".
"""

prompt check = """
Problem: {question}
Proposed solution: {candidate}
Is the proposed solution correct? Answer Yes or No.
"""

strategy self_consistency(question) {
    samples = generate(policy, solve, n=16, temperature=0.8, max_tokens=128)
    return vote(extract(samples, number))
}

strategy best_of_n(question) {
    cands  = generate(policy, solve, n=16, temperature=0.8)
    scores = verify(judge, cands, check)        # P(Yes) read from logprobs
    return best(cands, by=scores)
}
'''

DESIGN_BEAM = '''\
strategy beam(question) {
    beams = generate(policy, solve, n=16, stop="\\n\\n", max_tokens=64)
    repeat 8 until all_done(beams) {
        beams = top(beams, by=verify(judge, beams, check), k=4)
        beams = extend(policy, beams, n=4, stop="\\n\\n", max_tokens=64)
    }
    return best(beams, by=verify(judge, beams, check))
}
'''

DESIGN_SPACE = '''\
strategy space(question) {
    s = generate(choice(policy, judge), solve, n=auto, temperature=range(0.3, 1.1))
    return choice(vote(extract(s, number)),
                  best(s, by=verify(judge, s, check)))
}
budget { tokens <= 4000 per input; memory <= 2 GiB; latency <= 10 s }
'''


def strategy_body(body: str) -> tuple[ast.Stmt, ...]:
    (strategy,) = parse(f"strategy s(q) {{\n{body}\n}}\n").strategies()
    return strategy.body


def expr(text: str) -> ast.Expr:
    (stmt,) = strategy_body(f"return {text}")
    assert isinstance(stmt, ast.Return)
    return stmt.value


def shape(node):
    """The node without spans, for comparing structure."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, (ast.Number, ast.String, ast.Bool)):
        return node.value
    if isinstance(node, ast.Auto):
        return "auto"
    if isinstance(node, ast.ListExpr):
        return ["list", *map(shape, node.items)]
    if isinstance(node, ast.Call):
        return ["call", node.func, *map(shape, node.args), *((k.name, shape(k.value)) for k in node.kwargs)]
    if isinstance(node, (ast.BinOp, ast.Compare, ast.BoolOp)):
        return [node.op, shape(node.left), shape(node.right)]
    if isinstance(node, ast.Not):
        return ["not", shape(node.operand)]
    raise TypeError(node)


# ------------------------------------------------------------ DESIGN examples

def test_design_basics_parse():
    module = parse(DESIGN_BASICS, "basics.tts")
    policy, judge = module.models()
    assert (policy.name, policy.spec, policy.alias) == ("policy", "smollm2-135m", None)
    assert (judge.name, judge.spec, judge.alias) == ("judge", None, "policy")
    assert policy.value_span == Span("basics.tts", 1, 16, 1, 30)
    solve, check = module.prompts()
    assert solve.user == '{question}\nThink step by step, then finish with "Answer: <number>".\n'
    assert [h.name for h in check.holes] == ["question", "candidate"]
    assert check.holes[1].span == Span("basics.tts", 11, 20, 11, 31)
    sc, bon = module.strategies()
    assert sc.name == "self_consistency" and [p.name for p in sc.params] == ["question"]
    samples, ret = sc.body
    assert shape(samples.value) == ["call", "generate", "policy", "solve",
                                    ("n", 16), ("temperature", 0.8), ("max_tokens", 128)]
    assert shape(ret.value) == ["call", "vote", ["call", "extract", "samples", "number"]]
    assert shape(bon.body[-1].value) == ["call", "best", "cands", ("by", "scores")]
    assert bon.end_span == Span("basics.tts", 24, 1, 24, 2)


def test_design_beam_parses():
    (beam,) = parse(DESIGN_BEAM).strategies()
    generate, loop, ret = beam.body
    assert shape(generate.value)[-2] == ("stop", "\n\n")
    assert isinstance(loop, ast.Repeat)
    assert shape(loop.count) == 8
    assert shape(loop.until) == ["call", "all_done", "beams"]
    assert [s.target for s in loop.body] == ["beams", "beams"]
    assert shape(loop.body[0].value) == ["call", "top", "beams",
                                         ("by", ["call", "verify", "judge", "beams", "check"]), ("k", 4)]
    assert loop.span == Span("<string>", 3, 5, 3, 11)
    assert isinstance(ret, ast.Return)


def test_design_space_parses():
    module = parse(DESIGN_SPACE)
    (space,) = module.strategies()
    assign, ret = space.body
    assert shape(assign.value) == ["call", "generate", ["call", "choice", "policy", "judge"], "solve",
                                   ("n", "auto"), ("temperature", ["call", "range", 0.3, 1.1])]
    assert shape(ret.value)[:2] == ["call", "choice"]
    assert ret.value.span == Span("<string>", 3, 12, 4, 55)  # the call spans two lines
    (budget,) = module.budgets()
    assert [(i.resource, i.value, i.per_input) for i in budget.items] == [
        ("tokens", 4000.0, True), ("memory", 2.0 * 2**30, False), ("latency", 10.0, False)]


def test_all_design_examples_together():
    module = parse(DESIGN_BASICS + DESIGN_BEAM + DESIGN_SPACE)
    assert [type(d).__name__ for d in module.definitions] == [
        "ModelDef", "ModelDef", "PromptDef", "PromptDef",
        "StrategyDef", "StrategyDef", "StrategyDef", "StrategyDef", "BudgetDef"]
    assert module.file == "<string>"


# ---------------------------------------------------------------- prompts

def test_triple_quoted_prompt_is_dedented_and_holes_point_into_the_file():
    source = 'model m = "x"\nprompt p = """\n    Question: {question}\n      indented {a}{b}\n    """\n'
    (prompt,) = parse(source, "p.tts").prompts()
    assert prompt.user == "Question: {question}\n  indented {a}{b}\n"
    assert [h.name for h in prompt.holes] == ["question", "a", "b"]
    assert prompt.holes[0].span == Span("p.tts", 3, 15, 3, 25)
    assert prompt.holes[1].span == Span("p.tts", 4, 16, 4, 19)
    assert prompt.holes[2].span == Span("p.tts", 4, 19, 4, 22)
    assert prompt.span == Span("p.tts", 2, 8, 2, 9)
    assert (prompt.raw, prompt.system) == (False, None)


def test_hole_span_after_text_on_the_opening_line():
    (prompt,) = parse('prompt p = """Q: {q}\n   A: {a}"""').prompts()
    assert prompt.user == "Q: {q}\n   A: {a}"  # first line is not indented, so nothing to dedent
    assert prompt.holes[0].span == Span("<string>", 1, 18, 1, 21)
    assert prompt.holes[1].span == Span("<string>", 2, 7, 2, 10)


def test_prompt_with_system_part_and_user_on_next_line():
    source = 'prompt p = system """\nYou are careful. {style}\n"""\nuser """\n{question}\n"""\n'
    (prompt,) = parse(source).prompts()
    assert prompt.system == "You are careful. {style}\n"
    assert prompt.user == "{question}\n"
    assert [h.name for h in prompt.holes] == ["style", "question"]  # system part first
    assert prompt.holes[1].span.line == 5


def test_raw_prompt_and_plain_string_prompt():
    raw, plain, user = parse('raw prompt r = "Q: {q}\\nA:"\nprompt p = "x"\nprompt u = user "y {z}"').prompts()
    assert raw.raw and raw.user == "Q: {q}\nA:" and raw.holes[0].span == Span("<string>", 1, 20, 1, 23)
    assert not plain.raw and plain.user == "x" and plain.holes == ()
    assert user.user == "y {z}" and [h.name for h in user.holes] == ["z"]


def test_doubled_braces_stay_doubled_in_the_template():
    (prompt,) = parse('prompt p = """JSON: {{"answer": {n}}}"""').prompts()
    assert prompt.user == 'JSON: {{"answer": {n}}}'
    assert [h.name for h in prompt.holes] == ["n"]
    assert prompt.user.format_map({"n": 3}) == 'JSON: {"answer": 3}'


def test_escaped_brace_in_a_prompt_is_literal():
    (prompt,) = parse('prompt p = "a \\u007b b"').prompts()
    assert prompt.user == "a {{ b" and prompt.holes == ()


def test_triple_quoted_strings_keep_backslashes():
    (prompt,) = parse('prompt p = """Put the answer in \\boxed{{}}."""').prompts()
    assert prompt.user == "Put the answer in \\boxed{{}}."


# ----------------------------------------------------------------- models

def test_model_spec_string_escapes_are_decoded():
    (model,) = parse('model m = "gguf:/tmp/a\\tb\\"c\\\\d\\u00e9"').models()
    assert model.spec == 'gguf:/tmp/a\tb"c\\dé'
    assert model.span == Span("<string>", 1, 7, 1, 8)


# ------------------------------------------------------------- statements

def test_statements_separated_by_semicolons_and_comments():
    body = strategy_body("a = 1; b = 2  # two\n# only a comment\n\n  ; c = a + b\nreturn c")
    assert [type(s).__name__ for s in body] == ["Assign", "Assign", "Assign", "Return"]
    assert body[0].span == Span("<string>", 2, 1, 2, 2)
    assert body[3].span == Span("<string>", 6, 1, 6, 7)


def test_repeat_without_until_and_brace_on_next_line():
    (loop,) = strategy_body("repeat 3\n{\n x = f(x)\n}")
    assert isinstance(loop, ast.Repeat) and loop.until is None and shape(loop.count) == 3
    assert [s.target for s in loop.body] == ["x"]


def test_nested_repeat():
    (outer,) = strategy_body("repeat n until done(x) { repeat 2 { x = g(x) }; y = 1 }")
    inner, assign = outer.body
    assert isinstance(inner, ast.Repeat) and shape(inner.body[0].value) == ["call", "g", "x"]
    assert assign.target == "y"


def test_one_line_strategy_empty_strategy_and_no_params():
    module = parse("strategy a(q) { return q }\nstrategy b() {}\nstrategy c(x, y,) {\n}")
    a, b, c = module.strategies()
    assert shape(a.body[0].value) == "q"
    assert b.params == () and b.body == ()
    assert [p.name for p in c.params] == ["x", "y"]
    assert c.params[1].span == Span("<string>", 3, 15, 3, 16)


def test_contextual_words_are_ordinary_names():
    source = "strategy s(input, user, system) {\n per = input\n return user + system + per\n}"
    (strategy,) = parse(source).strategies()
    assert [p.name for p in strategy.params] == ["input", "user", "system"]
    assert strategy.body[0].target == "per"


def test_crlf_line_endings():
    module = parse("model m = \"x\"\r\nstrategy s(q) {\r\n  return q\r\n}\r\n")
    assert module.strategies()[0].body[0].span.line == 3
    assert "\r" not in module.source


# ------------------------------------------------------------ expressions

@pytest.mark.parametrize("text, value", [
    ("16", 16), ("0.8", 0.8), ("1e-3", 1e-3), ("2E3", 2000.0), (".5", 0.5), ("-1", -1), ("-0.25", -0.25),
])
def test_numbers(text, value):
    node = expr(text)
    assert isinstance(node, ast.Number) and node.value == value and type(node.value) is type(value)


def test_literals():
    assert shape(expr('"a\\nb"')) == "a\nb"
    assert shape(expr('"""\n  x\n  y"""')) == "x\ny"
    assert isinstance(expr("true"), ast.Bool) and expr("true").value is True
    assert expr("false").value is False
    assert isinstance(expr("auto"), ast.Auto)
    assert expr("auto").span == Span("<string>", 2, 8, 2, 12)


def test_lists():
    assert shape(expr("[]")) == ["list"]
    assert shape(expr("[a, 1, \"s\",]")) == ["list", "a", 1, "s"]
    assert shape(expr("[\n  a,\n  b\n]")) == ["list", "a", "b"]
    assert expr("[a, b]").span == Span("<string>", 2, 8, 2, 14)


def test_calls_with_positional_and_keyword_arguments():
    node = expr('regex("[0-9]+")')
    assert shape(node) == ["call", "regex", "[0-9]+"]
    node = expr("f(a, b, key=value, n=2)")
    assert isinstance(node, ast.Call)
    assert node.span == Span("<string>", 2, 8, 2, 31)
    assert node.func_span == Span("<string>", 2, 8, 2, 9)
    assert node.kwargs[0].span == Span("<string>", 2, 16, 2, 19)
    assert shape(expr("f()")) == ["call", "f"]


@pytest.mark.parametrize("text, tree", [
    ("a + b + c", ["+", ["+", "a", "b"], "c"]),
    ("a + b < c", ["<", ["+", "a", "b"], "c"]),
    ("a < b and c", ["and", ["<", "a", "b"], "c"]),
    ("a or b and c", ["or", "a", ["and", "b", "c"]]),
    ("a and b or c", ["or", ["and", "a", "b"], "c"]),
    ("not a == b", ["not", ["==", "a", "b"]]),
    ("not a and b", ["and", ["not", "a"], "b"]),
    ("not not a", ["not", ["not", "a"]]),
    ("(a or b) and c", ["and", ["or", "a", "b"], "c"]),
    ("a + (b + c)", ["+", "a", ["+", "b", "c"]]),
    ("a or b or c", ["or", ["or", "a", "b"], "c"]),
])
def test_precedence(text, tree):
    assert shape(expr(text)) == tree


@pytest.mark.parametrize("op", ["<", "<=", ">", ">=", "==", "!="])
def test_comparisons(op):
    node = expr(f"x {op} 3")
    assert isinstance(node, ast.Compare) and node.op == op


def test_operator_node_types_and_spans():
    node = expr("a + b")
    assert isinstance(node, ast.BinOp) and node.span == Span("<string>", 2, 8, 2, 13)
    assert isinstance(expr("a and b"), ast.BoolOp)
    node = expr("not a")
    assert isinstance(node, ast.Not) and node.span == Span("<string>", 2, 8, 2, 13)


# ----------------------------------------------------------------- budget

@pytest.mark.parametrize("line, resource, value", [
    ("tokens <= 100", "tokens", 100.0),
    ("memory <= 3 B", "memory", 3.0),
    ("memory <= 2 KB", "memory", 2000.0),
    ("memory <= 2 MB", "memory", 2e6),
    ("memory <= 1.5 GB", "memory", 1.5e9),
    ("memory <= 2 KiB", "memory", 2048.0),
    ("memory <= 1 MiB", "memory", 2.0**20),
    ("memory <= 2 GiB", "memory", 2.0**31),
    ("latency <= 250 ms", "latency", 0.25),
    ("latency <= 10 s", "latency", 10.0),
    ("latency <= 2 min", "latency", 120.0),
])
def test_budget_units(line, resource, value):
    (budget,) = parse(f"budget {{ {line} }}").budgets()
    (item,) = budget.items
    assert (item.resource, item.per_input) == (resource, False)
    assert item.value == pytest.approx(value)


def test_budget_lines_on_separate_lines_with_per_input():
    (budget,) = parse("budget\n{\n  tokens <= 4000 per input\n  latency <= 1 min per input\n}\n").budgets()
    assert [(i.resource, i.value, i.per_input) for i in budget.items] == [
        ("tokens", 4000.0, True), ("latency", 60.0, True)]
    assert budget.span == Span("<string>", 1, 1, 1, 7)
    assert budget.items[0].span == Span("<string>", 3, 3, 3, 27)


# --------------------------------------------------------------- module

def test_empty_and_comment_only_sources():
    assert parse("").definitions == ()
    assert parse("# nothing here\n\n   # still nothing").definitions == ()


def test_parse_file(tmp_path):
    path = tmp_path / "s.tts"
    path.write_text(DESIGN_BASICS, encoding="utf-8")
    module = parse_file(path)
    assert module.file == str(path)
    assert module.source == DESIGN_BASICS
    assert module.prompts()[0].holes[0].span.file == str(path)


def test_parse_file_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        parse_file(tmp_path / "missing.tts")
    with pytest.raises(UserError, match="directory"):
        parse_file(tmp_path)
    bad = tmp_path / "bad.tts"
    bad.write_bytes(b"model m = \"\xff\"\n")
    with pytest.raises(UserError, match="not UTF-8"):
        parse_file(bad)
    broken = tmp_path / "broken.tts"
    broken.write_text("strategy s(q) {\n", encoding="utf-8")
    with pytest.raises(TTSError) as info:
        parse_file(broken)
    assert info.value.render().startswith(f"{broken}:1:15: error:")


def test_every_mistake_in_a_file_is_reported():
    source = 'model m = "a\\qb"\nstrategy s(model) {\n  return f(n=1, 2)\n}\nbudget { memory <= 2 GHz }\n'
    with pytest.raises(TTSError) as info:
        parse(source)
    assert [(d.span.line, d.span.column) for d in info.value.diagnostics] == [(1, 13), (2, 12), (3, 17), (5, 22)]


NAME_POSITIONS = [
    'model {w} = "x"',
    "model m = {w}",
    'prompt {w} = "x"',
    "strategy {w}(q) {{ return q }}",
    "strategy s({w}) {{ return 1 }}",
    "strategy s(q) {{\n {w} = 1\n return q\n}}",
    "strategy s(q) {{\n return f(q, {w}=1)\n}}",
]


@pytest.mark.parametrize("template", NAME_POSITIONS)
@pytest.mark.parametrize("word", ["system", "user", "per", "input"])
def test_contextual_words_work_in_every_name_position(template, word):
    assert parse(template.format(w=word)).definitions


@pytest.mark.parametrize("template", NAME_POSITIONS + ["strategy s(q) {{\n return g({w})\n}}"])
@pytest.mark.parametrize("word", ["model", "prompt", "strategy", "raw", "return", "repeat", "until", "budget"])
def test_reserved_words_are_rejected_as_names(template, word):
    with pytest.raises(TTSError) as info:
        parse(template.format(w=word))
    assert f"`{word}` is a reserved word" in info.value.diagnostics[0].message
