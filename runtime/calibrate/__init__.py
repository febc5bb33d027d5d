"""`ttsc calibrate FILE --data dev.jsonl`: fit the utility model from pilot samples.

The strategy is compiled like any other (compiler/pipeline.py); from its Plan,
the first `generate` is sampled `--samples` times for every dev question
(pool.py, through the executor and the call cache), its answers extracted
and scored, and fitted (fit.py):

- Beta(a, b) of per-question accuracy (maximum likelihood on the per-question
  counts of right samples), also per `difficulty` group when the data has one;
- the share of wrong samples that agree on the most common wrong answer;
- the lengths of completions that finished, and the share that finished;
- per pilot agreement (how many of the first `--pilot` samples agree), a Beta
  of the remaining samples' accuracy: a difficulty predictor that needs no
  labels at test time;
- per bin of a pilot score (`--pilot-feature`), the measured vote accuracy at
  each total sample count with the pilot kept as votes (allocation/pilot.py);
- the vote-state table of the rounds allocation that `ttsc eval` runs for
  `n=auto` under a data-set token budget, with its confidence threshold
  chosen on the dev set (allocation/rounds.py, allocation/threshold.py);
- for each `verify` that judges those samples, its reliability: how much of
  the gap between pass@1 and coverage its best-of-k choice closes.

The result is stored where the compiler looks for it (the calibrations room
of the ttsc cache directory, keyed by the strategy file; `--out` writes
elsewhere), and records the model, prompt and sampling settings it was
fitted for, so that using it for another is an error.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ttsc.common.errors import UserError
from ttsc.common.prompts import Prompt
from ttsc.compiler.plan import Plan, PlanNode
from ttsc.compiler.utility import Calibration, ModelCalibration, calibration_path
from ttsc.runtime.allocation.pilot import DEFAULT_PILOT_FEATURE, PILOT_FEATURES
from ttsc.runtime.calibrate.fit import fit_model, fit_vote_table, verifier_reliability
from ttsc.runtime.calibrate.pool import PilotSamples, draw_pool
from ttsc.runtime.engines.base import Engine
from ttsc.runtime.scorers import gold_of

DEFAULT_SAMPLES = 16
DEFAULT_PILOT = 4


def calibration_target(plan: Plan) -> tuple[PlanNode, dict[str, Any], list[PlanNode]]:
    """(the plan's first generate, how its answers are extracted, the verify
    nodes that judge its samples, one per model)."""
    nodes = plan.region.nodes
    gens = [nodes[n] for s in plan.region.stages if s.kind == "llm" for n in s.nodes
            if nodes[n].op == "generate"]
    if not gens:
        raise UserError(f"strategy `{plan.strategy}` has no top-level `generate` to calibrate")
    gen = gens[0]
    how = next((dict(n.attrs["how"]) for n in nodes.values()
                if n.op == "extract" and n.inputs.get("candidates") == gen.id), {"how": "number"})
    verifiers: dict[str, PlanNode] = {}
    for n in nodes.values():
        if n.op == "verify" and n.inputs.get("candidates") == gen.id:
            verifiers.setdefault(n.attrs["model"], n)
    return gen, how, list(verifiers.values())


def calibrated_for(plan: Plan, gen: PlanNode) -> dict[str, Any]:
    """What a calibration is only valid for: the model, the prompt, the settings."""
    return {"spec": plan.models[gen.attrs["model"]],
            "prompt": plan.prompts.get(gen.attrs.get("prompt") or "", {}),
            "temperature": gen.attrs.get("temperature"), "max_tokens": gen.attrs.get("max_tokens")}


def calibrate(plan: Plan, engines: dict[str, Engine], rows: Sequence[dict[str, Any]], *,
              data: str, scorer: Callable[[str | None, str], bool], scorer_name: str = "number",
              samples: int = DEFAULT_SAMPLES, pilot: int = DEFAULT_PILOT,
              answer_field: str = "answer", group_field: str | None = "difficulty", seed: int = 0,
              pilot_feature: str = DEFAULT_PILOT_FEATURE, vote_table: bool = True,
              concurrency: int = 8, log: Callable[[str], None] = print,
              on_item: Callable[[int], None] | None = None) -> tuple[Calibration, PilotSamples]:
    """Draw the pilot pool of `plan`'s first generate on `rows` and fit the calibration."""
    if samples < 2 or not 1 <= pilot < samples:
        raise UserError("need --samples >= 2 and 1 <= --pilot < --samples")
    if pilot_feature not in PILOT_FEATURES:
        raise UserError(f"unknown --pilot-feature {pilot_feature!r} (one of {', '.join(PILOT_FEATURES)})")
    gen, how, verifiers = calibration_target(plan)
    name = gen.attrs["model"]
    spec = plan.models[name]
    log(f"{name} ({spec}): {samples} samples x {len(rows)} questions, "
        f"max_tokens={gen.attrs.get('max_tokens')}, temperature={gen.attrs.get('temperature'):g}")

    def gold(row: dict[str, Any]) -> str:
        return gold_of(row, answer_field)  # the answer, carrying its row (reasoning_gym reads it)

    pool = draw_pool(plan, engines, rows, gen, samples=samples, how=how, gold=gold,
                     is_right=scorer, verifiers=verifiers, seed=seed, concurrency=concurrency,
                     on_item=on_item)
    log(f"drew {samples * len(rows)} samples in {pool.seconds:.1f} s")
    groups = ([str(r[group_field]) for r in rows]
              if group_field and all(group_field in r for r in rows) else None)
    model = fit_model(pool, rows, gold, scorer, group_field, pilot, feature=pilot_feature, seed=seed)
    if vote_table:
        log("fitting the vote-state table and choosing its confidence threshold on the dev set")
        model.vote_values = fit_vote_table(pool, groups, seed=seed)
    # Every model name for the same spec shares the fitted figures.
    models = {n: model for n, s in plan.models.items() if s == spec}
    reliabilities = {}
    for v in verifiers:
        rho = verifier_reliability(pool.correct, pool.verdicts[v.id], seed=seed)
        if rho is not None:
            reliabilities[v.attrs["model"]] = rho
    cal = Calibration(strategy=plan.strategy, file=plan.file, data=str(data),
                      pilot={"samples_per_question": samples, "pilot_samples": pilot,
                             "pilot_feature": pilot_feature, "generate": gen.id,
                             "prompt_tokens": sum(pool.prompt_tokens) / len(pool.prompt_tokens),
                             "generated_per_sample": (sum(map(sum, pool.lengths))
                                                      / max(1, sum(map(len, pool.lengths)))),
                             **calibrated_for(plan, gen), "scorer": scorer_name, "seed": seed},
                      models=models, verifiers=reliabilities,
                      input_tokens=_input_tokens(engines[name], rows, plan.params[0]),
                      created=time.time())
    return cal, pool


def calibrate_file(file: str | Path, data: str | Path, *, strategy: str | None = None,
                   samples: int = DEFAULT_SAMPLES, pilot: int = DEFAULT_PILOT,
                   scorer: str | None = None, answer_field: str = "answer", limit: int | None = None,
                   engine: str = "auto", device: str | None = None, cache: str | Path | None = None,
                   seed: int = 0, group_field: str | None = "difficulty",
                   pilot_feature: str = DEFAULT_PILOT_FEATURE, vote_table: bool = True,
                   max_tokens: int | None = None, models: dict[str, str] | None = None,
                   out: str | Path | None = None,
                   save: bool = True, log: Callable[[str], None] = print) -> Calibration:
    """Compile FILE, check the data, then draw, fit and (with `save`) store.
    `max_tokens` replaces the generate's own; `models` points model names at
    other specs, as `--model` does. `scorer` None: the one the data selects
    (`scorer_for`)."""
    from ttsc.compiler.pipeline import compile_file
    from ttsc.runtime.engines.setup import capabilities_of, close_engines, make_engines, open_cache
    from ttsc.runtime.eval import load_dataset, scorer_for
    from ttsc.runtime.scorers import get_scorer

    plan = compile_file(file, strategy, models=models, capabilities=capabilities_of(engine)).plan
    rows = load_dataset(data, plan.params, answer_field, limit)
    scorer = scorer_for(rows, scorer)
    is_right = get_scorer(scorer)
    gen, _, _ = calibration_target(plan)
    if max_tokens is not None:
        if max_tokens < 1:
            raise UserError(f"--max-tokens must be at least 1 (got {max_tokens})")
        gen.attrs["max_tokens"] = max_tokens
    engines = make_engines(plan, engine, device, cache=open_cache(cache))
    try:
        cal, _ = calibrate(plan, engines, rows, data=str(data), scorer=is_right, scorer_name=scorer,
                           samples=samples, pilot=pilot, answer_field=answer_field,
                           group_field=group_field, seed=seed, pilot_feature=pilot_feature,
                           vote_table=vote_table, log=log)
    finally:
        close_engines(engines)
    if save:
        log(f"saved {save_calibration(cal, out)}")
    return cal


def save_calibration(cal: Calibration, out: str | Path | None = None) -> Path:
    """Write `cal` to `out`, or where the compiler looks for the strategy's calibration."""
    path = Path(out) if out else calibration_path(cal.file)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(cal.to_json())
    except OSError as e:
        raise UserError(f"cannot write the calibration to {path}: {e.strerror or e}",
                        hint="choose another place with --out") from None
    return path


def _input_tokens(engine: Engine, rows: Sequence[dict[str, Any]], param: str) -> float | None:
    """Mean tokens of the task input, where the engine can count them."""
    if not engine.capabilities.tokenizer:
        return None
    empty = len(engine.tokenize(Prompt(raw="")))
    lengths = [len(engine.tokenize(Prompt(raw=str(r[param])))) - empty for r in rows]
    return sum(lengths) / len(lengths)


def summary(cal: Calibration) -> str:
    """A table of the fitted figures and the vote accuracy they predict; one
    block per fitted pool, naming every model name that shares it."""
    lines = []
    blocks: list[tuple[ModelCalibration, list[str]]] = []  # aliases share one fitted pool
    for name, m in cal.models.items():
        same = next((names for other, names in blocks if other == m), None)
        if same is not None:
            same.append(name)
        else:
            blocks.append((m, [name]))
    for m, names_of in blocks:
        model = m.model()
        med = m.finished_lengths[len(m.finished_lengths) // 2] if m.finished_lengths else None
        names = ", ".join(names_of)
        lines.append(f"{names} ({m.spec}): {m.questions} questions x {m.samples_per_question} samples")
        lines.append(f"  per-sample accuracy  Beta(a={m.a:.3f}, b={m.b:.3f}), mean {model.prior.mean:.3f}")
        lines.append(f"  wrong answers        {m.wrong_concentration:.2f} agree on one")
        lines.append(f"  finished             {m.finished_share:.1%}, median {med} tokens")
        for g, v in m.groups.items():
            lines.append(f"  group {g:<14} Beta(a={v['a']:.3f}, b={v['b']:.3f}), "
                         f"mean {v['a'] / (v['a'] + v['b']):.3f}")
        for b in m.pilot_bins:
            lines.append(f"  pilot {m.pilot_feature} <= {b['hi']:.3f} ({b['questions']} questions): "
                         "vote acc by total " + " ".join(f"{t}:{v:.2f}" for t, v in b["curve"].items()))
        if m.vote_values:
            lines.append(f"  rounds table         {len(m.vote_values['fine'])} vote states, confident at "
                         f"mean logprob >= {m.vote_values['confident']}")
        lines.append("  predicted vote acc   " + "  ".join(
            f"k={k}: {model.vote_accuracy(k):.3f}" for k in (1, 4, 16, 64)))
    for name, rho in cal.verifiers.items():
        lines.append(f"verifier {name}: reliability {rho:.2f}")
    return "\n".join(lines)
