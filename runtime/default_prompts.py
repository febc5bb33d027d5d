"""Default prompts for the ops that call an LLM in a fixed role, and their parsers.

`verify`, `critique`, `rank`, `fuse`, `refine` and `unit_tests` use these when
a strategy names no prompt of its own. They are `{hole}` templates, like prompts
in .tts files. List-valued holes (`candidates`, `critiques`) are filled with
`format_candidates`, which numbers them "[1] ...", the numbering `rank` asks the
model to answer in and `parse_ranking` reads back.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from ttsc.runtime.extract import extract_code

_HOLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class DefaultPrompt:
    system: str | None
    user: str

    @property
    def holes(self) -> tuple[str, ...]:
        """Hole names in order of first appearance (system part first)."""
        text = (self.system or "") + "\n" + self.user
        return tuple(dict.fromkeys(_HOLE.findall(text)))

    def render(self, **values: str) -> tuple[str | None, str]:
        """(system, user) with every hole filled; values are inserted verbatim."""
        missing = [h for h in self.holes if h not in values]
        if missing:
            raise KeyError(f"no value for hole(s) {', '.join(missing)}")

        def fill(text: str) -> str:
            return _HOLE.sub(lambda m: values[m.group(1)], text)

        return (fill(self.system) if self.system is not None else None), fill(self.user)


VERIFY = DefaultPrompt(
    system=None,
    user=("Problem: {question}\n\n"
          "Proposed solution: {candidate}\n\n"
          "Is the proposed solution correct? Answer Yes or No."),
)

CRITIQUE = DefaultPrompt(
    system="You are a careful reviewer. Be brief and specific.",
    user=("Problem: {question}\n\n"
          "Proposed answer:\n{candidate}\n\n"
          "List the strengths and weaknesses of this answer in a few short bullet points. "
          "Point out any mistake. Do not write a new answer."),
)

RANK = DefaultPrompt(
    system="You are a careful judge of answers.",
    user=("Problem: {question}\n\n"
          "Candidate answers:\n{candidates}\n\n"
          "Rank the candidate answers from best to worst by correctness and quality. "
          "Reply with the ranking only, using the candidates' numbers, like: [2] > [1] > [3]."),
)

# After Archon's fuser (itself after Mixture-of-Agents' aggregate-and-synthesize prompt).
FUSE = DefaultPrompt(
    system=("You have been given several candidate answers to a problem, with critiques of each. "
            "Your task is to synthesize them into a single, high-quality answer. Some candidates "
            "may be wrong or biased: weigh them critically, keep what is correct, fix what the "
            "critiques point out, and do not simply copy one candidate."),
    user=("Problem: {question}\n\n"
          "Candidate answers:\n{candidates}\n\n"
          "Critiques:\n{critiques}\n\n"
          "Write one better answer to the problem, in the answer format the problem asks for."),
)

REFINE = DefaultPrompt(
    system=None,
    user=("Problem: {question}\n\n"
          "Previous answer:\n{candidate}\n\n"
          "Feedback on the previous answer:\n{critique}\n\n"
          "Write an improved answer that fixes the problems the feedback names. "
          "Keep the answer format the problem asks for."),
)

UNIT_TESTS = DefaultPrompt(
    system="You write unit tests for Python functions.",
    user=("Write Python assert statements that test a correct solution to this problem:\n\n"
          "{question}\n\n"
          "Write only assert statements, one per line, each calling the function on a concrete "
          "input and comparing with the expected output. Do not write the function itself."),
)

DEFAULT_PROMPTS: dict[str, DefaultPrompt] = {
    "verify": VERIFY,
    "critique": CRITIQUE,
    "rank": RANK,
    "fuse": FUSE,
    "refine": REFINE,
    "unit_tests": UNIT_TESTS,
}


def format_candidates(texts: list[str]) -> str:
    """Numbered blocks "[1] first\\n\\n[2] second", numbered from 1."""
    return "\n\n".join(f"[{i}] {text.strip()}" for i, text in enumerate(texts, start=1))


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
