"""Golden error messages: the full rendered text of TTSError for bad sources.

Each case is (source, rendered error); sources are parsed as `bad.tts`.
"""

import pytest

from ttsc.common.errors import TTSError
from ttsc.dsl.parser import parse

CASES = [
    pytest.param(
        'model m = "abc\n'
        'model n = "x"\n',
        'bad.tts:1:11: error: unclosed string: missing the closing `"`\n'
        ' 1 | model m = "abc\n'
        '   |           ^\n'
        'hint: a "..." string ends on its line; use """...""" for text over several lines',
        id='unclosed_string',
    ),
    pytest.param(
        'prompt p = """\n'
        'hello {q}\n',
        'bad.tts:1:12: error: unclosed triple-quoted string: no closing `"""`\n'
        ' 1 | prompt p = """\n'
        '   |            ^~~\n'
        'hint: everything after these quotes, to the end of the file, is inside the string',
        id='unclosed_triple_quoted_string',
    ),
    pytest.param(
        'strategy f(q) {\n'
        '    x = 1\n'
        '    return x\n',
        'bad.tts:1:15: error: strategy `f` is not closed: expected `}` before the end of the file\n'
        ' 1 | strategy f(q) {\n'
        '   |               ^',
        id='missing_closing_brace_at_end_of_file',
    ),
    pytest.param(
        'strategy a(q) {\n'
        '    x = 1\n'
        'strategy b(q) {\n'
        '    return 1\n'
        '}\n',
        'bad.tts:3:1: error: strategy `a` is not closed: expected `}` before this `strategy`\n'
        ' 3 | strategy b(q) {\n'
        '   | ^~~~~~~~',
        id='missing_closing_brace_before_next_strategy',
    ),
    pytest.param(
        'strategy f(q) {\n'
        '    s = generate(policy, solve, n=4\n'
        '    return s\n'
        '}\n',
        'bad.tts:2:17: error: this `(` is not closed: expected `)` before `return` on line 3\n'
        ' 2 |     s = generate(policy, solve, n=4\n'
        '   |                 ^',
        id='missing_closing_paren',
    ),
    pytest.param(
        'strategy f(q) {\n'
        '    xs = [1, 2\n'
        '}\n',
        'bad.tts:2:10: error: this `[` is not closed: expected `]` before `}` on line 3\n'
        ' 2 |     xs = [1, 2\n'
        '   |          ^',
        id='unclosed_list',
    ),
    pytest.param(
        'strategy f(q) {\n'
        '    repeat 3 until x = 1 {\n'
        '        x = g(x)\n'
        '    }\n'
        '    return x\n'
        '}\n',
        'bad.tts:2:22: error: `=` assigns a name; to compare two values use `==`\n'
        ' 2 |     repeat 3 until x = 1 {\n'
        '   |                      ^',
        id='assign_instead_of_compare_in_until',
    ),
    pytest.param(
        'strategy f(q) {\n'
        '    return vote(weights=w, answers)\n'
        '}\n',
        'bad.tts:2:28: error: positional argument after a keyword argument\n'
        ' 2 |     return vote(weights=w, answers)\n'
        '   |                            ^~~~~~~\n'
        'hint: put positional arguments first: `vote(a, b, key=value)`',
        id='keyword_argument_before_positional',
    ),
    pytest.param(
        'strategy f(q) {\n'
        '    repeat = 3\n'
        '    return repeat\n'
        '}\n',
        'bad.tts:2:5: error: `repeat` is a reserved word and cannot be used as a name\n'
        ' 2 |     repeat = 3\n'
        '   |     ^~~~~~\n'
        'hint: choose another name, for example `repeat_`',
        id='keyword_as_variable_name',
    ),
    pytest.param(
        'strategy f(model) {\n'
        '    return model\n'
        '}\n',
        'bad.tts:1:12: error: `model` is a reserved word and cannot be used as a name\n'
        ' 1 | strategy f(model) {\n'
        '   |            ^~~~~\n'
        'hint: choose another name, for example `model_`\n'
        '\n'
        'bad.tts:2:12: error: `model` is a reserved word and cannot be used as a name\n'
        ' 2 |     return model\n'
        '   |            ^~~~~\n'
        'hint: choose another name, for example `model_`',
        id='reserved_word_as_parameter',
    ),
    pytest.param(
        'strategy f {\n'
        '    return 1\n'
        '}\n',
        'bad.tts:1:12: error: strategy `f` needs a parameter list\n'
        ' 1 | strategy f {\n'
        '   |            ^\n'
        'hint: write `strategy f(question) {`, or `strategy f() {` for none',
        id='strategy_without_parameter_list',
    ),
    pytest.param(
        "model m = 'smollm2-135m'\n",
        "bad.tts:1:11: error: unexpected character `'`\n"
        " 1 | model m = 'smollm2-135m'\n"
        '   |           ^\n'
        'hint: strings use double quotes: "..."',
        id='stray_character',
    ),
    pytest.param(
        'strategy f(q) {\n'
        '    return q\n'
        '}\n'
        '}\n',
        'bad.tts:4:1: error: this `}` closes nothing: there is no `{` before it\n'
        ' 4 | }\n'
        '   | ^',
        id='stray_closing_brace',
    ),
    pytest.param(
        'strategy f(q) {\n'
        '    return 1 < q < 3\n'
        '}\n',
        'bad.tts:2:18: error: unexpected `<`: comparisons cannot be chained\n'
        ' 2 |     return 1 < q < 3\n'
        '   |                  ^\n'
        'hint: combine comparisons with `and`, e.g. `a < b and b < c`',
        id='chained_comparison',
    ),
    pytest.param(
        'x = generate(policy, solve)\n',
        'bad.tts:1:1: error: unexpected name `x`; expected a definition (`model`, `prompt`, `strategy` or `budget`)\n'
        ' 1 | x = generate(policy, solve)\n'
        '   | ^\n'
        'hint: statements belong inside a strategy: `strategy name(question) { ... }`',
        id='statement_outside_strategy',
    ),
    pytest.param(
        'stratgy f(q) {\n'
        '}\n',
        'bad.tts:1:1: error: unexpected name `stratgy`; expected a definition (`model`, `prompt`, `strategy` or `budget`)\n'
        ' 1 | stratgy f(q) {\n'
        '   | ^~~~~~~\n'
        'hint: did you mean `strategy`?',
        id='misspelled_definition_keyword',
    ),
    pytest.param(
        'strategy f(q) {\n'
        '    retrun q\n'
        '}\n',
        'bad.tts:2:12: error: unexpected name `q`; expected `=`\n'
        ' 2 |     retrun q\n'
        '   |            ^\n'
        'hint: did you mean `return`?',
        id='misspelled_return',
    ),
    pytest.param(
        'strategy f(q) {\n'
        '    a = 1 b = 2\n'
        '}\n',
        'bad.tts:2:11: error: unexpected name `b`; expected end of line or `}`\n'
        ' 2 |     a = 1 b = 2\n'
        '   |           ^',
        id='two_statements_on_one_line',
    ),
    pytest.param(
        'strategy f(q) {\n'
        '    a =\n'
        '}\n',
        'bad.tts:2:8: error: unexpected end of line; expected an expression\n'
        ' 2 |     a =\n'
        '   |        ^',
        id='missing_expression',
    ),
    pytest.param(
        'budget { tokens <= 4000 per input; memory <= 2 GHz }\n',
        'bad.tts:1:48: error: `GHz` is not a memory unit; use one of B, KB, MB, GB, TB, KiB, MiB, GiB, TiB\n'
        ' 1 | budget { tokens <= 4000 per input; memory <= 2 GHz }\n'
        '   |                                                ^~~',
        id='bad_memory_unit',
    ),
    pytest.param(
        'budget { tokens <= 5 GiB }\n',
        'bad.tts:1:22: error: `tokens` is a count and takes no unit, but found `GiB`\n'
        ' 1 | budget { tokens <= 5 GiB }\n'
        '   |                      ^~~\n'
        'hint: write e.g. `tokens <= 4000 per input`',
        id='unit_on_token_budget',
    ),
    pytest.param(
        'budget { tokenz <= 300 }\n',
        'bad.tts:1:10: error: unknown budget resource `tokenz`; use tokens, memory or latency\n'
        ' 1 | budget { tokenz <= 300 }\n'
        '   |          ^~~~~~\n'
        'hint: did you mean `tokens`?',
        id='unknown_budget_resource',
    ),
    pytest.param(
        'budget { latency >= 3 s }\n',
        'bad.tts:1:18: error: a budget line takes `<=` only, not `>=`\n'
        ' 1 | budget { latency >= 3 s }\n'
        '   |                  ^~\n'
        'hint: budgets are upper limits, e.g. `tokens <= 4000 per input`',
        id='budget_needs_le',
    ),
    pytest.param(
        'prompt p = """\n'
        'Solve {question}.\n'
        'Reply as JSON: {"answer": 1}\n'
        '"""\n',
        'bad.tts:3:16: error: a hole must be a name like {question}, not `{"answer": 1}`\n'
        ' 3 | Reply as JSON: {"answer": 1}\n'
        '   |                ^~~~~~~~~~~~~\n'
        'hint: write `{{` and `}}` for literal braces',
        id='hole_is_not_a_name',
    ),
    pytest.param(
        'prompt p = "Question: {question"\n',
        'bad.tts:1:23: error: unclosed hole: this `{` has no matching `}`\n'
        ' 1 | prompt p = "Question: {question"\n'
        '   |                       ^\n'
        'hint: a hole is a name in braces like {question}; write `{{` for a literal `{`',
        id='unclosed_hole',
    ),
    pytest.param(
        'model m = "gguf:C:\\models\\q.gguf"\n',
        'bad.tts:1:19: error: unknown escape `\\m`\n'
        ' 1 | model m = "gguf:C:\\models\\q.gguf"\n'
        '   |                   ^~\n'
        'hint: valid escapes are \\n \\t \\r \\" \\\\ and \\uXXXX; """...""" strings keep backslashes as written\n'
        '\n'
        'bad.tts:1:26: error: unknown escape `\\q`\n'
        ' 1 | model m = "gguf:C:\\models\\q.gguf"\n'
        '   |                          ^~\n'
        'hint: valid escapes are \\n \\t \\r \\" \\\\ and \\uXXXX; """...""" strings keep backslashes as written',
        id='bad_escape',
    ),
    pytest.param(
        'prompt p = system "Be brief."\n',
        'bad.tts:1:30: error: unexpected end of file; expected `user`\n'
        ' 1 | prompt p = system "Be brief."\n'
        '   |                              ^\n'
        'hint: a prompt with a system part reads `prompt p = system "..." user "..."`',
        id='system_without_user',
    ),
    pytest.param(
        'strategy f(q, q) {\n'
        '    return q\n'
        '}\n',
        'bad.tts:1:15: error: parameter `q` is listed twice\n'
        ' 1 | strategy f(q, q) {\n'
        '   |               ^',
        id='duplicate_parameter',
    ),
    pytest.param(
        'budget {\n'
        '    tokens <= 4000 per input\n'
        '    tokens <= 8000 per input\n'
        '}\n',
        'bad.tts:3:5: error: `tokens per input` is limited twice in this budget (first on line 2)\n'
        ' 3 |     tokens <= 8000 per input\n'
        '   |     ^~~~~~~~~~~~~~~~~~~~~~~~',
        id='budget_line_twice',
    ),
    pytest.param(
        'budget { memory <= 2000000 }\n',
        'bad.tts:1:20: error: `memory` needs a unit after the number: one of B, KB, MB, GB, TB, KiB, MiB, GiB, TiB\n'
        ' 1 | budget { memory <= 2000000 }\n'
        '   |                    ^~~~~~~',
        id='memory_without_unit',
    ),
    pytest.param(
        'strategy f(q) {\n'
        '    return q\x00\n'
        '}\n',
        'bad.tts:2:13: error: unexpected character U+0000\n'
        ' 2 |     return q\x00\n'
        '   |             ^',
        id='control_character',
    ),
    pytest.param(
        'model m = "x\\q"\n'
        'strategy s(q) {\n'
        '    return f(n=1, q)\n'
        '}\n',
        'bad.tts:1:13: error: unknown escape `\\q`\n'
        ' 1 | model m = "x\\q"\n'
        '   |             ^~\n'
        'hint: valid escapes are \\n \\t \\r \\" \\\\ and \\uXXXX; """...""" strings keep backslashes as written\n'
        '\n'
        'bad.tts:3:19: error: positional argument after a keyword argument\n'
        ' 3 |     return f(n=1, q)\n'
        '   |                   ^\n'
        'hint: put positional arguments first: `f(a, b, key=value)`',
        id='several_mistakes',
    ),
]


@pytest.mark.parametrize("source, expected", CASES)
def test_rendered_error(source, expected):
    with pytest.raises(TTSError) as info:
        parse(source, "bad.tts")
    assert info.value.render() == expected


def test_nesting_limit():
    source = "strategy s(q) {\n    return " + "f(" * 120 + "q" + ")" * 120 + "\n}\n"
    with pytest.raises(TTSError) as info:
        parse(source)
    (diagnostic,) = info.value.diagnostics
    assert diagnostic.message == "this is nested too deeply (more than 100 levels)"
    assert diagnostic.span.line == 2


def test_parenthesized_nesting_is_not_limited():
    source = "strategy s(q) {\n    return " + "(" * 300 + "q" + ")" * 300 + "\n}\n"
    assert parse(source).strategies()[0].body[0].value.id == "q"
