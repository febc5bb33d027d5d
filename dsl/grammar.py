"""The grammar of .tts files, loaded once, and the words it reserves.

`lark()` is the LALR parser of `tts.lark` with a post-lexer that lets calls
and lists span lines. The parser builds ASTs with it; the syntax-error
diagnosis re-lexes the text before a mistake with it.
"""

from __future__ import annotations

import functools
import re
from typing import Iterator

from lark import Lark, Token

from ttsc.common.errors import Span

# Words that can never name a model, prompt, strategy, parameter or variable.
# `system`, `user` (prompt parts) and `per`, `input` (budget `per input`) are
# keywords only inside their phrases, so `input` stays a valid parameter name.
RESERVED_WORDS = frozenset({
    "model", "prompt", "strategy", "raw", "return", "repeat", "until", "budget",
    "auto", "none", "true", "false", "and", "or", "not",
})
DEFINITION_WORDS = ("model", "prompt", "strategy", "budget", "raw")


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
def lark() -> Lark:
    return Lark.open("tts.lark", rel_to=__file__, parser="lalr", propagate_positions=True,
                     postlex=_Separators())


def token_span(file: str, tok: Token) -> Span:
    return Span(file, tok.line, tok.column, tok.end_line, tok.end_column)
