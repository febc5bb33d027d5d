"""Parse .tts source into the AST of `ttsc.dsl.ast`.

`parse` runs the LALR grammar in `tts.lark`, then a Transformer that builds the
AST and collects semantic mistakes (reserved words used as names, bad holes or
escapes, bad budget units) without raising inside Lark. Every mistake becomes a
`TTSError` with exact spans; no Lark exception or traceback escapes.

Text rules worth knowing:
- "..." strings decode the escapes \\n \\t \\r \\" \\\\ and \\uXXXX.
- \"\"\"...\"\"\" strings are raw (backslashes stay as written, handy for
  LaTeX and regexes); one newline right after the opening quotes is dropped
  and the common indentation is removed (`textwrap.dedent`).
- Prompt texts are templates in `str.format` syntax: `{name}` is a hole and
  `{{` / `}}` are literal braces (kept doubled in `PromptDef.user/system`, so
  `template.format_map(values)` renders them).
"""

from __future__ import annotations

import functools
import math
import os
import re
import textwrap
from dataclasses import dataclass
from typing import Iterator

from lark import Lark, Token, Transformer_NonRecursive, v_args
from lark.exceptions import UnexpectedInput, UnexpectedToken

from ttsc.common.errors import Diagnostic, Span, TTSError, UserError, did_you_mean, error
from ttsc.common.prompts import HOLE
from ttsc.dsl import ast

# Words that can never name a model, prompt, strategy, parameter or variable.
# `system`, `user` (prompt parts) and `per`, `input` (budget `per input`) are
# keywords only inside their phrases, so `input` stays a valid parameter name.
RESERVED_WORDS = frozenset({
    "model", "prompt", "strategy", "raw", "return", "repeat", "until", "budget",
    "auto", "true", "false", "and", "or", "not",
})
DEFINITION_WORDS = ("model", "prompt", "strategy", "budget", "raw")
MAX_NESTING = 100  # statement and expression depth inside a strategy

BUDGET_RESOURCES = ("tokens", "memory", "latency")
MEMORY_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
                "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
LATENCY_UNITS = {"ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}

_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}
_ESCAPE_HINT = 'valid escapes are \\n \\t \\r \\" \\\\ and \\uXXXX; """...""" strings keep backslashes as written'


# ------------------------------------------------------------------ the parser

class _Separators:
    """Post-lexer: drops line breaks inside ( ) and [ ] so calls and lists may
    span lines, and retypes a separator run that holds a `;` as _SEMI."""

    always_accept = ("_NL",)

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        depth = 0
        for tok in stream:
            if tok.type in ("LPAR", "LSQB"):
                depth += 1
            elif tok.type in ("RPAR", "RSQB"):
                depth = max(0, depth - 1)
            elif tok.type == "_NL":
                if ";" in re.sub(r"#[^\n]*", "", tok.value):
                    tok.type = "_SEMI"
                elif depth:
                    continue
            yield tok


@functools.cache
def _lark() -> Lark:
    return Lark.open("tts.lark", rel_to=__file__, parser="lalr", propagate_positions=True,
                     postlex=_Separators())


def parse(source: str, file: str = "<string>") -> ast.Module:
    """Parse .tts source; raises `TTSError` listing every mistake found."""
    source = source.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    try:
        tree = _lark().parse(source)
    except UnexpectedInput as err:
        raise TTSError([_syntax_error(err, source, file)], {file: source}) from None
    builder = _AstBuilder(file)
    definitions = builder.transform(tree)  # non-recursive, so deep nesting cannot overflow here
    for definition in definitions:
        if isinstance(definition, ast.StrategyDef):
            builder.diagnostics += _check_nesting(definition.body)
    if builder.diagnostics:
        ordered = sorted(builder.diagnostics, key=lambda d: (d.span.line, d.span.column) if d.span else (0, 0))
        raise TTSError(ordered, {file: source})
    return ast.Module(file=file, source=source, definitions=tuple(definitions))


def parse_file(path: str | os.PathLike) -> ast.Module:
    """Read and parse a .tts file; an unreadable file is a `UserError`."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            source = f.read()
    except FileNotFoundError:
        raise UserError(f"cannot read {os.fspath(path)}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"cannot read {os.fspath(path)}: it is a directory") from None
    except UnicodeDecodeError as err:
        raise UserError(f"cannot read {os.fspath(path)}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise UserError(f"cannot read {os.fspath(path)}: {err.strerror or err}") from None
    return parse(source, os.fspath(path))


# ------------------------------------------------------------- AST building

def _token_span(file: str, tok: Token) -> Span:
    return Span(file, tok.line, tok.column, tok.end_line, tok.end_column)


@v_args(meta=True)
class _AstBuilder(Transformer_NonRecursive):
    """Builds AST nodes; records mistakes in `diagnostics` instead of raising
    (an exception here would reach the caller wrapped in Lark's VisitError)."""

    def __init__(self, file: str):
        super().__init__(visit_tokens=False)
        self.file = file
        self.diagnostics: list[Diagnostic] = []

    def _span(self, meta) -> Span:
        return Span(self.file, meta.line, meta.column, meta.end_line, meta.end_column)

    def _tspan(self, tok: Token) -> Span:
        return _token_span(self.file, tok)

    def _error(self, message: str, span: Span, hint: str | None = None) -> None:
        self.diagnostics.append(error(message, span, hint))

    def _name(self, tok: Token) -> str:
        if tok.value in RESERVED_WORDS:
            self._error(f"`{tok.value}` is a reserved word and cannot be used as a name",
                        self._tspan(tok), f"choose another name, for example `{tok.value}_`")
        return tok.value

    # definitions
    def start(self, meta, definitions):
        return definitions

    def model_spec(self, meta, children):
        name, text = children
        spec, _ = _read_text(text, self.file, self.diagnostics, template=False)
        return ast.ModelDef(self._name(name), spec, None, self._tspan(name), self._tspan(text))

    def model_alias(self, meta, children):
        name, other = children
        return ast.ModelDef(self._name(name), None, self._name(other), self._tspan(name), self._tspan(other))

    def prompt_user(self, meta, children):
        raw, name, user = children
        return self._prompt(raw, name, None, user)

    def prompt_system(self, meta, children):
        raw, name, system, user = children
        return self._prompt(raw, name, system, user)

    def _prompt(self, raw, name, system, user) -> ast.PromptDef:
        holes: list[ast.Hole] = []
        system_text = None
        if system is not None:
            system_text, system_holes = _read_text(system, self.file, self.diagnostics, template=True)
            holes += system_holes
        user_text, user_holes = _read_text(user, self.file, self.diagnostics, template=True)
        return ast.PromptDef(self._name(name), user_text, system_text, raw is not None,
                             tuple(holes + user_holes), self._tspan(name))

    def strategy_def(self, meta, children):
        name, params, (body, rbrace) = children
        return ast.StrategyDef(self._name(name), tuple(params or ()), body, self._tspan(name), self._tspan(rbrace))

    def params(self, meta, names):
        seen: set[str] = set()
        params = []
        for tok in names:
            if tok.value in seen:
                self._error(f"parameter `{tok.value}` is listed twice", self._tspan(tok))
            seen.add(tok.value)
            params.append(ast.Param(self._name(tok), self._tspan(tok)))
        return params

    # statements
    def block(self, meta, children):
        *stmts, rbrace = children
        return tuple(stmts), rbrace

    def assign(self, meta, children):
        target, value = children
        return ast.Assign(self._name(target), value, self._tspan(target))

    def return_stmt(self, meta, children):
        keyword, value = children
        return ast.Return(value, self._tspan(keyword))

    def repeat_stmt(self, meta, children):
        keyword, count, until, (body, _) = children
        return ast.Repeat(count, until, body, self._tspan(keyword))

    # expressions
    def or_op(self, meta, children):
        return ast.BoolOp("or", children[0], children[1], self._span(meta))

    def and_op(self, meta, children):
        return ast.BoolOp("and", children[0], children[1], self._span(meta))

    def not_op(self, meta, children):
        return ast.Not(children[0], self._span(meta))

    def compare(self, meta, children):
        left, op, right = children
        return ast.Compare(op.value, left, right, self._span(meta))

    def add(self, meta, children):
        return ast.BinOp("+", children[0], children[1], self._span(meta))

    def name(self, meta, children):
        (tok,) = children
        return ast.Name(self._name(tok), self._tspan(tok))

    def number(self, meta, children):
        (tok,) = children
        text = tok.value
        if not any(c in text for c in ".eE"):
            return ast.Number(int(text), self._tspan(tok))
        value = float(text)
        if not math.isfinite(value):
            self._error(f"number `{text}` is too large", self._tspan(tok))
        return ast.Number(value, self._tspan(tok))

    def string(self, meta, children):
        (tok,) = children
        value, _ = _read_text(tok, self.file, self.diagnostics, template=False)
        return ast.String(value, self._tspan(tok))

    def true(self, meta, children):
        return ast.Bool(True, self._span(meta))

    def false(self, meta, children):
        return ast.Bool(False, self._span(meta))

    def auto(self, meta, children):
        return ast.Auto(self._span(meta))

    def list_expr(self, meta, items):
        return ast.ListExpr(tuple(item for item in items if item is not None), self._span(meta))

    def keyword(self, meta, children):
        name, value = children
        return ast.Keyword(self._name(name), value, self._tspan(name))

    def arguments(self, meta, items):
        return items

    def call(self, meta, children):
        func, arguments = children
        args, kwargs = [], []
        for item in arguments or ():
            if isinstance(item, ast.Keyword):
                if any(k.name == item.name for k in kwargs):
                    self._error(f"keyword argument `{item.name}` is given twice", item.span)
                kwargs.append(item)
            else:
                if kwargs:
                    self._error("positional argument after a keyword argument", item.span,
                                f"put positional arguments first: `{func.value}(a, b, key=value)`")
                args.append(item)
        return ast.Call(self._name(func), tuple(args), tuple(kwargs), self._span(meta), self._tspan(func))

    # budget
    def budget_def(self, meta, children):
        keyword, *items = children
        kept: list[ast.BudgetItem] = []
        for item in items:
            if item is None:
                continue
            twin = next((k for k in kept if (k.resource, k.per_input) == (item.resource, item.per_input)), None)
            if twin is not None:
                scope = " per input" if item.per_input else ""
                self._error(f"`{item.resource}{scope}` is limited twice in this budget "
                            f"(first on line {twin.span.line})", item.span)
            kept.append(item)
        return ast.BudgetDef(tuple(kept), self._tspan(keyword))

    def budget_item(self, meta, children):
        resource, op, number, unit, per = children
        if resource.value not in BUDGET_RESOURCES:
            self._error(f"unknown budget resource `{resource.value}`; use tokens, memory or latency",
                        self._tspan(resource), did_you_mean(resource.value, BUDGET_RESOURCES))
            return None
        if op.value != "<=":
            self._error(f"a budget line takes `<=` only, not `{op.value}`", self._tspan(op),
                        "budgets are upper limits, e.g. `tokens <= 4000 per input`")
        value = float(number.value)
        total = resource.value == "tokens" and unit is not None and unit.value == "total"
        if total and per is not None:
            self._error("a token budget is either `total` or `per input`, not both", self._tspan(unit))
        scale = self._unit_scale(resource.value, number, None if total else unit)
        if not math.isfinite(value) or value <= 0:
            self._error(f"a budget limit must be a positive number, not `{number.value}`", self._tspan(number))
        elif resource.value == "tokens" and not value.is_integer():
            self._error(f"a token budget must be a whole number, not `{number.value}`", self._tspan(number))
        return ast.BudgetItem(resource.value, value * scale, per is not None, self._span(meta), total)

    def _unit_scale(self, resource: str, number: Token, unit: Token | None) -> float:
        if unit is not None and unit.value.lower() in ("per_input", "perinput"):
            self._error(f"unexpected `{unit.value}`", self._tspan(unit), "write `per input` as two words")
            return 1.0
        if resource == "tokens":
            if unit is not None:
                self._error(f"`tokens` is a count and takes no unit, but found `{unit.value}`", self._tspan(unit),
                            "write e.g. `tokens <= 4000 per input`")
            return 1.0
        units = MEMORY_UNITS if resource == "memory" else LATENCY_UNITS
        listed = ", ".join(units)
        if unit is None:
            self._error(f"`{resource}` needs a unit after the number: one of {listed}", self._tspan(number))
            return 1.0
        if unit.value not in units:
            self._error(f"`{unit.value}` is not a {resource} unit; use one of {listed}", self._tspan(unit),
                        did_you_mean(unit.value, units))
            return 1.0
        return float(units[unit.value])


def _check_nesting(body: tuple[ast.Stmt, ...]) -> list[Diagnostic]:
    """An error when statements and expressions nest deeper than MAX_NESTING:
    later passes walk the AST recursively, and no real strategy comes close."""
    stack: list[tuple[object, int]] = [(stmt, 1) for stmt in body]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            return [error(f"this is nested too deeply (more than {MAX_NESTING} levels)", node.span,
                          "split it into several assignments")]
        stack += [(child, depth + 1) for child in _children(node)]
    return []


def _children(node: object) -> tuple:
    if isinstance(node, (ast.Assign, ast.Return)):
        return (node.value,)
    if isinstance(node, ast.Repeat):
        return (node.count, *((node.until,) if node.until is not None else ()), *node.body)
    if isinstance(node, ast.ListExpr):
        return node.items
    if isinstance(node, ast.Call):
        return (*node.args, *(k.value for k in node.kwargs))
    if isinstance(node, (ast.BinOp, ast.Compare, ast.BoolOp)):
        return (node.left, node.right)
    if isinstance(node, ast.Not):
        return (node.operand,)
    return ()


# ------------------------------------------------------------ string texts

def _read_text(tok: Token, file: str, diagnostics: list[Diagnostic], *,
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


# ----------------------------------------------------------- syntax errors

_EXPRESSION_STARTS = frozenset({"NAME", "NUMBER", "STRING", "LONG_STRING", "LPAR", "LSQB",
                                "TRUE", "FALSE", "AUTO", "NOT"})
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


def _syntax_error(err: UnexpectedInput, source: str, file: str) -> Diagnostic:
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
        span = _token_span(file, tok)

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
                         _token_span(file, prev))
    if (tok.type == "EQUAL" and prev is not None and prev.value in RESERVED_WORDS and prev.type != "NAME"
            and (before_prev is None or before_prev.type in ("LPAR", "COMMA", "LBRACE", "_NL", "_SEMI"))):
        return error(f"`{prev.value}` is a reserved word and cannot be used as a name", _token_span(file, prev),
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
        return list(_lark().lex(source[:offset]))
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
        pattern = _lark().get_terminal(terminal).pattern
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
