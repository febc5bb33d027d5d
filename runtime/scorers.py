"""Scorers for evaluation: is a predicted answer right, given the gold answer?

A scorer is `(prediction, gold) -> bool`; a None prediction (nothing extracted)
is always wrong. Predictions and golds are read leniently, so a strategy that
returns whole text ("... Answer: 8") and a GSM8K-style gold ("... #### 8") both
score. The gold a scorer gets is a `Gold`: the answer's text, which also
carries its data row, for a scorer that needs more than the answer.

  number      numeric equality after normalisation, tolerance 1e-6
  exact       equality after trimming, collapsing whitespace and casefolding
  choice      multiple-choice letter equality
  regex       the gold is a regular expression the prediction must fullmatch
  unit_tests  the gold is Python assert statements; the prediction is code that
              must pass them all in the sandbox
  reasoning_gym  the row's reasoning-gym task scores the prediction with its own
              `score_answer` (full credit only); the default for
              `reasoning-gym:TASK` data (runtime/reasoning_gym_data.py)
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any, Callable, Sequence

from ttsc.common.errors import UserError, did_you_mean
from ttsc.runtime.extract import check_regex, extract_choice, extract_code, extract_number
from ttsc.runtime.sandbox import run_python_tests

Scorer = Callable[[str | None, str], bool]

NUMBER_TOLERANCE = 1e-6
DEFAULT_SCORER = "number"  # when neither --scorer nor the data chooses one


class Gold(str):
    """A gold answer: its text, and the data row it came from (`row`; None
    when unknown), which a scorer such as reasoning_gym reads."""

    row: dict[str, Any] | None

    def __new__(cls, text: str, row: dict[str, Any] | None = None) -> "Gold":
        gold = super().__new__(cls, text)
        gold.row = row
        return gold


def gold_of(row: dict[str, Any], answer_field: str = "answer") -> Gold:
    """The gold answer of a data row, for a scorer."""
    return Gold(str(row[answer_field]), row)


def parse_number(text: str) -> Fraction | None:
    """The number `text` states (itself, or its extracted final answer)."""
    value = extract_number(text)
    if value is None:
        return None
    try:
        return Fraction(value)
    except (ValueError, ZeroDivisionError):  # "3/0" is no number
        return None


def score_number(prediction: str | None, gold: str) -> bool:
    if prediction is None:
        return False
    got, want = parse_number(prediction), parse_number(gold)
    return got is not None and want is not None and abs(float(got - want)) <= NUMBER_TOLERANCE


def _normalize_text(text: str) -> str:
    return " ".join(text.split()).casefold()


def score_exact(prediction: str | None, gold: str) -> bool:
    return prediction is not None and _normalize_text(prediction) == _normalize_text(gold)


def _letter(text: str) -> str | None:
    stripped = text.strip().strip("().[]").strip().upper()
    if len(stripped) == 1 and stripped in "ABCDE":
        return stripped
    return extract_choice(text)


def score_choice(prediction: str | None, gold: str) -> bool:
    if prediction is None:
        return False
    got, want = _letter(prediction), _letter(gold)
    return got is not None and got == want


def score_regex(prediction: str | None, gold: str) -> bool:
    problem = check_regex(gold)
    if problem:
        raise UserError(f"gold answer is not a valid pattern for the regex scorer: {problem}")
    return prediction is not None and re.fullmatch(gold, prediction.strip()) is not None


def score_unit_tests(prediction: str | None, gold: str) -> bool:
    if prediction is None:
        return False
    code = extract_code(prediction) or prediction
    return run_python_tests(code, gold).all_passed


def score_reasoning_gym(prediction: str | None, gold: str) -> bool:
    row = getattr(gold, "row", None)
    if row is None:
        raise ValueError("the reasoning_gym scorer reads the gold's data row: pass gold_of(row)")
    from ttsc.runtime.reasoning_gym_data import score

    return prediction is not None and score(prediction, row, str(gold))


_SCORERS: dict[str, Scorer] = {
    "number": score_number,
    "exact": score_exact,
    "choice": score_choice,
    "regex": score_regex,
    "unit_tests": score_unit_tests,
    "reasoning_gym": score_reasoning_gym,
}
SCORERS = tuple(_SCORERS)


def get_scorer(name: str) -> Scorer:
    """The scorer called `name`; an unknown name is a UserError listing the known ones."""
    try:
        return _SCORERS[name]
    except KeyError:
        hint = did_you_mean(name, SCORERS) or f"known scorers: {', '.join(SCORERS)}"
        raise UserError(f"unknown scorer `{name}`; known: {', '.join(SCORERS)}", hint=hint) from None


def check_golds(name: str, rows: Sequence[dict[str, Any]], path: str, answer_field: str = "answer") -> None:
    """UserError at the first row whose gold answer scorer `name` cannot read
    (a `number` scorer on letters, a `choice` scorer on numbers, a `regex`
    gold that is no pattern): every item would score wrong, silently."""
    get_scorer(name)
    if name == "reasoning_gym":
        from ttsc.runtime.reasoning_gym_data import check_rows

        check_rows(rows, path)
        return
    readable: dict[str, Callable[[str], str | None]] = {
        "number": lambda g: None if parse_number(g) is not None else "is not a number",
        "choice": lambda g: None if _letter(g) is not None else "is not a choice letter (A-E)",
        "regex": lambda g: (f"is not a regular expression ({check_regex(g)})" if check_regex(g)
                            else None),
    }
    check = readable.get(name)
    if check is None:
        return
    for index, row in enumerate(rows):
        problem = check(str(row[answer_field]))
        if problem:
            line = rows.line_of(index) if hasattr(rows, "line_of") else index + 1
            others = [n for n in SCORERS if n != name and n in readable and
                      readable[n](str(row[answer_field])) is None]
            raise UserError(f"{path}:{line}: the gold answer {row[answer_field]!r} {problem}, so "
                            f"the `{name}` scorer cannot score this data",
                            hint=f"choose a scorer that fits it: --scorer {others[0] if others else 'exact'}")
