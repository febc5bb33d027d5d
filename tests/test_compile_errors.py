"""Golden messages for semantic errors: names, types, arities, definitions.

Each case is a small source and the exact text `ttsc check` prints for it.
"""

import textwrap

import pytest

from ttsc.compiler.pipeline import check_source, compile_source
from ttsc.common.errors import TTSError

HEAD = '''model policy = "smollm2-135m"
prompt solve = """{question}"""
'''


def render(source: str) -> str:
    source = textwrap.dedent(source)
    diags = [d for d in check_source(source, "t.tts") if d.severity == "error"]
    assert diags, "expected an error"
    return diags[0].render(source)


CASES = {
    "unknown op": (HEAD + "strategy s(question) {\n    x = generat(policy, solve)\n    return x\n}\n", """\
t.tts:4:9: error: unknown operation `generat`
 4 |     x = generat(policy, solve)
   |         ^~~~~~~
hint: did you mean `generate`?"""),
    "wrong arity": (HEAD + "strategy s(question) {\n    c = generate(policy, solve)\n"
                    "    return vote(extract(c, number), c)\n}\n", """\
t.tts:5:37: error: `vote` takes at most 1 positional argument (answers), got 2
 5 |     return vote(extract(c, number), c)
   |                                     ^
hint: signature: vote(answers, weights=...)"""),
    "wrong type": (HEAD + "strategy s(question) {\n    c = generate(policy, solve)\n"
                   "    return best(c, by=c)\n}\n", """\
t.tts:5:23: error: argument `by` of `best` must be scores, got candidates
 5 |     return best(c, by=c)
   |                       ^"""),
    "undefined name": (HEAD + "strategy s(question) {\n    c = generate(policy, solve)\n"
                       "    return vote(extract(cand, number))\n}\n", """\
t.tts:5:25: error: undefined name `cand`
 5 |     return vote(extract(cand, number))
   |                         ^~~~
hint: names defined here: c, question"""),
    "duplicate definition": (HEAD + 'prompt solve = "again {question}"\n'
                             "strategy s(question) {\n    return vote(extract(generate(policy, solve), number))\n}\n", """\
t.tts:3:8: error: `solve` is already defined at line 2
 3 | prompt solve = "again {question}"
   |        ^~~~~
hint: give each model, prompt and strategy its own name"""),
    "bad model spec": ('model policy = "gpt5-turbo"\nprompt solve = "{question}"\n'
                       "strategy s(question) {\n    return vote(extract(generate(policy, solve), number))\n}\n",
                       """\
t.tts:1:16: error: bad model spec 'gpt5-turbo': unknown model; built-in models are smollm2-135m, gemma3-270m, tiny-random
 1 | model policy = "gpt5-turbo"
   |                ^~~~~~~~~~~~
hint: valid forms: "smollm2-135m", "gemma3-270m", "hf:ORG/NAME", a local directory ("./path"), "gguf:PATH", "vllm:ORG/NAME", "openai:URL#MODEL", "tiny-random\""""),
    "recursion": (HEAD + "strategy a(question) {\n    return b(question)\n}\n"
                  "strategy b(question) {\n    return a(question)\n}\n", """\
t.tts:4:12: error: recursive strategy call: a -> b -> a
 4 |     return b(question)
   |            ^
hint: strategies are inlined, so they cannot call themselves; use `repeat` to loop"""),
    "missing return": (HEAD + "strategy s(question) {\n    c = generate(policy, solve)\n}\n", """\
t.tts:5:1: error: strategy `s` has no `return`
 5 | }
   | ^
hint: end the strategy with `return EXPR`"""),
    "hole names no variable": ('model policy = "smollm2-135m"\nprompt solve = """Solve {problem} now"""\n'
                               "strategy s(question) {\n    return vote(extract(generate(policy, solve), number))\n}\n",
                               """\
t.tts:2:25: error: `{problem}` in prompt `solve` names no variable of strategy `s` (used at line 4)
 2 | prompt solve = \"\"\"Solve {problem} now\"\"\"
   |                         ^~~~~~~~~
hint: variables there: question"""),
    "unknown keyword": (HEAD + "strategy s(question) {\n    c = generate(policy, solve, temprature=0.5)\n"
                        "    return vote(extract(c, number))\n}\n", """\
t.tts:4:33: error: `generate` has no argument `temprature`
 4 |     c = generate(policy, solve, temprature=0.5)
   |                                 ^~~~~~~~~~
hint: did you mean `temperature`?"""),
    "until not bool": (HEAD + "strategy s(question) {\n    c = generate(policy, solve)\n"
                       "    repeat 3 until agreement(extract(c, number)) {\n"
                       "        c = c + generate(policy, solve)\n    }\n    return vote(extract(c, number))\n}\n", """\
t.tts:5:20: error: the `until` condition must be bool, got number
 5 |     repeat 3 until agreement(extract(c, number)) {
   |                    ^~~~~~~~~~~~~~~~~~~~~~~~~~~~~"""),
    "unknown model": (HEAD + "strategy s(question) {\n    c = generate(polcy, solve)\n"
                      "    return vote(extract(c, number))\n}\n", """\
t.tts:4:18: error: unknown model `polcy`
 4 |     c = generate(polcy, solve)
   |                  ^~~~~
hint: did you mean `policy`?"""),
    "bad n": (HEAD + "strategy s(question) {\n    c = generate(policy, solve, n=0)\n"
              "    return vote(extract(c, number))\n}\n", """\
t.tts:4:35: error: argument `n` of `generate` must be at least 1, got 0
 4 |     c = generate(policy, solve, n=0)
   |                                   ^"""),
    "strategy arity": (HEAD + "strategy a(question) {\n    return vote(extract(generate(policy, solve), number))\n}\n"
                       "strategy b(question) {\n    return a(question, question)\n}\n", """\
t.tts:7:12: error: strategy `a` takes 1 argument (question), got 2
 7 |     return a(question, question)
   |            ^~~~~~~~~~~~~~~~~~~~~"""),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_error(name):
    source, expected = CASES[name]
    assert render(source) == expected


def test_compile_raises_tts_error_with_all_errors():
    source = HEAD + "strategy s(question) {\n    c = generat(policy, solve)\n    return vote(extract(d, number))\n}\n"
    with pytest.raises(TTSError) as exc:
        compile_source(source, "t.tts")
    messages = [d.message for d in exc.value.diagnostics]
    assert "unknown operation `generat`" in messages
    assert "undefined name `d`" in messages


def test_unused_variable_warns():
    source = HEAD + "strategy s(question) {\n    unused = generate(policy, solve)\n" \
                    "    return vote(extract(generate(policy, solve), number))\n}\n"
    diags = check_source(source, "t.tts")
    assert [d.severity for d in diags] == ["warning"]
    assert diags[0].message == "`unused` is assigned but never used"
    assert (diags[0].span.line, diags[0].span.column) == (4, 5)


def test_condition_that_can_never_be_true_warns():
    source = HEAD + "strategy s(question) {\n    c = generate(policy, solve, n=2)\n" \
                    "    repeat 3 until agreement(extract(c, number)) > 1 {\n" \
                    "        c = c + generate(policy, solve, n=2)\n    }\n    return vote(extract(c, number))\n}\n"
    diags = check_source(source, "t.tts")
    assert [d.severity for d in diags] == ["warning"]
    assert "can never be true" in diags[0].message


def test_type_change_across_loop_is_an_error():
    source = HEAD + "strategy s(question) {\n    c = generate(policy, solve, n=2)\n" \
                    "    repeat 2 {\n        c = extract(c, number)\n    }\n    return vote(c)\n}\n"
    errors = [d for d in check_source(source, "t.tts") if d.severity == "error"]
    assert any("is candidates before the loop but answers inside it" in d.message for d in errors)
