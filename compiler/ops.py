"""The op vocabulary of ttsc: value types, and the signature of every op.

One table says, for each op a strategy can call, which arguments it takes
(positional order, kinds, types, defaults) and what it returns. Sampling
settings take their defaults from `common.sampling.SETTINGS`; the op rules
that differ (critique and rank read at temperature 0, with their own token
limits) are written here, once. The builder checks calls against the table
and fills unset settings from it, so every plan node carries its settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ttsc.common.sampling import SETTINGS


class T(str, Enum):
    """Value types flowing along IR edges."""

    TEXT = "text"
    CANDIDATES = "candidates"  # a list of generated texts with provenance
    ANSWERS = "answers"  # a list of extracted answers (None where none was found)
    SCORES = "scores"  # a list of floats aligned with candidates
    NUMBER = "number"
    BOOL = "bool"
    LOOP = "loop"  # the bundle a repeat region yields; read with loop_out


class Kind(str, Enum):
    """How an argument is given in source."""

    VALUE = "value"  # an expression producing a typed value (an IR edge)
    MODEL = "model"  # a model name, or choice(...) / auto over model names
    PROMPT = "prompt"  # a prompt name
    EXTRACTOR = "extractor"  # number | choice | code | program | regex("...")
    CONST = "const"  # a compile-time constant (number, string, list, auto, range, choice)
    AGG = "agg"  # a name from the argument's `names` (min | last | prod for score)


@dataclass(frozen=True)
class Arg:
    name: str
    kind: Kind
    types: tuple[T, ...] = ()  # accepted value types (VALUE) or constant types
    required: bool = True
    default: Any = None
    positional: bool = True  # may be given by position
    names: tuple[str, ...] = ()  # the names a Kind.AGG argument accepts


@dataclass(frozen=True)
class OpSig:
    name: str
    args: tuple[Arg, ...]
    result: T
    is_llm: bool
    doc: str
    # Groups of arguments of which exactly one must be given (top: k or keep).
    one_of: tuple[tuple[str, ...], ...] = ()
    # (a, b): argument a needs argument b (top: groups= keeps k= per subtree).
    needs: tuple[tuple[str, str], ...] = ()

    def arg(self, name: str) -> Arg | None:
        return next((a for a in self.args if a.name == name), None)

    @property
    def positional(self) -> tuple[Arg, ...]:
        return tuple(a for a in self.args if a.positional)


def setting(name: str, default: Any = None) -> Arg:
    """A keyword-only sampling setting; its default is the table's
    (common/sampling.py) unless an op rule gives its own."""
    return Arg(name, Kind.CONST, (T.NUMBER,), False,
               SETTINGS[name].default if default is None else default, False)


EXTRACTORS = ("number", "choice", "code", "program", "regex")
AGGS = ("min", "last", "prod")  # how `score` aggregates its step scores
CONFIDENCE_AGGS = ("mean", "min", "tail")  # how `confidence` aggregates token logprobs

CANDS = (T.CANDIDATES,)
SAMPLING = (
    setting("temperature"), setting("max_tokens"), setting("top_p"), setting("top_k"),
    Arg("stop", Kind.CONST, (T.TEXT,), False, None, False), setting("seed"),
)
N = setting("n")
# Op rules: judges read deterministically and briefly.
CRITIQUE_SAMPLING = (setting("temperature", 0.0), setting("max_tokens", 128))
RANK_SAMPLING = (setting("temperature", 0.0), setting("max_tokens", 64))
MODEL = Arg("model", Kind.MODEL)

# -- search ops (particle filtering, DVTS, first-finish search, budget forcing)
# Kept together so they read as one block beside the other ops.
RESAMPLE_WEIGHS = ("odds", "linear")  # how `resample` turns scores into weights
# generate(..., first=k): keep the k samples that finish first (FFS); the
# paged engine stops the others, other engines keep the k shortest.
FIRST = setting("first")
# extend(..., force="Wait,"): budget forcing (s1), a text put after each candidate.
FORCE = Arg("force", Kind.CONST, (T.TEXT,), False, None, False)
# top(..., groups=G): DVTS, the k best of each of G subtrees.
GROUPS = setting("groups")
SEARCH_OPS = (
    OpSig("resample", (Arg("candidates", Kind.VALUE, CANDS),
                       Arg("by", Kind.VALUE, (T.SCORES,), True, None, False),
                       Arg("k", Kind.CONST, (T.NUMBER,), True, None, False),
                       Arg("weigh", Kind.AGG, (), False, "odds", False, RESAMPLE_WEIGHS),
                       setting("seed")), T.CANDIDATES, False,
          "draw k candidates with replacement, each with probability from its score: "
          "odds (softmax of the scores' logits, s/(1-s) normalized) or linear (s normalized)"),
)
OPT_PROMPT = Arg("prompt", Kind.PROMPT, required=False)

SIGNATURES: dict[str, OpSig] = {s.name: s for s in [
    OpSig("generate", (MODEL, Arg("prompt", Kind.PROMPT), N, *SAMPLING, FIRST), T.CANDIDATES, True,
          "sample n completions of a prompt; first=k keeps the k that finish first"),
    OpSig("extend", (MODEL, Arg("candidates", Kind.VALUE, CANDS), N, *SAMPLING, FORCE), T.CANDIDATES,
          True, "continue each unfinished candidate with n continuations; force=\"Wait,\" "
          "continues every candidate, finished or not, after that text"),
    OpSig("extract", (Arg("candidates", Kind.VALUE, CANDS), Arg("how", Kind.EXTRACTOR)), T.ANSWERS,
          False, "pull an answer out of each candidate: number, choice, code, program (run it, "
          "read its answer) or regex(\"...\")"),
    OpSig("vote", (Arg("answers", Kind.VALUE, (T.ANSWERS,)),
                   Arg("weights", Kind.VALUE, (T.SCORES,), False, None, False)), T.TEXT, False,
          "the most frequent answer (weighted by `weights` if given); ties go to the first seen"),
    OpSig("verify", (MODEL, Arg("candidates", Kind.VALUE, CANDS), OPT_PROMPT), T.SCORES, True,
          "P(Yes) of an LLM judge for each candidate, read from next-token log-probabilities"),
    OpSig("score", (MODEL, Arg("candidates", Kind.VALUE, CANDS), OPT_PROMPT,
                    Arg("agg", Kind.AGG, (), False, "min", False, AGGS)), T.SCORES, True,
          "step-level scores (P(Yes) after each step), aggregated by min, last or prod"),
    OpSig("best", (Arg("candidates", Kind.VALUE, (T.CANDIDATES, T.ANSWERS)),
                   Arg("by", Kind.VALUE, (T.SCORES,), True, None, False)), T.TEXT, False,
          "the candidate with the highest score"),
    OpSig("top", (Arg("candidates", Kind.VALUE, CANDS), Arg("by", Kind.VALUE, (T.SCORES,), True, None, False),
                  Arg("k", Kind.CONST, (T.NUMBER,), False, None, False),
                  Arg("distinct", Kind.CONST, (T.BOOL,), False, False, False),
                  Arg("keep", Kind.CONST, (T.NUMBER,), False, None, False), GROUPS), T.CANDIDATES, False,
          "the k highest-scoring candidates (or the best `keep` share of them), best first; "
          "distinct=true keeps identical ones once; groups=G keeps the k best of each of G "
          "independent subtrees", one_of=(("k", "keep"),), needs=(("groups", "k"),)),
    OpSig("confidence", (Arg("candidates", Kind.VALUE, CANDS),
                         Arg("agg", Kind.AGG, (), False, "mean", False, CONFIDENCE_AGGS),
                         setting("window")), T.SCORES, False,
          "how sure the model was of each candidate, from its own token log-probabilities: "
          "exp of the mean (mean), of the lowest window (min) or of the last window (tail)"),
    OpSig("rank", (MODEL, Arg("candidates", Kind.VALUE, CANDS), OPT_PROMPT, setting("k"),
                   *RANK_SAMPLING), T.CANDIDATES, True,
          "listwise LLM ranking; keeps the top k if given"),
    OpSig("critique", (MODEL, Arg("candidates", Kind.VALUE, CANDS), OPT_PROMPT, *CRITIQUE_SAMPLING),
          T.CANDIDATES, True, "one critique per candidate (strengths and weaknesses)"),
    OpSig("fuse", (MODEL, Arg("candidates", Kind.VALUE, CANDS),
                   Arg("critiques", Kind.VALUE, CANDS, False, None, False), OPT_PROMPT, N, *SAMPLING),
          T.CANDIDATES, True, "synthesize n new answers from the candidates (and their critiques)"),
    OpSig("refine", (MODEL, Arg("candidates", Kind.VALUE, CANDS),
                     Arg("critiques", Kind.VALUE, CANDS, False, None, False), OPT_PROMPT, *SAMPLING),
          T.CANDIDATES, True, "rewrite each candidate in the light of its critique"),
    OpSig("unit_tests", (MODEL, OPT_PROMPT, N, *SAMPLING), T.CANDIDATES, True,
          "write n sets of Python assert statements for the question"),
    OpSig("run_tests", (Arg("candidates", Kind.VALUE, CANDS), Arg("tests", Kind.VALUE, CANDS)), T.SCORES,
          False, "fraction of the tests each candidate's code passes, in a sandbox"),
    *SEARCH_OPS,
    OpSig("agreement", (Arg("answers", Kind.VALUE, (T.ANSWERS,)),), T.NUMBER, False,
          "share of answers equal to the most frequent one"),
    OpSig("all_done", (Arg("candidates", Kind.VALUE, CANDS),), T.BOOL, False,
          "true when every candidate has finished (end of sequence, or an empty step)"),
    # ---- the strategy library's judging and debating ops (knockout, debate)
    OpSig("knockout", (MODEL, Arg("candidates", Kind.VALUE, CANDS), OPT_PROMPT), T.TEXT, True,
          "a knockout tournament: pairs compared by the judge's next-token P(A) vs P(B), "
          "both orders, winners advance round by round; the last one standing"),
    OpSig("debate", (MODEL, Arg("candidates", Kind.VALUE, CANDS), OPT_PROMPT, *SAMPLING), T.CANDIDATES,
          True, "one debate round: each candidate (an agent's answer) is revised after reading "
          "the other agents' answers"),
]}


def keep_count(keep: Any, m: int) -> int:
    """How many of m candidates `top(keep=share)` keeps: the share rounded up,
    at least one (read by the runtime's `top` and the compiler's counts)."""
    if not isinstance(keep, (int, float)):  # a knob not solved yet: all of them, at most
        return m
    return min(m, max(1, math.ceil(keep * m - 1e-9))) if m else 0
