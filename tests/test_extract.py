import pytest

from ttsc.common.errors import UserError
from ttsc.runtime.extract import EXTRACTORS, check_regex, extract, extract_all, normalize_number


@pytest.mark.parametrize("text, expected", [
    ("Answer: 8", "8"),
    ("3 + 5 = 8. Answer: 8", "8"),
    ("The answer is $1,000.00.", "1000"),
    ("First 12, then 7, finally 9", "9"),
    ("We get \\boxed{42} in the end, not 41", "42"),
    ("so \\boxed{\\frac{3}{4}}", "3/4"),
    ("reasoning 12 + 60 = 72\n#### 72", "72"),
    ("Answer: 3 + 5 = 8", "8"),  # the result after "=", not the first operand
    ("Answer: 8 (because 3 + 5 = 8)", "8"),
    ("The answer is -3.", "-3"),
    ("x is 5.0", "5"),
    ("about 0.50 of it", "0.5"),
    ("Answer: 3/4", "3/4"),
    ("Answer: 8\nLet me double-check: 4 + 4 = 8, and 9 is wrong", "8"),  # marker beats last number
    ('finish with "Answer: <number>". I think 7', "7"),  # an echoed template names no number
    ("What is 5-3? It is 2", "2"),  # a minus glued to a number is subtraction
    ("SmolLM2 says 4", "4"),  # digits inside words are not numbers
    ("1, 2, 3", "3"),
    ("no digits here", None),
    ("", None),
])
def test_number(text, expected):
    assert extract(text, "number") == expected


@pytest.mark.parametrize("raw, expected", [
    ("007", "7"), ("-0", "0"), ("+5", "5"), ("1,234,567", "1234567"), ("$12.340", "12.34"),
    ("-2.50", "-2.5"), ("06/08", "6/8"), ("\u22124", "-4"),
])
def test_normalize_number(raw, expected):
    assert normalize_number(raw) == expected


@pytest.mark.parametrize("text, expected", [
    ("Answer: (B)", "B"),
    ("the answer is C.", "C"),
    ("The correct option is D", "D"),
    ("B", "B"),
    ("(E)", "E"),
    ("B) 9", "B"),
    ("B is the largest", "B"),
    ("A good choice here is D", "D"),  # "A good" is the article
    ("A) 3 B) 9 C) 5", None),  # an echo of the options names no answer
    ("I do not know", None),
    ("Answer: F", None),
])
def test_choice(text, expected):
    assert extract(text, "choice") == expected


def test_code_takes_last_python_block():
    text = ("Here:\n```python\ndef f():\n    return 1\n```\nBetter:\n"
            "```python\ndef f():\n    return 2\n```\nDone.")
    assert extract(text, "code") == "def f():\n    return 2"


def test_code_accepts_bare_fence_and_unclosed_fence():
    assert extract("```\nx = 1\n```", "code") == "x = 1"
    assert extract("```python\ndef f(x):\n    return x", "code") == "def f(x):\n    return x"


def test_code_skips_other_languages():
    text = "```python\nprint(1)\n```\n```bash\nls -la\n```"
    assert extract(text, "code") == "print(1)"


def test_code_without_fence():
    assert extract("def add(a, b):\n    return a + b\n", "code") == "def add(a, b):\n    return a + b"
    assert extract("hello", "code") is None
    assert extract("This is just prose, not code.", "code") is None


def test_regex_group_and_last_match():
    text = "score=3; score=7; total"
    assert extract(text, "regex", r"score=(\d+)") == "7"
    assert extract(text, "regex", r"score=\d+") == "score=7"
    assert extract(text, "regex", r"missing(\d)") is None


def test_regex_optional_group_falls_back_to_earlier_match():
    assert extract("a1 b", "regex", r"[ab](\d)?") == "1"


def test_invalid_regex():
    message = check_regex("(unclosed")
    assert message is not None and "position" in message
    assert check_regex(r"\d+") is None
    with pytest.raises(UserError, match="invalid regular expression"):
        extract("x", "regex", "(unclosed")
    with pytest.raises(UserError, match="needs a pattern"):
        extract("x", "regex")


def test_unknown_extractor_suggests():
    with pytest.raises(UserError) as info:
        extract("x", "numbr")
    assert "number" in info.value.hint
    with pytest.raises(UserError):
        extract("x", "number", pattern="x")
    assert set(EXTRACTORS) == {"number", "choice", "code", "program", "regex"}


def test_program_runs_the_text_or_its_last_code_block():
    assert extract(" 46 - 17", "program") == "29"  # a completion of "answer =" in a raw prompt
    assert extract("Here:\n```python\nprint(6 * 7)\n```\nDone.", "program") == "42"
    assert extract("46 / 2", "program") == "23"  # numbers normalised as `number` does
    assert extract("1 / 4", "program") == "0.25"
    assert extract("'a' + 'b'", "program") == "ab"
    assert extract("The answer is 29.", "program") is None  # not Python
    assert extract("1 / 0", "program") is None  # a failing program has no answer
    assert extract("", "program") is None


def test_programs_of_many_samples():
    texts = [" 2 + 2", "2 + 2", " 2+2", "oops(", "```python\nanswer = 5\n```"]
    assert extract_all(texts, "program") == ["4", "4", "4", None, "5"]
    assert extract_all(["Answer: 3", "4"], "number") == ["3", "4"]
