"""`ttsc search`: find the best configuration of a space on a data set.

Everything is checked before a model loads (the space, the data and the
scorer, the held-out split, the output folder, the study). Then greedy
decoding is evaluated (the baseline), the study's trials run, each compiled
with its knobs fixed and evaluated on the data through one call cache, and
the winners are written as concrete .tts files and re-evaluated on held-out
data. With `ray` (`--ray`), evaluations run on Ray actors
(runtime/distributed/search.py) while this process alone asks and tells
Optuna, writes every file and feeds the progress events. Everything goes
under `out`:

    study.db                 the Optuna study (default; --study moves it);
                             with --ray an Optuna journal, study.journal
    greedy.tts, greedy.jsonl greedy decoding and its per-item lines
    trials/NNNN.tts, .jsonl  each trial's concrete program and per-item lines
    best.tts                 the most accurate feasible trial
    front/NN.tts             with two objectives: each Pareto front point
    test/*.jsonl             winners and greedy decoding on held-out data
    trials.jsonl             every trial's record; search.png, summary.json
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
from optuna.trial import Trial, TrialState

from ttsc.common.errors import UserError
from ttsc.compiler.plan import Plan
from ttsc.compiler.space import concrete_source
from ttsc.runtime.data import Rows
from ttsc.runtime.engines.setup import open_cache
from ttsc.runtime.eval import load_dataset, scorer_for
from ttsc.runtime.scorers import check_golds
from ttsc.runtime.search import report
from ttsc.runtime.baseline import greedy_source
from ttsc.runtime.search.engines import EnginePool
from ttsc.runtime.search.space import Space, load_space
from ttsc.runtime.search.study import (SAMPLERS, StudyLock, default_study_path, ensure_writable, finished,
                                       is_journal, open_study, parse_objectives, recover, requeue,
                                       run_trials)
from ttsc.runtime.search.trial import EvalJob, Evaluator, OverBudget, Scores

MIN_SPLIT_ITEMS = 5  # each side of a held-out split
SHOWN_TRIALS = 10  # rows of the final table (trials.jsonl holds them all)

Event = Callable[[str, dict[str, Any]], None]


@dataclass
class SearchOptions:
    space: str
    data: str
    trials: int
    out: str
    objective: str = "accuracy"
    study: str | None = None
    test: str | None = None
    holdout: float | None = None
    seed: int = 0
    strategy: str | None = None
    scorer: str | None = None  # None: the one the data selects (`scorer_for`)
    answer_field: str = "answer"
    limit: int | None = None
    budget_tokens: float | None = None
    parallel: int = 1
    batch_size: int = 8
    sampler: str = "tpe"  # or "random": the baseline search
    sampler_seed: int | None = None  # the sampler's own seed (default: `seed`, which also seeds the calls)
    engine: str = "auto"
    device: str | None = None
    cache: str | None = "default"
    models: dict[str, str] = field(default_factory=dict)
    ray: Any = None  # RayOptions: evaluate on Ray actors (`parallel` trials at once on each)


@dataclass
class Prepared:
    """A search checked and ready to run: nothing has loaded a model yet."""

    options: SearchOptions
    objectives: list[str]
    space: Space
    rows: Rows
    test_rows: Rows | None
    out: Path
    study_path: Path


def prepare(o: SearchOptions) -> Prepared:
    """Every check that needs no model: each mistake a UserError (exit 2)."""
    if o.trials < 1:
        raise UserError(f"--trials must be at least 1 (got {o.trials})")
    if o.parallel < 1:
        raise UserError(f"--parallel must be at least 1 (got {o.parallel})")
    if o.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1 (got {o.batch_size})")
    objectives = parse_objectives(o.objective)
    if o.sampler not in SAMPLERS:
        raise UserError(f"--sampler {o.sampler!r}: expected {' or '.join(SAMPLERS)}")
    space = load_space(o.space, o.strategy, o.budget_tokens)
    for name in o.models:
        if name not in _model_names(space):
            raise UserError(f"--model {name}=...: the file defines no model `{name}`")
    rows = load_dataset(o.data, space.params, o.answer_field, o.limit)
    o = dataclasses.replace(o, scorer=scorer_for(rows, o.scorer))
    check_golds(o.scorer, rows, o.data, o.answer_field)
    test_rows = None
    if o.test is not None and o.holdout is not None:
        raise UserError("--test and --holdout both name held-out data; give one")
    if o.test is not None:
        test_rows = load_dataset(o.test, space.params, o.answer_field)
        check_golds(o.scorer, test_rows, o.test, o.answer_field)
    elif o.holdout is not None:
        rows, test_rows = holdout_split(rows, o.holdout, o.seed, o.data)
    out = Path(o.out)
    ensure_writable(out)
    study_path = Path(o.study) if o.study else default_study_path(out, journal=o.ray is not None)
    if study_path.exists() and study_path.is_dir():
        name = default_study_path(study_path, journal=o.ray is not None)
        raise UserError(f"--study {study_path}: is a folder; give a file such as {name}")
    if o.ray is not None and not is_journal(study_path):
        raise UserError(f"--study {study_path}: with --ray the study is an Optuna journal, "
                        "a file ending .journal",
                        hint="give --study PATH.journal (a new file, or one an earlier search "
                             "wrote); SQLite is not shared between processes")
    return Prepared(o, objectives, space, rows, test_rows, out, study_path)


def _model_names(space: Space) -> set[str]:
    from ttsc.dsl.parser import parse

    return {m.name for m in parse(space.source, space.file).models()}


def _model_specs(p: Prepared) -> list[str]:
    """The specs the space's models point at (after --model): what a Ray
    worker loads."""
    from ttsc.dsl.parser import parse

    specs = {m.name: m.spec for m in parse(p.space.source, p.space.file).models() if m.spec}
    specs.update(p.options.models)
    return sorted(set(specs.values()))


def holdout_split(rows: Rows, fraction: float, seed: int, path: str) -> tuple[Rows, Rows]:
    """A seeded split of `rows`: (search part, held-out part)."""
    if not 0 < fraction < 1:
        raise UserError(f"--holdout must be a fraction between 0 and 1 (got {fraction:g})")
    n_test = round(len(rows) * fraction)
    if min(n_test, len(rows) - n_test) < MIN_SPLIT_ITEMS:
        raise UserError(
            f"{path}: {len(rows)} items are too few for a held-out split of {fraction:g} "
            f"({len(rows) - n_test} to search on, {n_test} held out; each side needs at least "
            f"{MIN_SPLIT_ITEMS})", hint="use more data, another --holdout, or --test FILE")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = sorted(order[:n_test])
    kept = sorted(order[n_test:])
    pick = lambda idx: Rows([rows[i] for i in idx], [rows.line_of(i) for i in idx])  # noqa: E731
    return pick(kept), pick(held)


def signature(p: Prepared) -> dict[str, Any]:
    """What makes two searches the same search (a study refuses another)."""
    o = p.options
    data = json.dumps([dict(r) for r in p.rows], sort_keys=True, default=str)
    return {"space": p.space.signature(), "strategy": p.space.strategy,
            "data": hashlib.sha256(data.encode()).hexdigest()[:16], "objectives": list(p.objectives),
            "scorer": o.scorer, "answer_field": o.answer_field, "seed": o.seed,
            "budget": _token_budget(p.space), "models": dict(sorted(o.models.items()))}


def about(p: Prepared) -> dict[str, str]:
    """The signature's digests in words, for a message naming what differs."""
    return {"space": f"`{p.space.strategy}` of {p.space.file}",
            "data": f"{p.options.data} ({len(p.rows)} items)"}


def _token_budget(space: Space) -> float | None:
    return ((space.budget or {}).get("tokens") or {}).get("value")


# ------------------------------------------------------------------ running


def search(o: SearchOptions, on_event: Event | None = None) -> dict[str, Any]:
    """Run the search `o` describes; returns its summary (also in summary.json)."""
    p = prepare(o)
    o = p.options  # with the scorer the data selects filled in
    emit = on_event or (lambda kind, data: None)
    start = time.perf_counter()
    with StudyLock(p.study_path):
        study = open_study(p.study_path, p.objectives,
                           o.seed if o.sampler_seed is None else o.sampler_seed, signature(p),
                           o.trials, o.sampler, about(p))
        rerun = recover(study)
        if rerun:
            emit("recovered", {"trials": rerun})
        cache = open_cache(o.cache)
        evaluator = Evaluator(p.space, None, o.scorer, o.answer_field, o.seed, o.batch_size,
                              dict(o.models), o.engine)
        with contextlib.ExitStack() as stack:
            if o.ray is None:
                evaluator.pool = EnginePool(cache, o.engine, o.device)
                stack.callback(evaluator.pool.close)
            else:
                from ttsc.runtime.distributed.search import search_workers

                evaluator.remote = stack.enter_context(search_workers(
                    o.ray, _model_specs(p), engine=o.engine, device=o.device, cache=cache,
                    scorer=o.scorer, answer_field=o.answer_field, seed=o.seed,
                    batch_size=o.batch_size, trials=o.trials, per_worker=o.parallel,
                    log=lambda line: emit("ray", {"text": line}),
                    on_event=lambda e: emit("worker", {"event": e})))
            greedy_text, greedy = _greedy(p, evaluator, emit)
            budget = _token_budget(p.space)
            (p.out / "trials").mkdir(exist_ok=True)
            done_before = len(finished(study))
            emit("start", {"trials": o.trials, "finished": done_before, "space": p.space})
            if o.ray is None:
                def objective(trial: Trial) -> tuple[float, ...] | None:
                    return _trial(p, evaluator, trial, budget, emit)

                run_trials(study, o.trials, o.parallel, objective, p.space.distributions())
            else:
                _trials_on_workers(p, evaluator, study, budget, emit)
            records = [report.record_of(t) for t in study.get_trials(deepcopy=False)]
            summary = _finish(p, evaluator, records, greedy, greedy_text, emit)
    summary["wall_s"] = round(time.perf_counter() - start, 2)
    (p.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _greedy(p: Prepared, evaluator: Evaluator, emit: Event) -> tuple[str, Scores]:
    # The space as written first: every knob at its first option (a range at
    # its midpoint), so the baseline does not move with the budget.
    first = {d.id: d.knob.default() for d in p.space.dimensions}
    try:
        default_plan = evaluator.compile(first)
    except OverBudget:
        default_plan = evaluator.compile({})  # the allocator's pick, within the budget
    text = greedy_source(p.space.source, p.space.file, default_plan, p.options.scorer)
    path = p.out / "greedy.tts"
    path.write_text(text)
    plan = evaluator.compile_source(text, str(path))
    emit("greedy_start", {"items": len(p.rows)})
    scores = evaluator.evaluate(plan, p.rows, p.out / "greedy.jsonl",
                                on_item=lambda d, t: emit("item", {"done": d, "total": t}))
    emit("greedy", {"scores": scores})
    return text, scores


def _trial(p: Prepared, evaluator: Evaluator, trial: Trial, budget: float | None,
           emit: Event) -> tuple[float, ...] | None:
    plan = _begin(p, evaluator, trial, budget, emit)
    if plan is None:
        return None
    scores = evaluator.evaluate(plan, p.rows, _stem(p, trial).with_suffix(".jsonl"),
                                on_item=lambda d, t: emit("item", {"done": d, "total": t}))
    return _end(p, trial, scores, budget, emit)


def _stem(p: Prepared, trial: Trial) -> Path:
    return p.out / "trials" / f"{trial.number:04d}"


def _begin(p: Prepared, evaluator: Evaluator, trial: Trial, budget: float | None,
           emit: Event) -> Plan | None:
    """A trial's plan, its concrete program written; None when it is over
    budget before any call (its reason and constraint recorded)."""
    space = p.space
    assignment = space.assignment(trial.params)
    trial.set_user_attr("knobs", {d.id: d.label(assignment[d.id]) for d in space.dimensions})
    emit("trial_start", {"trial": trial.number, "knobs": space.describe(assignment)})
    try:
        plan = evaluator.compile(assignment)
    except OverBudget as exc:
        trial.set_user_attr("reason", exc.reason)
        if budget is not None:
            trial.set_constraint("tokens_over_budget", exc.over)
        emit("trial", {"number": trial.number, "pruned": exc.reason})
        return None
    decided = plan.facts.get("knob_values", {})
    _stem(p, trial).with_suffix(".tts").write_text(concrete_source(space.source, space.file, decided))
    return plan


def _end(p: Prepared, trial: Trial, scores: Scores, budget: float | None,
         emit: Event) -> tuple[float, ...]:
    """Record what a trial measured; its objective values."""
    stem = _stem(p, trial)
    trial.set_user_attr("scores", scores.as_dict())
    trial.set_user_attr("files", {"tts": str(stem.with_suffix(".tts")),
                                  "results": str(stem.with_suffix(".jsonl"))})
    if budget is not None:
        trial.set_constraint("tokens_over_budget", (scores.tokens_per_input - budget) / budget)
    emit("trial", {"number": trial.number, "scores": scores})
    values: list[float] = [scores.accuracy]
    for cost in p.objectives[1:]:
        values.append(getattr(scores, report.COSTS[cost][0]) or 0.0)
    return tuple(values)


def _trials_on_workers(p: Prepared, evaluator: Evaluator, study: optuna.Study, budget: float | None,
                       emit: Event) -> None:
    """`run_trials` with the evaluations on Ray actors. This process alone
    asks and tells Optuna: a trial is asked for when an actor has room
    (TPE's constant liar keeps trials in flight apart) and told when its
    result arrives; one an actor was running when it died runs again
    elsewhere, still the same trial. On an error (Ctrl-C included) the
    trials in flight are marked FAIL and queued again, as `run_trials` does."""
    assert evaluator.remote is not None
    distributions = p.space.distributions()
    running: dict[int, Trial] = {}

    def jobs() -> Iterator[EvalJob]:
        while len(finished(study)) + len(running) < p.options.trials:
            trial = study.ask(distributions)
            running[trial.number] = trial
            plan = _begin(p, evaluator, trial, budget, emit)
            if plan is None:
                study.tell(trial, state=TrialState.PRUNED)
                del running[trial.number]
                continue
            emit("running", {"trials": sorted(running)})
            yield evaluator.job(plan, p.rows, _stem(p, trial).with_suffix(".jsonl"), tag=trial.number)

    try:
        for job, summary in evaluator.remote.run(jobs()):
            trial = running[job.tag]
            study.tell(trial, list(_end(p, trial, evaluator.finish(job, summary), budget, emit)))
            del running[job.tag]
            emit("running", {"trials": sorted(running)})
    except BaseException:
        for trial in running.values():
            requeue(study, trial)
        raise


# ------------------------------------------------------------------ the end


def _finish(p: Prepared, evaluator: Evaluator, records: list[report.Record], greedy: Scores,
            greedy_text: str, emit: Event) -> dict[str, Any]:
    o, out = p.options, p.out
    with open(out / "trials.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r.as_dict()) + "\n")
    describe = p.space.describe_labels
    cost = p.objectives[1] if len(p.objectives) > 1 else "tokens"
    front = report.pareto_front(records, cost)
    winner = report.best(records)
    winners: list[tuple[str, report.Record]] = []
    if winner is not None:
        shutil.copyfile(winner.files["tts"], out / "best.tts")
        winners.append(("best", winner))
    if len(p.objectives) > 1:
        front_dir = out / "front"
        if front_dir.exists():
            shutil.rmtree(front_dir)
        front_dir.mkdir()
        for i, r in enumerate(front, start=1):
            shutil.copyfile(r.files["tts"], front_dir / f"{i:02d}.tts")
            winners.append((f"front/{i:02d}", r))
    plot_path = out / "search.png"
    report.plot(records, greedy, front, cost, plot_path, _token_budget(p.space) if cost == "tokens" else None,
                f"{p.space.strategy} ({Path(p.space.file).name}) on {Path(o.data).name}: "
                f"{len(records)} trials")
    shown = (front if len(p.objectives) > 1 else
             sorted([r for r in records if r.scores], key=lambda r: (-r.scores.accuracy, r.number))
             [:SHOWN_TRIALS])
    rows = report.trial_rows(describe, greedy, shown)
    emit("table", {"text": report.table(rows), "front": len(p.objectives) > 1})
    test: dict[str, Any] = {}
    if p.test_rows is not None:
        test = _held_out(p, evaluator, winners, greedy_text, emit)
    computed = sum(r.scores.cache_misses for r in records if r.scores) + greedy.cache_misses
    cached = sum(r.scores.cache_hits for r in records if r.scores) + greedy.cache_hits
    finished_records = [r for r in records if r.state in ("complete", "over budget")]
    return {
        "space": p.space.file, "strategy": p.space.strategy, "data": o.data, "items": len(p.rows),
        "objectives": p.objectives, "trials": len(finished_records),
        "complete": sum(r.state == "complete" for r in records),
        "over_budget": sum(not r.feasible for r in finished_records),
        "space_size": p.space.size, "budget_tokens_per_input": _token_budget(p.space),
        "greedy": greedy.as_dict(),
        "best": _winner_dict(winner, out / "best.tts") if winner else None,
        "front": [_winner_dict(r, out / "front" / f"{i:02d}.tts") for i, r in enumerate(front, 1)]
        if len(p.objectives) > 1 else None,
        "test": test or None,
        "calls": {"computed": computed, "cached": cached},
        "out": str(out), "study": str(p.study_path), "plot": str(plot_path),
    }


def _winner_dict(r: report.Record, path: Path) -> dict[str, Any]:
    return {"trial": r.number, "file": str(path), "knobs": r.knobs, **r.scores.as_dict()}


def _held_out(p: Prepared, evaluator: Evaluator, winners: list[tuple[str, report.Record]],
              greedy_text: str, emit: Event) -> dict[str, Any]:
    """Greedy decoding and every winner, from the files written, on held-out data."""
    test_dir = p.out / "test"
    test_dir.mkdir(exist_ok=True)
    results: dict[str, Any] = {}
    rows: list[tuple[str, Scores | None, str, str]] = []
    entries = [("greedy", p.out / "greedy.tts", None)] + [
        (name, p.out / f"{name}.tts", r) for name, r in winners]
    for name, path, record in entries:
        plan = evaluator.compile_source(path.read_text(), str(path))
        emit("test_start", {"name": name, "items": len(p.test_rows)})
        scores = evaluator.evaluate(plan, p.test_rows, test_dir / f"{name.replace('/', '_')}.jsonl",
                                    on_item=lambda d, t: emit("item", {"done": d, "total": t}))
        results[name] = {**scores.as_dict(), "file": str(path),
                         **({"trial": record.number} if record else {})}
        label = "greedy" if record is None else f"{record.number}"
        what = ("greedy decoding: n=1, temperature=0" if record is None
                else f"{name}: {p.space.describe_labels(record.knobs)}")
        rows.append((label, scores, "", what))
    if "best" in results:
        g, b = results["greedy"], results["best"]
        results["best_beats_greedy"] = b["accuracy"] > g["accuracy"]
    emit("test_table", {"text": report.table(rows), "items": len(p.test_rows)})
    return results
