import pytest

from ttsc.common.errors import UserError
from ttsc.runtime.scorers import SCORERS, get_scorer


@pytest.mark.parametrize("prediction, gold, expected", [
    ("8", "8", True),
    ("8.0", "8", True),
    ("1,000", "1000", True),
    ("$5", "5.00", True),
    ("0.75", "3/4", True),
    ("0.3333333", "1/3", True),  # within 1e-6
    ("0.333", "1/3", False),
    ("-3", "3", False),
    ("The answer is 8.", "8", True),  # whole text: its final answer is read
    ("8", "Natalia sold 48/2 = 24 clips.\n#### 72", False),
    ("72", "Natalia sold 48/2 = 24 clips.\n#### 72", True),
    (None, "8", False),
    ("no number", "8", False),
    ("3/0", "3", False),
])
def test_number(prediction, gold, expected):
    assert get_scorer("number")(prediction, gold) is expected


def test_exact():
    score = get_scorer("exact")
    assert score("  Paris ", "paris")
    assert score("New   York\nCity", "new york city")
    assert not score("Paris!", "Paris")
    assert not score(None, "Paris")


def test_choice():
    score = get_scorer("choice")
    assert score("B", "B")
    assert score("(b)", "B")
    assert score("Answer: (C)", "C")
    assert not score("A", "B")
    assert not score(None, "B")
    assert not score("maybe", "B")


def test_regex():
    score = get_scorer("regex")
    assert score("42 apples", r"\d+ apples?")
    assert not score("42 apples and more", r"\d+ apples?")  # must match fully
    assert not score(None, r".*")
    with pytest.raises(UserError, match="regex scorer"):
        score("x", "(")


def test_unit_tests_scorer_runs_the_sandbox():
    score = get_scorer("unit_tests")
    tests = "assert add(1, 2) == 3\nassert add(-1, 1) == 0"
    assert score("```python\ndef add(a, b):\n    return a + b\n```", tests)
    assert not score("def add(a, b):\n    return a - b", tests)
    assert not score(None, tests)


def test_unknown_scorer_lists_names():
    with pytest.raises(UserError) as info:
        get_scorer("exakt")
    assert "number" in info.value.message and "exact" in info.value.message
    assert "exact" in info.value.hint
    assert {"number", "exact", "choice", "regex"} <= set(SCORERS)
