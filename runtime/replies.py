"""Reading model replies that answer in a fixed form: a ranking of numbered
candidates (`rank`, whose prompt numbers them "[1] ..." with
`common.prompts.format_candidates`), and generated unit tests (`unit_tests`)."""

from __future__ import annotations

import ast
import re

from ttsc.runtime.extract import extract_code

_BRACKETED = re.compile(r"\[\s*(\d+)\s*\]")
_BARE = re.compile(r"(?<![\d.])(\d+)(?!\d)(?!\.\d)")  # integers, not parts of decimals


def parse_ranking(text: str, n: int) -> list[int]:
    """0-based candidate indices, best first, from a model's ranking of n candidates.

    Reads "[2] > [1] > [3]", "2, 1, 3" or "Ranking: 3 1 2". Bracketed numbers
    win over bare ones when present (bare numbers may be in prose). Indices out
    of range and repeats are ignored; candidates not mentioned follow in their
    original order, so the result is always a permutation of range(n).
    """
    numbers = _BRACKETED.findall(text) or _BARE.findall(text)
    order: list[int] = []
    for token in numbers:
        index = int(token) - 1
        if 0 <= index < n and index not in order:
            order.append(index)
    return order + [i for i in range(n) if i not in order]


def parse_unit_tests(text: str) -> str:
    """The assert statements in a model's reply, one per line, each one valid Python.

    Takes the last code block if there is one; keeps every assert that parses
    on its own (a reply cut off mid-line loses only that line). Returns "" when
    there are none.
    """
    code = extract_code(text) or text
    asserts = []
    for line in code.splitlines():
        stripped = line.strip()
        if not stripped.startswith("assert"):
            continue
        try:
            tree = ast.parse(stripped)
        except SyntaxError:
            continue
        if len(tree.body) == 1 and isinstance(tree.body[0], ast.Assert):
            asserts.append(stripped)
    return "\n".join(asserts)
