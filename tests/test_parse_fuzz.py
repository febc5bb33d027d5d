"""Fuzzing the parser: whatever the text, `parse` returns a Module or raises
TTSError with well-formed diagnostics, never any other exception."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from ttsc.dsl import ast
from ttsc.common.errors import TTSError
from ttsc.dsl.parser import parse

# Every construct of the language in one valid file.
VALID = '''\
model policy = "smollm2-135m"   # the embedded default
model judge = policy
prompt solve = """
    {question}
    Think step by step; answer as {{"answer": N}}.
    """
raw prompt cont = "Q: {question}\\nA:"
prompt check = system "You grade answers." user """
Problem: {question}
Proposed solution: {candidate}
"""

strategy space(question) {
    s = generate(choice(policy, judge), solve, n=auto, temperature=range(0.3, 1.1))
    repeat 8 until all_done(s) or not (len(s) >= 2 and true) {
        s = top(s, by=verify(judge, s, check), k=4) + [best(s, by=-1e-3)]
    }; t = regex("[0-9]+")
    return choice(vote(extract(s, number)),
                  best(s, by=verify(judge, s, check)))
}
budget {
    tokens <= 4000 per input; memory <= 2 GiB
    latency <= 10 s
}
'''

FILE = "fuzz.tts"
PIECES = [*'abqxyz_019 .,;:()[]{}<>=!+-*"\'#\\\n\t', '"""', "{q}", "{{", "}}", "é", "\x00", "\r",
          "model", "prompt", "raw", "system", "user", "strategy", "return", "repeat", "until", "budget",
          "per input", "GiB", "auto", "true", "not", "and", "or", "==", "<=", "\\u00e9", "\\q"]
TOKEN = re.compile(r'"""[\s\S]*?"""|"[^"\n]*"|\w+|\s+|.')


def check_parse(source: str) -> None:
    try:
        module = parse(source, FILE)
    except TTSError as err:
        assert err.diagnostics
        rendered = err.render()
        assert isinstance(rendered, str) and "error:" in rendered
        num_lines = source.replace("\r\n", "\n").replace("\r", "\n").count("\n") + 1
        for diagnostic in err.diagnostics:
            assert diagnostic.span is not None and diagnostic.span.file == FILE
            assert 1 <= diagnostic.span.line <= num_lines
            assert diagnostic.span.column >= 1
    else:
        assert isinstance(module, ast.Module)


def test_valid_source_parses():
    module = parse(VALID)
    assert len(module.definitions) == 7


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES) | st.characters(), max_size=60).map("".join))
def test_random_text(source):
    check_parse(source)


@st.composite
def mutated(draw):
    source = VALID
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "insert", "duplicate", "delete_token", "duplicate_token"]))
        if kind.endswith("token"):
            tokens = TOKEN.findall(source)
            i = draw(st.integers(0, len(tokens) - 1))
            tokens[i:i + 1] = [] if kind == "delete_token" else [tokens[i], tokens[i]]
            source = "".join(tokens)
            continue
        i = draw(st.integers(0, len(source)))
        if kind == "delete":
            source = source[:i] + source[i + 1:]
        elif kind == "insert":
            source = source[:i] + draw(st.sampled_from(PIECES)) + source[i:]
        else:
            j = draw(st.integers(i, min(len(source), i + 40)))
            source = source[:j] + source[i:j] + source[j:]
    return source


@settings(max_examples=300, deadline=None)
@given(mutated())
def test_mutated_valid_source(source):
    check_parse(source)


# Printing random expression trees with the fewest parentheses the
# precedence rules allow, then parsing them back, must give the same tree.
LEVEL = {"or": 1, "and": 2, "not": 3, "<": 4, "==": 4, ">=": 4, "+": 5}


def render(tree) -> tuple[str, int]:
    """(text, precedence level); atoms are level 6."""
    if not isinstance(tree, list):
        return str(tree), 6
    op = tree[0]
    if op == "call":
        return f"{tree[1]}({', '.join(render(a)[0] for a in tree[2:])})", 6
    if op == "not":
        return f"not {wrap(tree[1], 3)}", 3
    level = LEVEL[op]
    left_min, right_min = {1: (1, 2), 2: (2, 3), 4: (5, 5), 5: (5, 6)}[level]
    return f"{wrap(tree[1], left_min)} {op} {wrap(tree[2], right_min)}", level


def wrap(tree, min_level: int) -> str:
    text, level = render(tree)
    return text if level >= min_level else f"({text})"


def shape(node):
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Number):
        return node.value
    if isinstance(node, ast.Call):
        return ["call", node.func, *map(shape, node.args)]
    if isinstance(node, ast.Not):
        return ["not", shape(node.operand)]
    return [node.op, shape(node.left), shape(node.right)]


trees = st.recursive(
    st.sampled_from(["a", "b", "input", "x1"]) | st.integers(0, 99),
    lambda sub: (st.tuples(st.sampled_from(list(LEVEL)), sub, sub).map(
        lambda t: ["not", t[1]] if t[0] == "not" else list(t))
        | st.lists(sub, max_size=3).map(lambda args: ["call", "f", *args])),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(trees)
def test_precedence_round_trip(tree):
    text = render(tree)[0]
    (strategy,) = parse(f"strategy s(q) {{\n  return {text}\n}}").strategies()
    assert shape(strategy.body[0].value) == tree
