"""Answer extraction: turn a model's free-form text into a comparable answer.

`extract(text, how)` backs the `extract(...)` op of the language. Each preset
returns a normalised string, or None when the text holds no answer of that kind
(a None never wins a vote).

Presets:
  number  the final numeric answer ("Answer: 8", "answer is 8", \\boxed{8},
          "#### 8"; else the last number), normalised: "1,000" -> "1000",
          "$5.0" -> "5", "-3", fractions kept as written ("3/4").
  choice  a multiple-choice letter A-E ("Answer: (B)", "answer is B"; else the
          one option letter the text names).
  code    the last ```python``` (or bare ```) block; else the text itself when
          it parses as Python statements.
  regex   first capture group of a user pattern (whole match if no groups);
          the last match in the text wins.
  program the answer of the text run as Python in the sandbox (program-aided
          answering, PAL): the last ```python``` block, else the text; its
          last expression's value, else its `answer`, else its last printed
          line (runtime/sandbox.py: run_python_program). A number is
          normalised as `number` does; a program that fails has no answer.
"""

from __future__ import annotations

import ast
import functools
import re
import textwrap
from typing import Sequence

from ttsc.common.errors import UserError, did_you_mean
from ttsc.compiler.ops import EXTRACTORS
from ttsc.runtime.sandbox import run_many_python_programs

# A number not glued to a word ("SmolLM2", "v1.5" are not answers). Thousands
# groups need exactly three digits so that a list "2, 1, 3" stays three numbers.
_NUMBER = re.compile(
    r"(?<![\w.])(-)?\$?((?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+)?)")
_ANSWER_MARK = re.compile(r"(?<![A-Za-z])(?i:answer)(?![A-Za-z])\s*(?:(?i:is)\s*)?[:=]?")
_HASHES = re.compile(r"####")
_BOXED = re.compile(r"\\boxed\s*\{")
_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]*?)\s*\}\s*\{\s*([^{}]*?)\s*\}")

_CHOICE_EXPLICIT = re.compile(
    r"(?<![A-Za-z])(?i:answer|option|choice|choose|select)\s*(?:(?i:is)\s*)?[:=]?\s*"
    r"(?:(?i:option)\s*)?[(\[]?([A-E])(?![A-Za-z0-9])")
# A standalone option letter: "B", "(B)", "B)". "A" followed by a lowercase
# word is the article ("A good guess"), not an option.
_CHOICE_LONE = re.compile(r"(?<![A-Za-z0-9])([B-E]|A(?!\s+[a-z]))(?![A-Za-z0-9])")

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = ("", "python", "py", "python3")


def extract(text: str, how: str, pattern: str | None = None) -> str | None:
    """The answer in `text` by preset `how` (one of EXTRACTORS), or None."""
    if how not in EXTRACTORS:
        raise UserError(f"unknown extractor `{how}`; known: {', '.join(EXTRACTORS)}",
                        hint=did_you_mean(how, EXTRACTORS))
    if how == "regex":
        if pattern is None:
            raise UserError("the regex extractor needs a pattern: regex(\"...\")")
        return extract_regex(text, pattern)
    if pattern is not None:
        raise UserError(f"the {how} extractor takes no pattern")
    if how == "number":
        return extract_number(text)
    if how == "choice":
        return extract_choice(text)
    if how == "program":
        return extract_programs([text])[0]
    return extract_code(text)


def extract_all(texts: Sequence[str], how: str, pattern: str | None = None) -> list[str | None]:
    """`extract` over many texts; programs run several at a time, each distinct one once."""
    if how == "program":
        return extract_programs(texts)
    return [extract(t, how, pattern) for t in texts]


# --- number -----------------------------------------------------------------

def normalize_number(raw: str) -> str:
    """Canonical text of a number: no sign noise, commas, `$` or trailing zeros."""
    s = raw.replace("\u2212", "-").replace(" ", "").replace("$", "").replace(",", "")
    negative = s.startswith("-")
    s = s.lstrip("+-")
    if "/" in s:
        num, den = s.split("/", 1)
        s = f"{_strip_int(num)}/{_strip_int(den)}"
    elif "." in s:
        whole, frac = s.split(".", 1)
        frac = frac.rstrip("0")
        s = _strip_int(whole) + (f".{frac}" if frac else "")
    else:
        s = _strip_int(s)
    if negative and s.strip("0./") != "":
        s = "-" + s
    return s


def _strip_int(digits: str) -> str:
    return digits.lstrip("0") or "0"


def _numbers(text: str) -> list[str]:
    return [normalize_number((m.group(1) or "") + m.group(2)) for m in _NUMBER.finditer(text)]


def _answer_line_number(segment: str) -> str | None:
    """The number an answer marker points at: first on its line, or the one
    after the line's last "=" ("Answer: 3 + 5 = 8")."""
    line = segment.lstrip().split("\n", 1)[0]
    if "=" in line:
        after = _numbers(line.rsplit("=", 1)[1])
        if after:
            return after[0]
    found = _numbers(line)
    return found[0] if found else None


def _boxed_contents(text: str) -> list[tuple[int, str]]:
    """(position, content) of each \\boxed{...}, with nested braces balanced."""
    out = []
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append((m.start(), text[m.end():i - 1]))
    return out


def extract_number(text: str) -> str | None:
    """The final numeric answer, normalised; None when the text has no number."""
    # Every explicit answer marker, by position; the model's last statement wins.
    marked: list[tuple[int, str | None]] = []
    for pos, content in _boxed_contents(text):
        found = _numbers(_FRAC.sub(r"\1/\2", content))
        marked.append((pos, found[0] if found else None))
    for m in _HASHES.finditer(text):
        marked.append((m.start(), _answer_line_number(text[m.end():])))
    for m in _ANSWER_MARK.finditer(text):
        marked.append((m.start(), _answer_line_number(text[m.end():])))
    for _, value in sorted(marked, key=lambda pv: pv[0], reverse=True):
        if value is not None:
            return value
    found = _numbers(text)
    return found[-1] if found else None


# --- choice -----------------------------------------------------------------

def extract_choice(text: str) -> str | None:
    """A multiple-choice letter A-E, or None when the text names none or several."""
    explicit = _CHOICE_EXPLICIT.findall(text)
    if explicit:
        return explicit[-1]
    letters = set(_CHOICE_LONE.findall(text))
    # Several different letters is an echo of the options, not an answer.
    return letters.pop() if len(letters) == 1 else None


# --- code -------------------------------------------------------------------

def extract_code(text: str) -> str | None:
    """The last Python code block, or the text itself if it is Python code."""
    blocks = [body for tag, body in _FENCE.findall(text) if tag.lower() in _PYTHON_TAGS]
    if blocks:
        code = textwrap.dedent(blocks[-1]).strip("\n").rstrip()
        return code or None
    candidate = textwrap.dedent(text).strip("\n").rstrip()
    return candidate if _looks_like_code(candidate) else None


def _looks_like_code(text: str) -> bool:
    if not text:
        return False
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return False
    # A lone word or sentence fragment can parse as an expression; real code
    # has at least one statement or call.
    return any(not isinstance(node, ast.Expr) or isinstance(node.value, ast.Call)
               for node in tree.body)


# --- program ----------------------------------------------------------------

_WHOLE_NUMBER = re.compile(r"\s*-?\d+(?:\.\d+)?\s*")
PROGRAM_TIMEOUT_S = 2.0  # a generated answer program is a line of arithmetic, not a job


def program_text(text: str) -> str:
    """The program in a reply: its last Python code block, else the reply itself."""
    blocks = [body for tag, body in _FENCE.findall(text) if tag.lower() in _PYTHON_TAGS]
    return textwrap.dedent(blocks[-1] if blocks else text).strip()


def extract_programs(texts: Sequence[str]) -> list[str | None]:
    """Each text's answer by running it (the `program` preset). Samples often
    repeat a program, so each distinct one runs once."""
    programs = [program_text(t) for t in texts]
    distinct = sorted({p for p in programs if p})
    runs = dict(zip(distinct, run_many_python_programs(distinct, timeout_s=PROGRAM_TIMEOUT_S)))
    out: list[str | None] = []
    for p in programs:
        value = (runs[p].value if p else None) or ""
        if _WHOLE_NUMBER.fullmatch(value):
            value = normalize_number(value.strip())
        out.append(value.strip() or None)
    return out


# --- regex ------------------------------------------------------------------

def check_regex(pattern: str) -> str | None:
    """An error message if `pattern` is not a valid regular expression, else None."""
    try:
        _compile(pattern)
    except re.error as e:
        where = f" at position {e.pos}" if e.pos is not None else ""
        return f"invalid regular expression {pattern!r}: {e.msg}{where}"
    return None


@functools.lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def extract_regex(text: str, pattern: str) -> str | None:
    """First group (or whole match) of the last match of `pattern` in `text`."""
    problem = check_regex(pattern)
    if problem:
        raise UserError(problem)
    regex = _compile(pattern)
    for m in reversed(list(regex.finditer(text))):
        value = m.group(1) if regex.groups else m.group(0)
        if value is not None:  # an optional group that did not take part
            return value
    return None
