"""Mutated example sources through the whole compiler: the only exceptions a
user can ever see are the project's own (rendered as diagnostics)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ttsc.compiler.pipeline import check_source, compile_source
from ttsc.common.errors import UserError

EXAMPLES = [p.read_text() for p in sorted(Path(__file__).resolve().parent.parent
                                          .joinpath("examples").glob("*.tts"))]
WORDS = ["generate", "vote", "extract", "verify", "best", "top", "extend", "repeat", "until",
         "return", "auto", "choice", "range", "policy", "judge", "solve", "check", "n=", "k=",
         "(", ")", "{", "}", "[", "]", ",", "+", "=", ">=", "\n", "0", "16", "-1", '"x"', "question",
         "samples", "beams", "number", "regex(\"(\\d+)\")", "budget", "tokens <= 5", "agreement"]


@st.composite
def mutated(draw):
    source = draw(st.sampled_from(EXAMPLES))
    lines = source.splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, max(0, len(lines) - 1)))
        kind = draw(st.sampled_from(["drop", "dup", "insert", "swap_word"]))
        if kind == "drop" and lines:
            lines.pop(i)
        elif kind == "dup" and lines:
            lines.insert(i, lines[i])
        elif kind == "insert":
            lines.insert(i, draw(st.sampled_from(WORDS)) + " ")
        elif lines:
            words = lines[i].split(" ")
            j = draw(st.integers(0, len(words) - 1))
            words[j] = draw(st.sampled_from(WORDS))
            lines[i] = " ".join(words)
    return "".join(lines)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_sources_raise_only_user_errors(source):
    try:
        compile_source(source, "m.tts")
    except UserError:
        pass
    # `check` never raises: it returns diagnostics.
    for d in check_source(source, "m.tts"):
        assert d.message
