"""The unparser: `parse(unparse(parse(src)))` is the program `parse(src)` was
(positions aside), and it compiles to the same plan."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttsc.common.errors import Span, TTSError
from ttsc.compiler.pipeline import compile_source
from ttsc.dsl import ast
from ttsc.dsl.parser import parse
from ttsc.dsl.strings import quote
from ttsc.dsl.unparse import unparse

from test_parse_fuzz import VALID, mutated

EXAMPLES = sorted(Path(__file__).resolve().parent.parent.joinpath("examples").glob("*.tts"))


def without_spans(node):
    """The same tree with every position blanked out."""
    if isinstance(node, Span):
        return None
    if isinstance(node, tuple):
        return tuple(without_spans(n) for n in node)
    if dataclasses.is_dataclass(node):
        return type(node)(**{f.name: without_spans(getattr(node, f.name)) for f in dataclasses.fields(node)})
    return node


def program(module: ast.Module) -> tuple:
    return without_spans(module.definitions)


def round_trip(source: str, file: str = "t.tts") -> tuple[ast.Module, ast.Module, str]:
    first = parse(source, file)
    text = unparse(first)
    return first, parse(text, file), text


def plan_without_positions(source: str, file: str) -> dict:
    plan = compile_source(source, file).plan.to_dict()
    plan.pop("passes")  # notes name source lines
    text = json.dumps(plan, sort_keys=True)
    text = re.sub(r'"span": "[^"]*"', '"span": null', text)
    return json.loads(re.sub(r"line \d+", "line ?", text))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_round_trips_and_compiles_to_the_same_plan(path, tmp_path, monkeypatch):
    monkeypatch.setenv("TTSC_CACHE_DIR", str(tmp_path / "cache"))
    source = path.read_text()
    first, again, text = round_trip(source, str(path))
    assert program(again) == program(first)
    assert unparse(again) == text  # a fixed point
    assert plan_without_positions(text, str(path)) == plan_without_positions(source, str(path))


def test_every_construct_round_trips():
    first, again, text = round_trip(VALID)
    assert program(again) == program(first)
    assert 'raw prompt cont = """\nQ: {question}\nA:"""' in text  # raw: as written
    assert "memory <= 2 GiB" in text and "latency <= 10 s" in text
    assert "all_done(s) or not (len(s) >= 2 and true)" in text  # only the parentheses needed


@settings(max_examples=200, deadline=None)
@given(mutated())
def test_whatever_parses_round_trips(source):
    try:
        first = parse(source, "t.tts")
    except TTSError:
        return
    assert program(parse(unparse(first), "t.tts")) == program(first)


@pytest.mark.parametrize("value", ["", "plain", 'quote " and \\ backslash', "tab\tand\r\nlines\n",
                                   "\x00\x1b\x7f\u2028", "é and 😀", '"""', 'ends in "', "  indented\n  text\n"])
def test_quote_reads_back(value):
    for block in (False, True):
        (strategy,) = parse(f"strategy s(q) {{\n    return {quote(value, block=block)}\n}}").strategies()
        assert strategy.body[0].value.value == value


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_quote_reads_back_any_text(value):
    (strategy,) = parse(f"strategy s(q) {{\n    return {quote(value)}\n}}").strategies()
    assert strategy.body[0].value.value == value


def test_prompt_templates_keep_holes_and_literal_braces():
    source = 'prompt p = """\n{question}\nReply as {{"answer": N}}.\n"""\nprompt q = "a {b} {{c}}\\t"\n'
    first, again, text = round_trip(source)
    assert program(again) == program(first)
    assert '{{"answer": N}}' in text and [h.name for h in again.prompts()[0].holes] == ["question"]
