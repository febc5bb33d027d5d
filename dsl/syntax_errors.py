"""Syntax errors in words: what was expected, where, and the likely mistake.

Lark reports an unexpected token or character with the terminals it could
have taken. `syntax_error` turns that into one diagnostic a person can act
on: an unclosed string or bracket is reported where it opens, common slips
(`=` for `==`, chained comparisons, a reserved word as a name, a strategy
without parameters) get their own message, and otherwise the expected
terminals are summarized in a few words ("an expression", "`,` or `)`").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lark import Token
from lark.exceptions import UnexpectedInput, UnexpectedToken

from ttsc.common.errors import Diagnostic, Span, did_you_mean, error
from ttsc.dsl.grammar import DEFINITION_WORDS, RESERVED_WORDS, lark, token_span

_EXPRESSION_STARTS = frozenset({"NAME", "NUMBER", "STRING", "LONG_STRING", "LPAR", "LSQB",
                                "TRUE", "FALSE", "AUTO", "NONE", "NOT"})
_DEFINITION_STARTS = frozenset({"MODEL", "PROMPT", "STRATEGY", "RAW", "BUDGET"})
# Tokens that could extend what came before; listing them drowns the real choice.
_CONTINUATIONS = frozenset({"PLUS", "COMP", "AND", "OR", "LPAR", "EQUAL"})
_WORDS = {"NAME": "a name", "NUMBER": "a number", "STRING": "a string", "LONG_STRING": "a string",
          "COMP": "a comparison", "_NL": "end of line", "_SEMI": "end of line", "$END": "end of file"}
_ORDER = ["NAME", "NUMBER", "STRING", "LONG_STRING", "EQUAL", "COMMA", "RPAR", "RSQB", "_NL", "_SEMI",
          "RBRACE", "LPAR", "LSQB", "LBRACE", "COMP", "PLUS", "$END"]
_CLOSERS = {"(": ")", "[": "]", "{": "}"}
_OPENERS = {close: open_ for open_, close in _CLOSERS.items()}
_STRAY_HINTS = {
    "'": 'strings use double quotes: "..."',
    "`": 'strings use double quotes: "..."',
    "-": "`-` only starts a negative number such as -1; there is no subtraction",
    "*": "the only operator on values is `+`",
    "/": "the only operator on values is `+`",
    "%": "the only operator on values is `+`",
    "!": "write `not x` to negate and `!=` to compare",
    "&": "write `and`",
    "|": "write `or`",
    ":": "blocks use braces: `repeat 3 { ... }`",
    ".": "there are no attributes or methods; call a function instead, e.g. `extract(samples, number)`",
    "\\": "backslashes are only allowed inside strings",
}


@dataclass(frozen=True)
class _Delimiters:
    """What a quick scan of the source (skipping strings and comments) finds."""

    unclosed_string: tuple[int, bool] | None  # (offset, triple-quoted)
    unmatched: tuple[tuple[int, str], ...]  # openers never closed, by offset
    stray_closers: frozenset[int]  # offsets of closers with no opener at all

    def open_at(self, offset: int) -> tuple[int, str] | None:
        """The innermost unmatched opener before `offset`."""
        before = [o for o in self.unmatched if o[0] < offset]
        return before[-1] if before else None


def _scan_delimiters(source: str) -> _Delimiters:
    stack: list[tuple[int, str]] = []
    unmatched: list[tuple[int, str]] = []
    stray: set[int] = set()
    n = len(source)
    i = 0
    while i < n:
        c = source[i]
        if c == "#":
            end = source.find("\n", i)
            i = n if end < 0 else end
            continue
        if c == '"':
            if source.startswith('"""', i):
                end = source.find('"""', i + 3)
                if end < 0:
                    return _Delimiters((i, True), tuple(sorted(unmatched + stack)), frozenset(stray))
                i = end + 3
                continue
            j = i + 1
            while j < n and source[j] not in '"\n':
                j += 2 if source[j] == "\\" and j + 1 < n and source[j + 1] != "\n" else 1
            if j >= n or source[j] != '"':
                return _Delimiters((i, False), tuple(sorted(unmatched + stack)), frozenset(stray))
            i = j + 1
            continue
        if c in _CLOSERS:
            stack.append((i, c))
        elif c in _CLOSERS.values():
            opener = next((k for k in range(len(stack) - 1, -1, -1) if _CLOSERS[stack[k][1]] == c), None)
            if opener is None:
                stray.add(i)
            else:  # openers skipped over were never closed
                unmatched += stack[opener + 1:]
                del stack[opener:]
        i += 1
    return _Delimiters(None, tuple(sorted(unmatched + stack)), frozenset(stray))


def _line_col(source: str, offset: int) -> tuple[int, int]:
    line = source.count("\n", 0, offset) + 1
    return line, offset - (source.rfind("\n", 0, offset) + 1) + 1


def _offset_span(file: str, source: str, offset: int, width: int = 1) -> Span:
    line, column = _line_col(source, offset)
    return Span(file, line, column, line, column + width)


def _block_name(source: str, offset: int) -> str:
    before = source[:offset]
    strategy = re.search(r"\bstrategy\s+([A-Za-z_]\w*)\s*\([^()]*\)\s*$", before)
    if strategy:
        return f"strategy `{strategy[1]}`"
    if re.search(r"\bbudget\s*$", before):
        return "the budget block"
    if re.search(r"\brepeat\b[^{};]*$", before):
        return "the `repeat` block"
    return "this block"


def syntax_error(err: UnexpectedInput, source: str, file: str) -> Diagnostic:
    if isinstance(err, UnexpectedToken):
        offset = len(source) if err.token.type == "$END" else err.token.start_pos
    else:
        offset = err.pos_in_stream
    delimiters = _scan_delimiters(source)
    if delimiters.unclosed_string is not None and delimiters.unclosed_string[0] <= offset:
        start, triple = delimiters.unclosed_string
        if triple:
            return error('unclosed triple-quoted string: no closing `"""`', _offset_span(file, source, start, 3),
                         "everything after these quotes, to the end of the file, is inside the string")
        return error('unclosed string: missing the closing `"`', _offset_span(file, source, start),
                     'a "..." string ends on its line; use """...""" for text over several lines')
    if isinstance(err, UnexpectedToken):
        return _unexpected_token(err, source, file, delimiters)
    char = source[offset] if offset < len(source) else ""
    shown = f"`{char}`" if char.isprintable() and char.strip() else f"U+{ord(char):04X}" if char else "end of file"
    hint = _STRAY_HINTS.get(char) or ("names use ASCII letters, digits and `_`" if char.isalpha() else None)
    return error(f"unexpected character {shown}", _offset_span(file, source, offset), hint)


def _unexpected_token(err: UnexpectedToken, source: str, file: str, delimiters: _Delimiters) -> Diagnostic:
    tok = err.token
    expected = _accepted(err)
    at_end = tok.type == "$END"
    offset = len(source) if at_end else tok.start_pos
    found = _describe_found(tok)
    history = _tokens_before(source, offset)
    prev = history[-1] if history else None
    before_prev = history[-2] if len(history) >= 2 else None
    open_bracket = delimiters.open_at(offset)
    if at_end:
        span = _end_span(file, source)
    elif tok.type in ("_NL", "_SEMI"):  # a separator run may span lines; point at its first character
        span = _offset_span(file, source, tok.start_pos)
    else:
        span = token_span(file, tok)

    if open_bracket is not None:
        start, char = open_bracket
        closer = _CLOSERS[char]
        if char != "{" and (at_end or f"`{closer}`" in {_describe(t) for t in expected}):
            where = "the end of the file" if at_end else f"{found} on line {tok.line}"
            return error(f"this `{char}` is not closed: expected `{closer}` before {where}",
                         _offset_span(file, source, start))
        if char == "{" and at_end:
            return error(f"{_block_name(source, start)} is not closed: expected `}}` before the end of the file",
                         _offset_span(file, source, start))
        if char == "{" and prev is not None and prev.value in DEFINITION_WORDS:
            return error(f"{_block_name(source, start)} is not closed: expected `}}` before this `{prev.value}`",
                         token_span(file, prev))
    if (tok.type == "EQUAL" and prev is not None and prev.value in RESERVED_WORDS and prev.type != "NAME"
            and (before_prev is None or before_prev.type in ("LPAR", "COMMA", "LBRACE", "_NL", "_SEMI"))):
        return error(f"`{prev.value}` is a reserved word and cannot be used as a name", token_span(file, prev),
                     f"choose another name, for example `{prev.value}_`")
    if tok.type == "EQUAL" and "COMP" in expected and "PLUS" in expected:
        return error("`=` assigns a name; to compare two values use `==`", span)
    if tok.type == "COMP" and "COMP" not in expected and _follows_comparison(err):
        return error(f"unexpected `{tok.value}`: comparisons cannot be chained", span,
                     "combine comparisons with `and`, e.g. `a < b and b < c`")
    if expected == {"COMP"}:  # only a budget line wants exactly a comparison
        return error(f"unexpected {found}; expected `<=`", span, "a budget line reads `tokens <= 4000 per input`")
    if (tok.type == "LBRACE" and expected == {"LPAR"}
            and before_prev is not None and before_prev.type == "STRATEGY"):
        return error(f"strategy `{prev.value}` needs a parameter list", span,
                     f"write `strategy {prev.value}(question) {{`, or `strategy {prev.value}() {{` for none")

    if tok.type in ("RPAR", "RSQB", "RBRACE") and tok.start_pos in delimiters.stray_closers:
        return error(f"this `{tok.value}` closes nothing: there is no `{_OPENERS[tok.value]}` before it", span)

    hint = None
    if expected == {"USER"}:
        hint = 'a prompt with a system part reads `prompt p = system "..." user "..."`'
    elif tok.type == "NAME" and expected & _DEFINITION_STARTS:
        hint = did_you_mean(tok.value, DEFINITION_WORDS) or (
            "statements belong inside a strategy: `strategy name(question) { ... }`")
    elif expected == {"EQUAL"} and prev is not None and prev.type == "NAME":
        hint = did_you_mean(prev.value, ("return", "repeat"))
    return error(f"unexpected {found}; expected {_summarize(expected)}", span, hint)


def _accepted(err: UnexpectedToken) -> set[str]:
    """Terminals the parser could take here: `accepts()` replays each one, so
    it drops LALR's merged look-aheads that would fail after reductions."""
    if err.interactive_parser is not None:
        return set(err.interactive_parser.accepts())
    return set(err.expected)


def _follows_comparison(err: UnexpectedToken) -> bool:
    stack = err.interactive_parser.parser_state.value_stack if err.interactive_parser else []
    return any(isinstance(v, Token) and v.type == "COMP" for v in stack[-3:])


def _tokens_before(source: str, offset: int) -> list[Token]:
    """Tokens before `offset`, lexed context-free (keywords as keywords)."""
    try:
        return list(lark().lex(source[:offset]))
    except UnexpectedInput:
        return []


def _end_span(file: str, source: str) -> Span:
    """Just after the last visible character: where more text was expected."""
    end = len(source.rstrip())
    return _offset_span(file, source, end)


def _describe_found(tok: Token) -> str:
    kind, value = tok.type, tok.value
    if kind == "NAME":
        return f"name `{value}`"
    if kind == "NUMBER":
        return f"number `{value}`"
    if kind == "STRING":
        return f"string {value}" if len(value) <= 24 else "string"
    if kind == "LONG_STRING":
        return "triple-quoted string"
    if kind == "_NL":
        return "end of line"
    if kind == "_SEMI":
        return "`;`"
    if kind == "$END":
        return "end of file"
    return f"`{value}`"


def _describe(terminal: str) -> str:
    if terminal in _WORDS:
        return _WORDS[terminal]
    try:
        pattern = lark().get_terminal(terminal).pattern
    except KeyError:
        return terminal.lower()
    return f"`{pattern.value}`"


def _summarize(expected: set[str]) -> str:
    """Expected terminals in a few human words, e.g. "`,` or `)`"."""
    rest = set(expected)
    words: list[str] = []
    if len(rest & _EXPRESSION_STARTS) >= 5:
        words.append("an expression")
        rest -= _EXPRESSION_STARTS
    if len(rest & _DEFINITION_STARTS) >= 3:
        words.append("a definition (`model`, `prompt`, `strategy` or `budget`)")
        rest -= _DEFINITION_STARTS | {"_NL", "_SEMI", "$END"}
    if (rest - _CONTINUATIONS) or words:
        rest -= _CONTINUATIONS
    if "_NL" in rest:
        rest.discard("$END")
    ranked = sorted(rest, key=lambda t: (_ORDER.index(t) if t in _ORDER else len(_ORDER), t))
    for terminal in ranked:
        word = _describe(terminal)
        if word not in words:
            words.append(word)
    if not words:
        return "nothing more"
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]
