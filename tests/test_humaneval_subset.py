"""examples/data/humaneval_subset.jsonl: HumanEval problems with their own
tests as gold answers, scored by the `unit_tests` scorer in the sandbox."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ttsc.runtime.data import load_jsonl
from ttsc.runtime.sandbox import find_tests
from ttsc.runtime.scorers import get_scorer

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples/data/humaneval_subset.jsonl"


def _maker():
    spec = importlib.util.spec_from_file_location("make_humaneval", ROOT / "examples/data/make_humaneval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_row_has_a_question_and_tests_of_its_function():
    rows = load_jsonl(DATA)
    assert len(rows) == 20 and len({r["id"] for r in rows}) == 20
    for r in rows:
        assert r["id"].startswith("HumanEval/") and f"def {r['entry_point']}(" in r["question"]
        flags = find_tests(r["answer"])
        assert sum(flags) == r["tests"] >= 1
        assert r["entry_point"] in r["answer"] and "candidate" not in r["answer"]


def test_a_right_program_passes_its_gold_and_a_wrong_one_fails():
    rows = {r["entry_point"]: r for r in load_jsonl(DATA)}
    score = get_scorer("unit_tests")
    right = "```python\ndef add(x: int, y: int):\n    return x + y\n```"
    wrong = "```python\ndef add(x: int, y: int):\n    return x - y\n```"
    assert score(right, rows["add"]["answer"]) and not score(wrong, rows["add"]["answer"])
    assert score("def strlen(string):\n    return len(string)\n", rows["strlen"]["answer"])
    assert not score(None, rows["strlen"]["answer"])


def test_the_conversion_calls_the_function_and_drops_constant_asserts():
    test = ("METADATA = {}\n\ndef check(candidate):\n    import math\n"
            "    assert candidate(2) == 4\n    assert True, 'always'\n"
            "    for x in range(3):\n        assert abs(candidate(x) - x * 2) < 1e-6\n")
    gold = _maker().gold_tests(test, "double")
    assert gold == ("import math\nassert double(2) == 4\nfor x in range(3):\n"
                    "    assert abs(double(x) - x * 2) < 1e-06\n")
    assert find_tests(gold) == [False, True, True]
