"""What each op does at run time.

Host ops are plain functions of their input values for one input. LLM ops are
split in two halves so that the executor can batch: `requests` builds the
engine requests one op needs for one input, and `collect` turns the engine's
answers back into the op's value. The executor gathers the requests of every
LLM node in a stage, for every input, into one engine call.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Generator

from ttsc.common.prompts import Prompt, PromptDef, default_prompt, render_prompt
from ttsc.common.sampling import SamplingParams
from ttsc.compiler.ops import SIGNATURES, keep_count
from ttsc.runtime.engines.base import Completion, NextTokenRequest, SampleRequest, first_finished
from ttsc.runtime.extract import extract, extract_all
from ttsc.runtime.replies import parse_ranking, parse_unit_tests
from ttsc.runtime.sandbox import run_python_tests
from ttsc.runtime.values import Candidate

Value = Any


# ------------------------------------------------------------------ host ops

def vote(answers: list[str | None], weights: list[float] | None = None) -> str:
    """Most frequent (or heaviest) answer; ties go to the answer seen first.
    None answers never count. No answer at all gives ""."""
    totals: dict[str, float] = {}
    for i, a in enumerate(answers):
        if a is not None:
            totals[a] = totals.get(a, 0.0) + (weights[i] if weights is not None else 1.0)
    if not totals:
        return ""
    best = max(totals.values())
    return next(a for a in totals if totals[a] == best)


def agreement(answers: list[str | None]) -> float:
    """Share of all answers that equal the most frequent one (0 if none)."""
    counts = Counter(a for a in answers if a is not None)
    return max(counts.values()) / len(answers) if counts and answers else 0.0


def best(items: list, by: list[float]) -> str:
    if not items:
        return ""
    i = max(range(len(items)), key=lambda j: (by[j], -j))
    item = items[i]
    return item.text if isinstance(item, Candidate) else (item or "")


def top(cands: list[Candidate], by: list[float], k: int, distinct: bool = False) -> list[Candidate]:
    """The k highest-scoring candidates, best first (ties by position). With
    `distinct`, a candidate identical to one already kept (same prompt, text
    and stop string) is skipped: beams that a search would extend the same way
    count once, so k beams are k different partial solutions."""
    order = sorted(range(len(cands)), key=lambda j: (-by[j], j))
    kept: list[Candidate] = []
    seen: set[tuple] = set()
    for j in order:
        if len(kept) == k:
            break
        c = cands[j]
        if distinct:
            key = (repr(c.prompt), c.text, c.stop, c.finished)
            if key in seen:
                continue
            seen.add(key)
        kept.append(c)
    return kept


def confidence(cands: list[Candidate], agg: str = "mean", window: int = 8) -> list[float]:
    """How sure the model was of each candidate, from its own token
    log-probabilities (no model call), as a probability in (0, 1]:

    - mean: exp(mean token logprob), the inverse of the perplexity (the
      perplexity-weighted vote of "Bridging Internal Probability and
      Self-Consistency");
    - min: the lowest group confidence of DeepConf: exp of the lowest mean
      logprob over any `window` consecutive tokens (the weakest stretch);
    - tail: DeepConf's tail confidence, exp(mean logprob of the last `window`
      tokens), where the final answer is written.

    DeepConf's token confidence is the mean of the top-k logprobs at each
    position; the engine contract reports only the sampled token's, which is
    what is averaged here. A candidate with no tokens or no logprobs scores 0
    (no evidence), so weights stay non-negative and it sorts last."""
    return [_confidence(c.logprobs, agg, window) for c in cands]


def _confidence(logprobs: tuple[float, ...] | None, agg: str, window: int) -> float:
    if not logprobs:
        return 0.0
    lps = list(logprobs)
    if agg == "mean":
        return math.exp(sum(lps) / len(lps))
    if agg == "tail":
        tail = lps[-window:]
        return math.exp(sum(tail) / len(tail))
    if agg == "min":
        w = min(window, len(lps))
        run = sum(lps[:w])
        lowest = run
        for i in range(w, len(lps)):
            run += lps[i] - lps[i - w]
            lowest = min(lowest, run)
        return math.exp(lowest / w)
    raise ValueError(f"unknown confidence aggregation {agg!r}")


# -------------------------------------------- host ops of the search strategies

def top_per_group(cands: list[Candidate], by: list[float], k: int, groups: int,
                  distinct: bool = False) -> list[Candidate]:
    """DVTS (Beeching et al.): the candidates form `groups` independent
    subtrees, a candidate descending from sample i of the first `generate`
    belonging to subtree i mod groups; the k best of each subtree (as `top`),
    subtree by subtree. A subtree never takes another's places, so one strong
    line of reasoning cannot crowd out the others."""
    out: list[Candidate] = []
    for g in range(groups):
        members = [j for j, c in enumerate(cands) if c.root % groups == g]
        out += top([cands[j] for j in members], [by[j] for j in members], k, distinct)
    return out


def resample_weights(scores: list[float], weigh: str = "odds") -> list[float]:
    """Resampling probabilities from scores in [0, 1] (a judge's P(Yes), a
    confidence). `odds`: softmax of the scores' logits, so a candidate is drawn
    with probability proportional to s / (1 - s), as the particle filter of
    Puri et al. (its_hub) weighs its reward model's scores; `linear`:
    proportional to s. Scores are clipped to [1e-6, 1 - 1e-6]; all-zero
    weights draw uniformly."""
    clipped = [min(max(float(s), 1e-6), 1 - 1e-6) for s in scores]
    if weigh == "odds":
        logits = [math.log(s / (1 - s)) for s in clipped]
        top_logit = max(logits)
        raw = [math.exp(x - top_logit) for x in logits]
    elif weigh == "linear":
        raw = clipped
    else:
        raise ValueError(f"unknown resampling weights {weigh!r}")
    total = sum(raw)
    return [w / total for w in raw] if total > 0 else [1 / len(raw)] * len(raw)


def resample(cands: list[Candidate], by: list[float], k: int, weigh: str = "odds",
             seed: int = 0) -> list[Candidate]:
    """Multinomial resampling (particle filtering, Puri et al. 2025): k
    candidates drawn with replacement, each with probability from its score
    (`resample_weights`), in the order drawn. Likely partial solutions are
    copied, unlikely ones dropped, yet a low score is not a death sentence
    the way it is in `top`. Deterministic for a given seed."""
    if not cands or k <= 0:
        return []
    weights = resample_weights(by, weigh)
    rng = random.Random(seed)
    return rng.choices(cands, weights=weights, k=k)


def run_tests(cands: list[Candidate], tests: list[Candidate]) -> list[float]:
    """Fraction of all generated asserts each candidate's code passes."""
    # parse_unit_tests keeps only the valid assert lines of a model's reply.
    test_code = "\n".join(t for t in (parse_unit_tests(c.text) for c in tests) if t)
    scores = []
    for c in cands:
        code = extract(c.text, "code")
        if not code or not test_code:
            scores.append(0.0)
            continue
        result = run_python_tests(code, test_code)
        scores.append(result.passed / result.total if result.total else 0.0)
    return scores


def host_op(op: str, attrs: dict[str, Any], args: dict[str, Value]) -> Value:
    """The value of a non-LLM op for one input."""
    if op == "const":
        return attrs["value"]
    if op == "extract":
        how = attrs["how"]
        return extract_all([c.text for c in args["candidates"]], how["how"], how.get("pattern"))
    if op == "vote":
        return vote(args["answers"], args.get("weights"))
    if op == "best":
        return best(args["candidates"], args["by"])
    if op == "top" and attrs.get("groups") is not None:
        return top_per_group(args["candidates"], args["by"], int(attrs["k"]), int(attrs["groups"]),
                             bool(attrs.get("distinct")))
    if op == "top":
        k = (int(attrs["k"]) if attrs.get("keep") is None
             else keep_count(attrs["keep"], len(args["candidates"])))
        return top(args["candidates"], args["by"], k, bool(attrs.get("distinct")))
    if op == "resample":  # the executor sets `seed` (the node's own, or one derived per input)
        return resample(args["candidates"], args["by"], int(attrs["k"]),
                        attrs.get("weigh") or SIGNATURES["resample"].arg("weigh").default,
                        int(attrs.get("seed") or 0))
    if op == "confidence":
        sig = SIGNATURES["confidence"]  # an unset aggregation is the table's default
        return confidence(args["candidates"], attrs.get("agg") or sig.arg("agg").default,
                          int(attrs.get("window") or sig.arg("window").default))
    if op == "agreement":
        return agreement(args["answers"])
    if op == "all_done":
        return all(c.finished for c in args["candidates"])
    if op == "run_tests":
        return run_tests(args["candidates"], args["tests"])
    if op == "slice":
        return args["candidates"][attrs["start"]:attrs["stop"]]
    if op == "concat":
        parts = [args[k] for k in sorted(args, key=lambda r: int(r[4:]))]
        if isinstance(parts[0], str):
            return "".join(parts)
        return [x for p in parts for x in p]
    if op == "compare":
        a, b = args["left"], args["right"]
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "==": a == b,
                "!=": a != b}[attrs["op"]]
    if op == "logic":
        if attrs["op"] == "not":
            return not args["operand"]
        return (args["left"] and args["right"]) if attrs["op"] == "and" else (args["left"] or args["right"])
    if op == "loop_out":
        return args["loop"][attrs["var"]]
    if op == "choice":
        return args[f"option{attrs.get('selected') or 0}"]
    raise ValueError(f"no host implementation for op {op}")


# ------------------------------------------------------------------- LLM ops

@dataclass
class OpContext:
    """What an LLM op needs besides its inputs: prompt definitions and seeds."""

    prompts: dict[str, dict[str, Any]]
    seed_for: Callable[[int], int | None]  # salt -> seed for this node and input


def _prompt_def(op: str, attrs: dict[str, Any], ctx: OpContext) -> PromptDef:
    name = attrs.get("prompt")
    if name:
        return PromptDef.from_dict(ctx.prompts[name])
    pdef = default_prompt(op)
    assert pdef is not None, f"`{op}` has no default prompt; the builder requires one"
    return pdef


def _holes(args: dict[str, Value]) -> dict[str, Value]:
    return {k[5:]: v for k, v in args.items() if k.startswith("hole:")}


def _params(attrs: dict[str, Any], n: int, seed: int | None, **over: Any) -> SamplingParams:
    return SamplingParams.from_attrs(attrs, n=n, seed=seed, **over)


def _explicit_seed(attrs: dict[str, Any], ctx: OpContext, salt: int) -> int | None:
    if attrs.get("seed") is not None:
        return int(attrs["seed"]) + salt
    return ctx.seed_for(salt)


YES_NO = ("Yes", "No")


def _p_yes(logprobs: list[float]) -> float:
    y, n = logprobs
    m = max(y, n)
    return math.exp(y - m) / (math.exp(y - m) + math.exp(n - m))


def _steps(text: str) -> list[str]:
    """Cumulative prefixes of a solution, one per reasoning step."""
    sep = "\n\n" if "\n\n" in text.strip() else "\n"
    parts = [p for p in text.split(sep) if p.strip()] or [text]
    return [sep.join(parts[:i + 1]) for i in range(len(parts))]


def _stop_of(c: Completion, attrs: dict[str, Any]) -> str | None:
    """The stop string that cut `c`: the engine's word, else the op's only
    stop string (a server that does not say which matched, an older cache
    entry); None if it was not cut by one, or several could have matched."""
    if c.finish_reason != "stop":
        return None
    if c.stop is not None:
        return c.stop
    stops = attrs.get("stop") or ()
    stops = [stops] if isinstance(stops, str) else list(stops)
    return stops[0] if len(stops) == 1 else None


def _candidate(c: Completion, prompt: Prompt, attrs: dict[str, Any] | None = None,
               before: Candidate | None = None) -> Candidate:
    """A candidate from a completion; for extend, continuing `before`: the old
    text, the stop string that cut it, then the new text. A continuation that
    is cut at once (an empty step: the model writes the separator again) ends
    the candidate, since continuing it would make no progress."""
    logprobs = tuple(c.logprobs) if len(c.logprobs) == len(c.token_ids) else None
    stop = _stop_of(c, attrs or {})
    if before is None:
        return Candidate(c.text, prompt, c.finish_reason == "eos", len(c.token_ids), logprobs, stop)
    joined = (None if logprobs is None or before.logprobs is None else before.logprobs + logprobs)
    tokens = before.tokens + len(c.token_ids)
    if c.finish_reason == "stop" and not c.text.strip():
        return Candidate(before.text, before.prompt, True, tokens, joined, before.stop)
    return Candidate(before.continued_text + c.text, before.prompt, c.finish_reason == "eos",
                     tokens, joined, stop)


class LLMOp(ABC):
    """Requests for one input, and the value made from their answers."""

    kind = "sample"  # or "score"

    @abstractmethod
    def requests(self, attrs: dict, args: dict, ctx: OpContext) -> list:
        """Engine requests (SampleRequest or NextTokenRequest) for one input."""

    @abstractmethod
    def collect(self, attrs: dict, args: dict, requests: list, results: list) -> Value:
        """The op's value for one input, from its requests and their results."""


class Generate(LLMOp):
    """n samples of one prompt per input (generate, unit_tests, fuse)."""

    op = "generate"

    def holes(self, args: dict) -> dict:
        return _holes(args)

    def requests(self, attrs, args, ctx):
        prompt = render_prompt(_prompt_def(self.op, attrs, ctx), self.holes(args))
        return [SampleRequest(prompt, _params(attrs, int(attrs["n"]), _explicit_seed(attrs, ctx, 0)))]

    def collect(self, attrs, args, reqs, results):
        (completions,), (req,) = results, reqs
        completions = first_finished(completions, attrs.get("first"))
        return [dataclasses.replace(_candidate(c, req.prompt, attrs), root=i)
                for i, c in enumerate(completions)]


class UnitTests(Generate):
    op = "unit_tests"


class Extend(LLMOp):
    """Continue each unfinished candidate; finished ones pass through once.
    With `force` (budget forcing), every candidate, finished or not, is
    continued after the forcing text, which stays in its text."""

    def requests(self, attrs, args, ctx):
        return [SampleRequest(c.prompt.continued(c.continued_text),
                              _params(attrs, int(attrs["n"]), _explicit_seed(attrs, ctx, 1000 * i)))
                for i, c in enumerate(_to_extend(args["candidates"], attrs.get("force")))
                if not c.finished]

    def collect(self, attrs, args, reqs, results):
        out: list[Candidate] = []
        it = iter(results)
        for c in _to_extend(args["candidates"], attrs.get("force")):
            if c.finished:
                out.append(c)
                continue
            for comp in next(it):
                out.append(dataclasses.replace(_candidate(comp, c.prompt, attrs, before=c), root=c.root))
        return out


# ------------------------------------- LLM-op helpers of the search strategies

def _to_extend(cands: list[Candidate], force: str | None) -> list[Candidate]:
    """The candidates `extend` continues: as they are, or, budget forcing
    (s1, Muennighoff et al. 2025), each with the forcing text appended after
    its text (and the stop string that cut it) and marked unfinished, so that
    even an answer the model ended is continued after "Wait,"."""
    if not force:
        return cands
    return [dataclasses.replace(c, text=c.continued_text + force, stop=None, finished=False)
            for c in cands]


class Verify(LLMOp):
    kind = "score"

    def _prompt(self, attrs, args, ctx, text: str) -> Prompt:
        return render_prompt(_prompt_def("verify", attrs, ctx), {**_holes(args), "candidate": text})

    def requests(self, attrs, args, ctx):
        return [NextTokenRequest(self._prompt(attrs, args, ctx, c.text), YES_NO)
                for c in args["candidates"]]

    def collect(self, attrs, args, reqs, results):
        return [_p_yes(r) for r in results]


class Score(Verify):
    """Process-style scores: P(Yes) after each step, aggregated."""

    def requests(self, attrs, args, ctx):
        return [NextTokenRequest(self._prompt(attrs, args, ctx, step), YES_NO)
                for c in args["candidates"] for step in _steps(c.text)]

    def collect(self, attrs, args, reqs, results):
        out, i = [], 0
        agg = attrs.get("agg", "min")
        for c in args["candidates"]:
            k = len(_steps(c.text))
            ps = [_p_yes(r) for r in results[i:i + k]]
            i += k
            out.append(min(ps) if agg == "min" else ps[-1] if agg == "last" else math.prod(ps))
        return out


class Critique(LLMOp):
    op = "critique"

    def _holes_for(self, args, i, c):
        return {**_holes(args), "candidate": c.text}

    def requests(self, attrs, args, ctx):
        pdef = _prompt_def(self.op, attrs, ctx)
        return [SampleRequest(render_prompt(pdef, self._holes_for(args, i, c)),
                              _params(attrs, 1, _explicit_seed(attrs, ctx, i)))
                for i, c in enumerate(args["candidates"])]

    def collect(self, attrs, args, reqs, results):
        return [_candidate(r[0], q.prompt, attrs) for r, q in zip(results, reqs)]


class Refine(Critique):
    op = "refine"

    def _holes_for(self, args, i, c):
        crit = args.get("critiques")
        critique = crit[i].text if crit is not None and i < len(crit) else "(no critique)"
        return {**_holes(args), "candidate": c.text, "critique": critique}


class Fuse(Generate):
    op = "fuse"

    def holes(self, args: dict) -> dict:
        return {**_holes(args), "candidates": args["candidates"],
                "critiques": args.get("critiques") or []}


class Rank(LLMOp):
    def requests(self, attrs, args, ctx):
        holes = {**_holes(args), "candidates": args["candidates"]}
        prompt = render_prompt(_prompt_def("rank", attrs, ctx), holes)
        return [SampleRequest(prompt, _params(attrs, 1, _explicit_seed(attrs, ctx, 0)))]

    def collect(self, attrs, args, reqs, results):
        cands = args["candidates"]
        order = parse_ranking(results[0][0].text, len(cands))
        k = attrs.get("k")
        ranked = [cands[i] for i in order]
        return ranked[:int(k)] if isinstance(k, int) else ranked


# ------------------------------------------- the strategy library's LLM ops

class RoundsOp(LLMOp):
    """An op that needs several engine calls for one input, each depending on
    the last (a knockout: round two pairs round one's winners). `play` is a
    generator: it yields one round's requests, receives their results, and
    returns the op's value. The executor sends each round of every such op in
    a stage in one engine call per kind."""

    def requests(self, attrs, args, ctx):
        raise TypeError(f"{type(self).__name__} is played in rounds: call play()")

    def collect(self, attrs, args, reqs, results):
        raise TypeError(f"{type(self).__name__} is played in rounds: call play()")

    @abstractmethod
    def play(self, attrs: dict, args: dict, ctx: OpContext) -> Generator[list, list, Value]:
        """Yield each round's requests; receive their results; return the value."""


AB = ("A", "B")


def _p_first(logprobs: list[float]) -> float:
    """P(A) against P(B) of a judge's next token: P(the answer shown first wins)."""
    return _p_yes(logprobs)


class Knockout(RoundsOp):
    """A knockout tournament (Chen et al. 2024, "A Simple and Provable Scaling
    Law for the Test-Time Compute of LLMs"): candidates meet in pairs, the
    judge's next-token P(A) against P(B) decides each match, winners advance
    until one is left. Each match is read in both orders (A-B and B-A) and
    the two readings averaged, so the judge's taste for a position cancels;
    a tie goes to the candidate listed first. With an odd field the last
    candidate advances without a match. m candidates take m - 1 matches, in
    about log2(m) rounds, each round one engine call."""

    kind = "score"

    def play(self, attrs, args, ctx):
        field = list(args["candidates"])
        if not field:
            return ""
        pdef = _prompt_def("knockout", attrs, ctx)
        holes = _holes(args)

        def match(first: Candidate, second: Candidate) -> NextTokenRequest:
            prompt = render_prompt(pdef, {**holes, "candidate_a": first.text,
                                          "candidate_b": second.text})
            return NextTokenRequest(prompt, AB)

        while len(field) > 1:
            pairs = [(field[i], field[i + 1]) for i in range(0, len(field) - 1, 2)]
            bye = field[len(pairs) * 2:]
            results = yield [r for a, b in pairs for r in (match(a, b), match(b, a))]
            winners = []
            for j, (a, b) in enumerate(pairs):
                p_a = (_p_first(results[2 * j]) + 1.0 - _p_first(results[2 * j + 1])) / 2
                winners.append(a if p_a >= 0.5 else b)
            field = winners + bye
        return field[0].text


class Debate(Critique):
    """One round of multi-agent debate (Du et al. 2023): each candidate is an
    agent's answer; the agent reads the other agents' answers (numbered) and
    writes an updated one. One sample per agent, all agents in one call."""

    op = "debate"

    def _holes_for(self, args, i, c):
        others = [o for j, o in enumerate(args["candidates"]) if j != i]
        return {**_holes(args), "candidate": c.text, "others": others or "(none)"}


LLM_OPS: dict[str, LLMOp] = {
    "generate": Generate(), "unit_tests": UnitTests(), "extend": Extend(), "verify": Verify(),
    "score": Score(), "critique": Critique(), "refine": Refine(), "fuse": Fuse(), "rank": Rank(),
    "knockout": Knockout(), "debate": Debate(),
}
