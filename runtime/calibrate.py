"""`ttsc calibrate FILE --data dev.jsonl`: fit the utility model from pilot samples.

For the strategy's first `generate` (once per model it may use), draw
`--samples` samples for every dev question, extract and score their answers,
and fit:

- Beta(a, b) of per-question accuracy (maximum likelihood on the per-question
  counts of right samples), also per `difficulty` group when the data has one;
- the share of wrong samples that agree on the most common wrong answer;
- the lengths of completions that finished, and the share that finished;
- per pilot agreement (how many of the first `--pilot` samples agree), a Beta
  of the remaining samples' accuracy: a difficulty predictor that needs no
  labels at test time;
- per bin of a pilot score (`--pilot-feature`: agreement, the samples' mean
  token probability, or both), the measured vote accuracy at each total
  sample count with the pilot kept as votes: the utility of per-input
  allocation across a data set (`allocate_by_pilot`);
- for the strategy's `verify` model, its reliability: how much of the gap
  between pass@1 and coverage its best-of-k choice closes.

The result is stored beside the strategy as FILE.calibration.json, which the
allocator reads when compiling FILE.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ttsc.compiler.utility import (Calibration, ModelCalibration, calibration_path, fit_beta,
                                   wrong_concentration)
from ttsc.common.errors import UserError
from ttsc.runtime.engines.base import Engine, NextTokenRequest, SampleRequest, SamplingParams

DEFAULT_SAMPLES = 16
DEFAULT_PILOT = 4
DEFAULT_MAX_TOKENS = 256  # when the strategy leaves max_tokens open
DEFAULT_TEMPERATURE = 0.8  # when the strategy leaves temperature open
QUESTIONS_PER_CALL = 16
MIN_BIN_QUESTIONS = 3


@dataclass
class PilotSamples:
    """Every sample drawn for every question, with what scoring made of it."""

    model: str
    spec: str
    answers: list[list[str | None]]
    correct: list[list[bool]]
    lengths: list[list[int]]  # generated tokens
    finished: list[list[bool]]
    texts: list[list[str]]
    prompt_tokens: list[int]
    seconds: float
    # Mean log-probability of each sample's generated tokens (the engine's,
    # after temperature); empty when the pool was drawn without them.
    mean_logprobs: list[list[float]] = field(default_factory=list)

    @property
    def counts(self) -> list[int]:
        return [sum(c) for c in self.correct]


def draw_samples(engine: Engine, prompt_def: dict[str, Any], rows: Sequence[dict[str, Any]],
                 params: list[str], *, samples: int, max_tokens: int, temperature: float,
                 how: dict[str, Any], gold: Callable[[dict[str, Any]], str],
                 is_right: Callable[[str | None, str], bool], seed: int = 0, model: str = "",
                 spec: str = "", on_batch: Callable[[int], None] | None = None) -> PilotSamples:
    """`samples` completions of the prompt for each row, extracted and scored."""
    from ttsc.runtime.extract import extract
    from ttsc.common.prompts import render_prompt

    out = PilotSamples(model, spec, [], [], [], [], [], [], 0.0, [])
    start = time.perf_counter()
    for b in range(0, len(rows), QUESTIONS_PER_CALL):
        chunk = rows[b:b + QUESTIONS_PER_CALL]
        requests = []
        for i, row in enumerate(chunk):
            prompt = render_prompt(prompt_def, {p: row[p] for p in params})
            requests.append(SampleRequest(prompt, SamplingParams(
                n=samples, temperature=temperature, max_tokens=max_tokens,
                seed=seed * 1_000_003 + (b + i) * 7919)))
        results = engine.sample(requests)
        for row, req, output in zip(chunk, requests, results):
            comps = output.completions
            answers = [extract(c.text, how["how"], how.get("pattern")) for c in comps]
            out.answers.append(answers)
            out.correct.append([bool(is_right(a, gold(row))) for a in answers])
            out.lengths.append([len(c.token_ids) for c in comps])
            out.finished.append([c.finish_reason != "length" for c in comps])
            out.texts.append([c.text for c in comps])
            out.mean_logprobs.append([mean_logprob(c.logprobs) for c in comps])
            out.prompt_tokens.append(len(engine.tokenize(req.prompt)))
        if on_batch:
            on_batch(len(out.answers))
    out.seconds = time.perf_counter() - start
    return out


def mean_logprob(logprobs: Sequence[float]) -> float:
    """Mean per-token log-probability of one completion (0 for an empty one)."""
    return sum(logprobs) / len(logprobs) if logprobs else 0.0


def agreement(answers: Sequence[str | None]) -> float:
    """Share of the answers equal to the most common real answer."""
    counts: dict[str, int] = {}
    for a in answers:
        if a is not None and a != "":
            counts[a] = counts.get(a, 0) + 1
    return max(counts.values(), default=0) / len(answers) if answers else 0.0


def _group_sorted(keys: Sequence[float], size: int) -> list[list[int]]:
    """Positions of ascending `keys` in consecutive groups of at least `size`
    (equal keys stay together); a last group smaller than MIN_BIN_QUESTIONS
    joins the one before."""
    groups: list[list[int]] = []
    for j, key in enumerate(keys):
        if groups and (len(groups[-1]) < size or keys[groups[-1][-1]] == key):
            groups[-1].append(j)
        else:
            groups.append([j])
    if len(groups) > 1 and len(groups[-1]) < MIN_BIN_QUESTIONS:
        last = groups.pop()
        groups[-1] += last
    return groups


def agreement_bins(pilot: PilotSamples, first: int) -> list[dict[str, float]]:
    """Beta of the later samples' accuracy, per agreement of the first `first`."""
    if first >= len(pilot.answers[0]):
        return []
    keyed = sorted(((agreement(ans[:first]), sum(c[first:]), len(c) - first)
                    for ans, c in zip(pilot.answers, pilot.correct)), key=lambda t: t[0])
    bins = [[keyed[i] for i in g]
            for g in _group_sorted([k[0] for k in keyed], MIN_BIN_QUESTIONS)]
    out = []
    for i, members in enumerate(bins):
        prior = fit_beta([c for _, c, _ in members], [n for _, _, n in members])
        lo = 0.0 if i == 0 else members[0][0]
        hi = 1.0 if i == len(bins) - 1 else members[-1][0]
        out.append({"lo": lo, "hi": hi, "a": prior.a, "b": prior.b, "questions": len(members)})
    # Bins must tile [0, 1]: each starts where the previous ended.
    for prev, cur in zip(out, out[1:]):
        mid = (prev["hi"] + cur["lo"]) / 2
        prev["hi"], cur["lo"] = mid, mid
    return out


# ------------------------------------------------------------------ pilot predictor
#
# Per-input allocation across a data set (Snell et al.'s difficulty bins, with
# the difficulty predicted at test time): draw a small pilot of `first` samples
# per input (they stay as votes, and their tokens are paid for), score it, and
# look the score up in bins fitted on a dev set. Each bin holds the measured
# vote accuracy at each total sample count (the pilot included, so the curve is
# conditioned on what the pilot showed) and the Beta of the later samples'
# per-sample accuracy, which extends the curve past what the dev set measured.

PILOT_FEATURES = ("agreement", "confident_agreement", "confidence")
DEFAULT_PILOT_FEATURE = "agreement"
DEFAULT_PILOT_BINS = 4
PILOT_TOTALS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)  # sample counts an input may get in all
CURVE_DRAWS = 200


def pilot_score(answers: Sequence[str | None], mean_logprobs: Sequence[float] | None,
                feature: str = DEFAULT_PILOT_FEATURE) -> float:
    """How easy the pilot samples make an input look (higher: easier).

    - agreement: the share of pilot samples giving the most common answer;
    - confidence: the mean per-token probability of the pilot samples that
      gave an answer (0 for those that gave none);
    - confident_agreement: the same, counting only the samples that gave one
      answer, the answer with the most probability mass: agreement weighted
      by how sure those samples were.
    """
    if feature == "agreement":
        return agreement(answers)
    if feature not in PILOT_FEATURES:
        raise ValueError(f"unknown pilot feature {feature!r} (one of {', '.join(PILOT_FEATURES)})")
    if not answers:
        return 0.0
    if not mean_logprobs:
        raise ValueError(f"pilot feature {feature!r} needs the samples' log-probabilities")
    import math

    probs = [math.exp(lp) for lp in mean_logprobs]
    if feature == "confidence":
        return sum(p for a, p in zip(answers, probs) if a not in (None, "")) / len(answers)
    mass: dict[str, float] = {}
    for a, p in zip(answers, probs):
        if a not in (None, ""):
            mass[a] = mass.get(a, 0.0) + p
    return max(mass.values(), default=0.0) / len(answers)


def pool_scores(pool: PilotSamples, first: int, feature: str = DEFAULT_PILOT_FEATURE) -> list[float]:
    """The pilot score of every question of a pool, from its first `first` samples."""
    lps = pool.mean_logprobs or [None] * len(pool.answers)
    return [pilot_score(ans[:first], lp[:first] if lp else None, feature)
            for ans, lp in zip(pool.answers, lps)]


def vote_is_right(answers: Sequence[str | None], right: Sequence[bool]) -> bool:
    """Whether the plurality vote (ties to the first seen) picks a right answer."""
    from ttsc.runtime.ops import vote

    winner = vote(list(answers))
    return winner != "" and any(r for a, r in zip(answers, right) if a == winner)


def conditional_vote_accuracy(answers: Sequence[str | None], right: Sequence[bool], first: int,
                              total: int, rng: random.Random, draws: int = CURVE_DRAWS) -> float:
    """Vote accuracy over `total` samples of one question whose first `first`
    samples (the pilot) are always in, the rest drawn without replacement
    from its other samples (random order: ties go to the first seen)."""
    rest = list(range(first, len(answers)))
    extra = total - first
    if extra < 0 or extra > len(rest):
        raise ValueError(f"cannot draw {total} samples with a pilot of {first} from {len(answers)}")
    if extra == len(rest) or extra == 0:
        draws = min(draws, 24)  # only the order varies
    hits = 0
    for _ in range(draws):
        pick = list(range(first)) + rng.sample(rest, extra)
        rng.shuffle(pick)
        hits += vote_is_right([answers[i] for i in pick], [right[i] for i in pick])
    return hits / draws


def isotonic(values: Sequence[float]) -> list[float]:
    """The closest non-decreasing sequence (least squares, pool adjacent
    violators): a measured vote-accuracy curve without its sampling dips, so
    the allocator does not chase noise."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([v, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m1, c1), (m2, c2) = blocks[-2], blocks.pop()
            blocks[-1] = [(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2]
    return [m for m, c in blocks for _ in range(int(c))]


def pilot_bins(pilot: PilotSamples, first: int, feature: str = DEFAULT_PILOT_FEATURE,
               bins: int = DEFAULT_PILOT_BINS, totals: Sequence[int] = PILOT_TOTALS,
               seed: int = 0) -> list[dict[str, Any]]:
    """Dev questions grouped by pilot score into `bins` bins of about equal size
    (ties stay together); per bin: the score range (adjacent bins meet),
    the Beta of the later samples' accuracy, the mean generated tokens per
    sample, and the measured vote accuracy at each total in `totals` that the
    dev samples reach (`curve`, keyed by the total as a string)."""
    width = min(len(c) for c in pilot.correct) if pilot.correct else 0
    if first >= width:
        return []
    scores = pool_scores(pilot, first, feature)
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    size = max(MIN_BIN_QUESTIONS, -(-len(order) // max(bins, 1)))
    groups = [[order[j] for j in g] for g in _group_sorted([scores[i] for i in order], size)]
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for members in groups:
        prior = fit_beta([sum(pilot.correct[i][first:]) for i in members],
                         [len(pilot.correct[i]) - first for i in members])
        ts = sorted({first} | {t for t in totals if first <= t <= width})
        measured = [sum(conditional_vote_accuracy(pilot.answers[i], pilot.correct[i], first, t, rng)
                        for i in members) / len(members) for t in ts]
        curve = {str(t): v for t, v in zip(ts, isotonic(measured))}
        lengths = [n for i in members for n in pilot.lengths[i]]
        out.append({"lo": scores[members[0]], "hi": scores[members[-1]], "a": prior.a,
                    "b": prior.b, "questions": len(members),
                    "generated": sum(lengths) / len(lengths), "curve": curve})
    # Bins tile the scores: each starts where the previous ended (the first
    # and last are open-ended when looked up).
    for prev, cur in zip(out, out[1:]):
        mid = (prev["hi"] + cur["lo"]) / 2
        prev["hi"], cur["lo"] = mid, mid
    return out


def pilot_allocation(model: ModelCalibration, answers: Sequence[Sequence[str | None]],
                     mean_logprobs: Sequence[Sequence[float]] | None,
                     prompt_tokens: Sequence[float], totals: Sequence[int] = PILOT_TOTALS
                     ) -> tuple[list[int], list[list[float]], list[list[int]]]:
    """The per-input allocation problem for inputs whose pilots are drawn:
    (the totals each input may get, pilot included; per input, the predicted
    vote accuracy and the tokens of each total: its prompt once plus its
    samples, the pilot's among them, at its bin's tokens per sample)."""
    if not model.pilot_bins:
        raise ValueError("the calibration has no pilot bins (run `ttsc calibrate`)")
    k = model.pilot_samples
    offered = sorted({k} | {t for t in totals if t >= k})
    utilities, costs = [], []
    for i, ans in enumerate(answers):
        if len(ans) != k:
            raise ValueError(f"input {i} has {len(ans)} pilot samples; the calibration's pilot has {k}")
        lps = mean_logprobs[i] if mean_logprobs else None
        score = pilot_score(ans, lps, model.pilot_feature)
        gen = model.pilot_bin(score)["generated"]
        utilities.append(model.pilot_curve(score, offered))
        costs.append([round(prompt_tokens[i] + t * gen) for t in offered])
    return offered, utilities, costs


def allocate_by_pilot(model: ModelCalibration, answers: Sequence[Sequence[str | None]],
                      mean_logprobs: Sequence[Sequence[float]] | None,
                      prompt_tokens: Sequence[float], budget: int,
                      totals: Sequence[int] = PILOT_TOTALS) -> list[int]:
    """Samples per input in all (pilot included) that maximize the predicted
    accuracy over the data set within `budget` tokens (the pilots' included):
    CP-SAT over the per-input options (compiler/allocator.py)."""
    from ttsc.compiler.allocator import allocate_across_inputs

    offered, utilities, costs = pilot_allocation(model, answers, mean_logprobs, prompt_tokens,
                                                 totals)
    return [offered[j] for j in allocate_across_inputs(utilities, costs, budget)]


def fit_model(pilot: PilotSamples, rows: Sequence[dict[str, Any]], gold: Callable[[dict], str],
              is_right: Callable[[str | None, str], bool], group_field: str | None,
              first: int, *, predictor_samples: int | None = None,
              feature: str = DEFAULT_PILOT_FEATURE, bins: int = DEFAULT_PILOT_BINS,
              seed: int = 0) -> ModelCalibration:
    """Fit the utility model from a pool of samples. `first` pilot samples
    make the agreement bins; `predictor_samples` (default: `first`) pilot
    samples scored by `feature` make the pilot bins (agreement when the pool
    has no log-probabilities)."""
    totals = [len(c) for c in pilot.correct]
    prior = fit_beta(pilot.counts, totals)
    groups: dict[str, dict[str, float]] = {}
    if group_field and all(group_field in r for r in rows):
        for g in sorted({str(r[group_field]) for r in rows}):
            idx = [i for i, r in enumerate(rows) if str(r[group_field]) == g]
            gp = fit_beta([pilot.counts[i] for i in idx], [totals[i] for i in idx])
            groups[g] = {"a": gp.a, "b": gp.b, "questions": len(idx)}
    finished = [n for ls, fs in zip(pilot.lengths, pilot.finished) for n, f in zip(ls, fs) if f]
    all_samples = sum(totals)
    k = predictor_samples or first
    if feature != "agreement" and not pilot.mean_logprobs:
        feature = "agreement"
    return ModelCalibration(
        spec=pilot.spec, a=prior.a, b=prior.b,
        wrong_concentration=wrong_concentration(pilot.answers, [gold(r) for r in rows], is_right),
        finished_lengths=sorted(finished), finished_share=len(finished) / all_samples,
        questions=len(rows), samples_per_question=totals[0] if totals else 0,
        groups=groups, agreement_bins=agreement_bins(pilot, first),
        pilot_feature=feature, pilot_samples=k,
        pilot_bins=pilot_bins(pilot, k, feature, bins, seed=seed))


def verifier_reliability(correct: Sequence[Sequence[bool]], scores: Sequence[Sequence[float]],
                         ks: Sequence[int] = (2, 4, 8), draws: int = 200, seed: int = 0) -> float | None:
    """Least-squares share of (coverage - pass@1) that best-of-k by the
    verifier's scores recovers, over random k-subsets of each question's samples."""
    rng = random.Random(seed)
    num = den = 0.0
    p1 = sum(sum(c) / len(c) for c in correct) / len(correct)
    for k in ks:
        if k > min(len(c) for c in correct):
            continue
        best = cov = 0.0
        for c, s in zip(correct, scores):
            for _ in range(draws):
                pick = rng.sample(range(len(c)), k)
                best += c[max(pick, key=lambda i: s[i])]
                cov += any(c[i] for i in pick)
        best /= len(correct) * draws
        cov /= len(correct) * draws
        num += (best - p1) * (cov - p1)
        den += (cov - p1) ** 2
    if den <= 0:
        return None
    return min(1.0, max(0.0, num / den))


# ------------------------------------------------------------------ the command


@dataclass
class _Target:
    model: str  # model name in the strategy
    prompt: dict[str, Any]
    max_tokens: int
    temperature: float
    how: dict[str, Any]


def _targets(program: Any) -> tuple[list[_Target], list[tuple[str, dict[str, Any]]]]:
    """What to sample (the first generate, once per model it may use) and which
    verifiers to score with (model name, prompt definition)."""
    from ttsc.common.knobs import Auto, Choice, Range
    from ttsc.compiler.ir import Op
    from ttsc.compiler.prefix.layout import prompt_def

    gens, verifiers, how = [], [], {"how": "number"}
    for _, node in program.graph.walk():
        if node.op is Op.GENERATE:
            gens.append(node)
        elif node.op is Op.VERIFY:
            verifiers.append(node)
        elif node.op is Op.EXTRACT and how == {"how": "number"}:
            how = dict(node.attrs["how"])
    if not gens:
        raise UserError(f"strategy `{program.strategy}` has no `generate` to calibrate")
    gen = gens[0]

    def names(value: Any) -> list[str]:
        return list(value.options) if isinstance(value, (Choice, Auto)) else [value]

    mt = gen.attrs.get("max_tokens")
    max_tokens = mt if isinstance(mt, int) else max(
        (v for v in (mt.options if isinstance(mt, Choice) else ()) if isinstance(v, int)),
        default=DEFAULT_MAX_TOKENS)
    t = gen.attrs.get("temperature")
    temperature = (float(t) if isinstance(t, (int, float)) else
                   t.default() if isinstance(t, Range) else DEFAULT_TEMPERATURE)
    pdef = program.prompts[gen.attrs["prompt"]]
    targets = [_Target(name, pdef, max_tokens, temperature, how) for name in names(gen.attrs["model"])]
    checks = [(name, prompt_def(program, v)) for v in verifiers for name in names(v.attrs["model"])]
    return targets, list({name: p for name, p in checks}.items())


def calibrate(file: str | Path, data: str | Path, *, strategy: str | None = None,
              samples: int = DEFAULT_SAMPLES, pilot: int = DEFAULT_PILOT, max_tokens: int | None = None,
              scorer: str = "number", answer_field: str = "answer", limit: int | None = None,
              engine: str = "auto", device: str | None = None, seed: int = 0,
              group_field: str | None = "difficulty", log: Callable[[str], None] = print,
              save: bool = True, pilot_feature: str = DEFAULT_PILOT_FEATURE) -> Calibration:
    """Run pilot samples of FILE's strategy on `data` and store FILE.calibration.json."""
    from ttsc.compiler import model_facts
    from ttsc.compiler.passes.inline import inline
    from ttsc.compiler.passes.manager import run_passes
    from ttsc.compiler.pipeline import pick_strategy, program_for, read_source
    from ttsc.compiler.build import build
    from ttsc.dsl.parser import parse
    from ttsc.runtime.engines.registry import make_engine
    from ttsc.runtime.eval import load_dataset
    from ttsc.runtime.scorers import get_scorer

    if samples < 2 or not 1 <= pilot < samples:
        raise UserError("need --samples >= 2 and 1 <= --pilot < --samples")
    if pilot_feature not in PILOT_FEATURES:
        raise UserError(f"unknown --pilot-feature {pilot_feature!r} "
                        f"(one of {', '.join(PILOT_FEATURES)})")
    source = read_source(file)
    built = build(parse(source, str(file)))
    built.diagnostics.raise_if_errors({str(file): source})
    program = program_for(built, pick_strategy(built, strategy))
    run_passes(program, [inline])
    rows = load_dataset(data, program.params, answer_field, limit)
    is_right = get_scorer(scorer)
    gold = lambda r: str(r[answer_field])  # noqa: E731
    targets, verifiers = _targets(program)
    models: dict[str, ModelCalibration] = {}
    pools: dict[str, PilotSamples] = {}
    drawn: dict[tuple, PilotSamples] = {}
    engines: dict[str, Engine] = {}
    input_tokens = None
    try:
        for target in targets:
            spec = program.models[target.model]
            if spec not in engines:
                engines[spec] = make_engine(spec, engine=engine, device=device)
                loaded = getattr(engines[spec], "loaded", None)
                if loaded is not None:
                    model_facts.cache_model_facts(spec, loaded)
            eng = engines[spec]
            mt = max_tokens or target.max_tokens
            key = (spec, mt, target.temperature)
            if key in drawn:  # another name for the same model: the same samples
                pool = drawn[key]
            else:
                log(f"{target.model} ({spec}): {samples} samples x {len(rows)} questions, "
                    f"max_tokens={mt}, temperature={target.temperature:g}")
                pool = drawn[key] = draw_samples(
                    eng, target.prompt, rows, program.params, samples=samples, max_tokens=mt,
                    temperature=target.temperature, how=target.how, gold=gold, is_right=is_right,
                    seed=seed, model=target.model, spec=spec)
            pools[target.model] = pool
            models[target.model] = fit_model(pool, rows, gold, is_right, group_field, pilot,
                                             feature=pilot_feature, seed=seed)
            tok = getattr(eng, "tokenizer", None)
            if tok is not None and input_tokens is None:
                lengths = [len(tok(str(r[program.params[0]]), add_special_tokens=False)["input_ids"])
                           for r in rows]
                input_tokens = sum(lengths) / len(lengths)
        reliabilities: dict[str, float] = {}
        first = pools[targets[0].model]
        for name, pdef in verifiers:
            spec = program.models[name]
            if spec not in engines:
                engines[spec] = make_engine(spec, engine=engine, device=device)
            scores = _verifier_scores(engines[spec], pdef, rows, program.params, first)
            rho = verifier_reliability(first.correct, scores, seed=seed)
            if rho is not None:
                reliabilities[name] = rho
    finally:
        for e in engines.values():
            e.close()
    cal = Calibration(strategy=program.strategy, file=str(file), data=str(data),
                      pilot={"samples_per_question": samples, "pilot_samples": pilot,
                             "pilot_feature": pilot_feature,
                             "max_tokens": max_tokens or targets[0].max_tokens,
                             "temperature": targets[0].temperature, "scorer": scorer, "seed": seed},
                      models=models, verifiers=reliabilities, input_tokens=input_tokens,
                      created=time.time())
    if save:
        path = calibration_path(file)
        path.write_text(cal.to_json())
        log(f"saved {path}")
    return cal


def _verifier_scores(engine: Engine, pdef: dict[str, Any], rows: Sequence[dict[str, Any]],
                     params: list[str], pool: PilotSamples) -> list[list[float]]:
    import math

    from ttsc.common.prompts import render_prompt

    requests = [NextTokenRequest(render_prompt(pdef, {**{p: row[p] for p in params},
                                                      "candidate": text}), ("Yes", "No"))
                for row, texts in zip(rows, pool.texts) for text in texts]
    flat = [o.logprobs for o in engine.score_next(requests)]
    scores = [1 / (1 + math.exp(n - y)) for y, n in flat]
    width = len(pool.texts[0])
    return [scores[i:i + width] for i in range(0, len(scores), width)]


def summary(cal: Calibration, pools: dict[str, PilotSamples] | None = None) -> str:
    """A table of the fitted figures and the vote accuracy they predict."""
    lines = []
    for name, m in cal.models.items():
        model = m.model()
        med = m.finished_lengths[len(m.finished_lengths) // 2] if m.finished_lengths else None
        lines.append(f"{name} ({m.spec}): {m.questions} questions x {m.samples_per_question} samples")
        lines.append(f"  per-sample accuracy  Beta(a={m.a:.3f}, b={m.b:.3f}), mean {model.prior.mean:.3f}")
        lines.append(f"  wrong answers        {m.wrong_concentration:.2f} agree on one")
        lines.append(f"  finished             {m.finished_share:.1%}, median {med} tokens")
        for g, v in m.groups.items():
            lines.append(f"  group {g:<14} Beta(a={v['a']:.3f}, b={v['b']:.3f}), "
                         f"mean {v['a'] / (v['a'] + v['b']):.3f}")
        for b in m.pilot_bins:
            lines.append(f"  pilot {m.pilot_feature} <= {b['hi']:.3f} ({b['questions']} questions): "
                         "vote acc by total " + " ".join(f"{t}:{v:.2f}" for t, v in b["curve"].items()))
        ks = [k for k in (1, 4, 16, 64)]
        lines.append("  predicted vote acc   " + "  ".join(
            f"k={k}: {model.vote_accuracy(k):.3f}" for k in ks))
    for name, rho in cal.verifiers.items():
        lines.append(f"verifier {name}: reliability {rho:.2f}")
    return "\n".join(lines)


def cmd_calibrate(args: argparse.Namespace) -> int:
    cal = calibrate(args.file, args.data, strategy=args.strategy, samples=args.samples,
                    pilot=args.pilot, max_tokens=args.max_tokens, scorer=args.scorer,
                    answer_field=args.answer_field, limit=args.limit, engine=args.engine,
                    device=args.device, seed=args.seed, group_field=args.group_field or None,
                    save=not args.dry_run, pilot_feature=args.pilot_feature)
    print(summary(cal))
    return 0


def register_cli(subparsers: Any) -> None:
    """Add `ttsc calibrate` to the CLI's subparsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    c = subparsers.add_parser(
        "calibrate", formatter_class=fmt, help="fit the utility model from pilot samples",
        description="Draw pilot samples of the strategy's first `generate` (for every model it "
                    "may use) on a dev set, score them, and fit the utility model the budget "
                    "allocator uses: a Beta of per-question accuracy (per difficulty group too), "
                    "how wrong answers cluster, completion lengths, accuracy by pilot agreement, "
                    "and the verifier's reliability. Stored beside the strategy as "
                    "FILE.calibration.json; `ttsc compile FILE` reads it.",
        epilog="example:\n  ttsc calibrate examples/search_space.tts "
               "--data examples/data/addition_dev.jsonl --samples 16")
    c.add_argument("file", metavar="FILE")
    c.add_argument("--data", required=True, metavar="dev.jsonl",
                   help="dev questions with gold answers (JSONL)")
    c.add_argument("--strategy", help="which strategy (default: the last one in the file)")
    c.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                   help="samples per question (default %(default)s)")
    c.add_argument("--pilot", type=int, default=DEFAULT_PILOT,
                   help="pilot samples whose score predicts difficulty (default %(default)s)")
    c.add_argument("--pilot-feature", choices=PILOT_FEATURES, default=DEFAULT_PILOT_FEATURE,
                   help="the pilot's score: agreement of its answers, their mean token "
                        "probability (confidence), or both (confident_agreement); "
                        "default %(default)s")
    c.add_argument("--max-tokens", type=int, help="tokens per sample (default: the strategy's)")
    c.add_argument("--scorer", default="number", help="number (default), exact, choice or regex")
    c.add_argument("--answer-field", default="answer", help="field holding the gold answer")
    c.add_argument("--group-field", default="difficulty",
                   help="field to fit per-group Betas by, when present (default %(default)s)")
    c.add_argument("--limit", type=int, help="only the first N questions")
    c.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    c.add_argument("--engine", default="auto", help="engine (default: auto)")
    c.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    c.add_argument("--dry-run", action="store_true", help="fit and print, write nothing")
    c.set_defaults(func=cmd_calibrate)
