"""String literals of .tts files: reading them, with exact spans.

- "..." strings decode the escapes \\n \\t \\r \\" \\\\ and \\uXXXX.
- \"\"\"...\"\"\" strings are raw (backslashes stay as written, handy for
  LaTeX and regexes); one newline right after the opening quotes is dropped
  and the common indentation is removed (`textwrap.dedent`).
- Prompt texts are templates in `str.format` syntax: `{name}` is a hole and
  `{{` / `}}` are literal braces (kept doubled in `PromptDef.user/system`, so
  `template.format_map(values)` renders them).
"""

from __future__ import annotations

import textwrap

from lark import Token

from ttsc.common.errors import Diagnostic, Span, error
from ttsc.common.prompts import HOLE
from ttsc.dsl import ast

_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}
_ESCAPE_HINT = 'valid escapes are \\n \\t \\r \\" \\\\ and \\uXXXX; """...""" strings keep backslashes as written'


def read_text(tok: Token, file: str, diagnostics: list[Diagnostic], *,
              template: bool) -> tuple[str, list[ast.Hole]]:
    """The value of a STRING / LONG_STRING token and, for prompt templates, its
    holes. Walks the raw source text so every span points into the file."""
    triple = tok.type == "LONG_STRING"
    quotes = 3 if triple else 1
    body = tok.value[quotes:-quotes]
    line, column = tok.line, tok.column + quotes
    out: list[str] = []
    holes: list[ast.Hole] = []

    def report(message: str, width: int, hint: str | None = None) -> None:
        diagnostics.append(error(message, Span(file, line, column, line, column + width), hint))

    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\" and not triple:
            decoded, width, problem = _decode_escape(body, i)
            if problem:
                report(problem, width, _ESCAPE_HINT)
            # An escaped brace is a literal brace, never the start of a hole.
            out.append(decoded * 2 if template and decoded in ("{", "}") else decoded)
        elif template and c == "{" and body.startswith("{{", i):
            out.append("{{")
            width = 2
        elif template and c == "{":
            hole = HOLE.match(body, i)
            if hole:
                holes.append(ast.Hole(hole[1], Span(file, line, column, line, column + len(hole[0]))))
                out.append(hole[0])
                width = len(hole[0])
            else:
                width = _report_bad_hole(body, i, report)
                out.append(body[i:i + width].replace("{", "{{").replace("}", "}}"))
        elif template and c == "}":
            if body.startswith("}}", i):
                out.append("}}")
                width = 2
            else:
                report("a single `}` in prompt text", 1, "write `}}` for a literal `}`")
                out.append("}}")
                width = 1
        else:
            out.append(c)
            width = 1
        for ch in body[i:i + width]:
            line, column = (line + 1, 1) if ch == "\n" else (line, column + 1)
        i += width
    text = "".join(out)
    if triple:
        text = textwrap.dedent(text[1:] if text.startswith("\n") else text)
    return text, holes


def _report_bad_hole(body: str, i: int, report) -> int:
    """Reports the `{` at body[i] that starts no valid hole; returns how much
    text the report covers, so one mistake gives one diagnostic."""
    close = body.find("}", i)
    newline = body.find("\n", i)
    if close < 0 or (0 <= newline < close) or "{" in body[i + 1:close]:
        report("unclosed hole: this `{` has no matching `}`", 1,
               "a hole is a name in braces like {question}; write `{{` for a literal `{`")
        return 1
    inner = body[i:close + 1]
    shown = inner if len(inner) <= 30 else inner[:27] + "..."
    report(f"a hole must be a name like {{question}}, not `{shown}`", close + 1 - i,
           "write `{{` and `}}` for literal braces")
    return close + 1 - i


def _decode_escape(body: str, i: int) -> tuple[str, int, str | None]:
    """(decoded text, source width, problem or None) for the escape at body[i]."""
    kind = body[i + 1]  # the STRING terminal guarantees a character after `\`
    if kind in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[kind], 2, None
    if kind == "u":
        digits = body[i + 2:i + 6]
        if len(digits) == 4 and all(d in "0123456789abcdefABCDEF" for d in digits):
            code = int(digits, 16)
            if 0xD800 <= code <= 0xDFFF:
                return "", 6, f"`\\u{digits}` is a surrogate code point, not a character"
            return chr(code), 6, None
        return "", 2, "`\\u` needs exactly four hex digits, e.g. `\\u00e9`"
    return "", 2, f"unknown escape `\\{kind}`"


# ------------------------------------------------------------- writing them

_WRITE_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def quote(value: str, *, block: bool = False) -> str:
    """A string literal that reads back as `value` (the inverse of `read_text`,
    for prompt templates too: their braces are written as they are kept).
    With `block`, multi-line text is written raw and triple-quoted where that
    reads back exactly; anything else as a "..." string with escapes."""
    if block and "\n" in value and _triple_reads_back(value):
        return '"""\n' + value + '"""'
    out = []
    for c in value:
        if c in _WRITE_ESCAPES:
            out.append(_WRITE_ESCAPES[c])
        elif (ord(c) < 0x20 or ord(c) == 0x7F or not c.isprintable()) and ord(c) <= 0xFFFF:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _triple_reads_back(value: str) -> bool:
    # The leading newline written before the text is dropped on reading, then
    # the text is dedented: it must have no common indentation of its own.
    return ('"""' not in value and not value.endswith('"') and "\r" not in value
            and textwrap.dedent(value) == value)
