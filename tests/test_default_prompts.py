import dataclasses

import pytest

from ttsc.common.prompts import DEFAULT_PROMPTS, format_candidates
from ttsc.common.prompts import PromptDef as DefaultPrompt
from ttsc.runtime.replies import parse_ranking, parse_unit_tests
from ttsc.runtime.sandbox import run_python_tests

EXPECTED_HOLES = {
    "verify": ("question", "candidate"),
    "critique": ("question", "candidate"),
    "rank": ("question", "candidates"),
    "fuse": ("question", "candidates", "critiques"),
    "refine": ("question", "candidate", "critique"),
    "unit_tests": ("question",),
}


@pytest.mark.parametrize("op, holes", EXPECTED_HOLES.items())
def test_holes(op, holes):
    assert DEFAULT_PROMPTS[op].holes == holes


def test_prompts_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_PROMPTS["verify"].user = "x"


def test_verify_asks_yes_or_no():
    system, user = DEFAULT_PROMPTS["verify"].render(question="What is 2 + 2?", candidate="4")
    assert system is None
    assert "What is 2 + 2?" in user and "4" in user
    assert user.endswith("Is the proposed solution correct? Answer Yes or No.")


def test_render_inserts_values_verbatim_and_requires_all_holes():
    prompt = DefaultPrompt(system="sys {question}", user="Q: {question} / {candidate}")
    assert prompt.render(question="{candidate}", candidate="a}") == \
        ("sys {candidate}", "Q: {candidate} / a}")
    with pytest.raises(KeyError, match="candidate"):
        prompt.render(question="q")


def test_rank_prompt_shows_numbered_candidates():
    _, user = DEFAULT_PROMPTS["rank"].render(
        question="q", candidates=format_candidates(["alpha", "beta"]))
    assert "[1] alpha\n\n[2] beta" in user and "[2] > [1] > [3]" in user


def test_format_candidates():
    assert format_candidates(["  one\n", "two\nlines"]) == "[1] one\n\n[2] two\nlines"
    assert format_candidates([]) == ""


@pytest.mark.parametrize("text, expected", [
    ("[2] > [1] > [3]", [1, 0, 2]),
    ("2, 1, 3", [1, 0, 2]),
    ("Ranking: 3 1 2", [2, 0, 1]),
    ("[3] > [1]", [2, 0, 1]),  # unmentioned candidates follow in order
    ("[2] > [2] > [1]", [1, 0, 2]),  # duplicates ignored
    ("[7] > [2] > [0]", [1, 0, 2]),  # out of range ignored
    ("Candidate [3] is best because 4 + 4 = 8; then [1]", [2, 0, 1]),  # brackets beat prose
    ("1. [2]\n2. [3]\n3. [1]", [1, 2, 0]),
    ("3.5 is not an index, 2 is", [1, 0, 2]),
    ("I cannot rank these.", [0, 1, 2]),
    ("", [0, 1, 2]),
])
def test_parse_ranking(text, expected):
    assert parse_ranking(text, 3) == expected


def test_parse_ranking_is_always_a_permutation():
    for text in ["[5] > [4] > [9] > [1]", "10 2 2 7", "none"]:
        assert sorted(parse_ranking(text, 10)) == list(range(10))
    assert parse_ranking("[1]", 0) == []


def test_parse_unit_tests_keeps_valid_asserts():
    reply = ("Here are tests:\n```python\nassert add(1, 2) == 3\nassert add(2, 2) ==\n"
             "print('x')\n    assert add(0, 0) == 0\n```")
    assert parse_unit_tests(reply) == "assert add(1, 2) == 3\nassert add(0, 0) == 0"
    assert parse_unit_tests("no tests here") == ""
    assert parse_unit_tests("assert f(1) == 1\nassert f(2) == 2") == \
        "assert f(1) == 1\nassert f(2) == 2"


def test_parsed_unit_tests_run_in_the_sandbox():
    tests = parse_unit_tests("```\nassert add(1, 2) == 3\nassert add(5, 5) == 10\n```")
    run = run_python_tests("def add(a, b):\n    return a + b", tests)
    assert (run.passed, run.total) == (2, 2)
