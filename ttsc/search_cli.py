"""`ttsc search`: its flags, its progress bar and what it prints.

The search itself is `ttsc.runtime.search`; this module only reads the
command line and shows the events the search reports.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ttsc.common.errors import UserError
from ttsc.data_flags import DATA_FORMS, SCORER_HELP
from ttsc.ray_flags import add_ray_flags, ray_options

DESCRIPTION = """\
Search a space of strategies (a .tts file with choice(...), range(...) and
auto knobs) for the configuration that scores best on a data set, with
Optuna: TPE for one objective, multi-objective TPE for two. Greedy decoding
(n=1, temperature 0) is evaluated first, as the baseline. Each trial is
compiled with its knobs fixed (`auto` knobs solved by the allocator against
the budget) and evaluated on the data; every model call goes through the
call cache, so a repeated configuration, or a second search, costs no
model calls. The study lives in a file: kill the search at any moment and
run the same command again; finished trials are kept, the trial that was
running is re-run, and the study ends with exactly --trials finished
trials. With --ray, trials run in parallel on Ray actors (each loads the
models once and shares the call cache through one cache actor) while this
process alone asks and tells Optuna; the study is then an Optuna journal
file (DIR/study.journal), and an actor that dies has its trial run again
on another. At the end: a table of trials (or the Pareto front), a plot, the
winners as concrete .tts files, and with --test or --holdout their
accuracy on held-out data."""

EXAMPLES = """\
examples:
  ttsc search examples/search/sampling.tts --data examples/data/tiers_dev.jsonl \\
      --trials 20 --out runs/sampling --test examples/data/tiers.jsonl
  ttsc search examples/search/aggregator.tts --data examples/data/addition_dev.jsonl \\
      --trials 12 --objective accuracy,tokens --out runs/agg
  ttsc search examples/search/archon.tts --data examples/data/tiers_dev.jsonl \\
      --trials 30 --holdout 0.3 --budget-tokens 1500 --out runs/archon
  ttsc search examples/search/sampling.tts --data examples/data/tiers_dev.jsonl \
      --trials 40 --out runs/sampling --ray HEAD:6379"""


def add_parser(sub: Any, runtime_flags: Any) -> None:
    c = sub.add_parser("search", formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="search a space of strategies for the best configuration",
                       description=DESCRIPTION, epilog=EXAMPLES)
    c.add_argument("file", metavar="SPACE.tts")
    c.add_argument("--data", required=True, metavar="DEV",
                   help=f"the data the search scores configurations on: {DATA_FORMS}")
    c.add_argument("--trials", type=int, required=True, metavar="N",
                   help="finished trials the study ends with (a rerun adds only what is missing)")
    c.add_argument("--out", required=True, metavar="DIR", help="where everything is written")
    c.add_argument("--objective", default="accuracy",
                   help="accuracy (default), accuracy,tokens or accuracy,latency")
    c.add_argument("--study", metavar="PATH",
                   help="the Optuna study, rerun to resume: SQLite (default DIR/study.db), or an "
                        "Optuna journal for a PATH ending .journal (with --ray it must be one; "
                        "default DIR/study.journal, under --out)")
    c.add_argument("--test", metavar="TEST",
                   help="held-out data to re-evaluate the winners on (a JSONL file or a "
                        "reasoning-gym: spec, as --data)")
    c.add_argument("--holdout", type=float, metavar="F",
                   help="hold out this fraction of --data (a seeded split) instead of --test")
    c.add_argument("--budget-tokens", type=float, metavar="T",
                   help="a token budget per input, the constraint every trial is held to "
                        "(the same as `budget { tokens <= T per input }`)")
    c.add_argument("--limit", type=int, help="only the first N items of --data")
    c.add_argument("--scorer", help=SCORER_HELP)
    c.add_argument("--answer-field", default="answer", help="field holding the gold answer")
    c.add_argument("--parallel", type=int, default=1, metavar="K",
                   help="trials in flight at once (with --ray: on each actor); their calls "
                        "share the engines' batches (default 1)")
    c.add_argument("--batch-size", type=int, default=8,
                   help="inputs in flight at once within a trial (default 8)")
    c.add_argument("--sampler", default="tpe", choices=["tpe", "random"],
                   help="tpe (default; multi-objective TPE for two objectives) or random search")
    c.add_argument("--sampler-seed", type=int, metavar="S",
                   help="seed of the sampler alone (default: --seed, which also seeds the model calls)")
    c.add_argument("--json", action="store_true", help="print the summary as one JSON line last")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    add_ray_flags(c, "the trials", "; this process alone talks to Optuna")
    runtime_flags(c)
    c.set_defaults(func=cmd_search)


def cmd_search(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ttsc.runtime.search import SearchOptions, search

    if args.no_cache:
        raise UserError("`ttsc search` always uses the call cache",
                        hint="it is what makes a repeated configuration free; --cache PATH moves it")
    models = {}
    for item in args.model:
        name, sep, spec = item.partition("=")
        if not sep or not name:
            raise UserError(f"--model {item!r}: expected NAME=SPEC")
        models[name.strip()] = spec
    options = SearchOptions(
        space=args.file, data=args.data, trials=args.trials, out=args.out, objective=args.objective,
        study=args.study, test=args.test, holdout=args.holdout, seed=args.seed,
        strategy=args.strategy, scorer=args.scorer, answer_field=args.answer_field,
        limit=args.limit, budget_tokens=args.budget_tokens, parallel=args.parallel,
        batch_size=args.batch_size, sampler=args.sampler, sampler_seed=args.sampler_seed,
        engine=args.engine, device=args.device,
        cache=args.cache or "default", models=models, ray=ray_options(args))
    console = Console(file=sys.stderr)
    view = _Progress(console, quiet=args.quiet)
    try:
        summary = search(options, view.event)
    finally:
        view.stop()
    print(_closing(summary))
    if args.json:
        print(json.dumps(summary))
    return 0


class _Progress:
    """One progress bar over trials, with the best accuracy so far; items of
    the trial in flight as its description (with --ray: the trials running
    on the actors, the bar fed as each actor's result arrives)."""

    def __init__(self, console: Any, quiet: bool):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn)

        self.console = console
        self.quiet = quiet
        self.progress = Progress(TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[best]}"), TextColumn("{task.description}"),
                                 TimeElapsedColumn(), console=console, disable=quiet)
        self.task = None
        self.best: tuple[float, int] | None = None
        self.greedy: float | None = None
        self.current = ""

    def event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "recovered":
            self._say(f"resuming: trial(s) {', '.join(map(str, data['trials']))} were cut off "
                      "and run again")
        elif kind == "greedy_start":
            self._say("evaluating greedy decoding (the baseline) ...")
        elif kind == "greedy":
            self.greedy = data["scores"].accuracy
            self._say(f"greedy decoding: {self.greedy:.1%} accuracy, "
                      f"{data['scores'].tokens_per_input:.1f} tokens per input")
        elif kind == "start":
            space = data["space"]
            size = f"{space.size:,} configurations" if space.size else "continuous"
            self._say(f"space: {len(space.dimensions)} knobs, {size}")
            if not self.quiet:
                self.progress.start()
            self.task = self.progress.add_task("", total=data["trials"], completed=data["finished"],
                                               best="best -")
        elif kind == "ray":
            self._say(data["text"])
        elif kind == "trial_start":
            self.current = f"trial {data['trial']}"
            self._describe("")
        elif kind == "running":  # --ray: the trials on the actors now
            numbers = data["trials"]
            self.current = (f"trial{'s' * (len(numbers) > 1)} {', '.join(map(str, numbers))} running"
                            if numbers else "")
            self._describe("")
        elif kind == "item":
            self._describe(f"{data['done']}/{data['total']} items")
        elif kind == "trial":
            scores = data.get("scores")
            if scores is not None and (self.best is None or scores.accuracy > self.best[0]):
                self.best = (scores.accuracy, data["number"])
            if self.task is not None:
                best = f"best {self.best[0]:.1%} (trial {self.best[1]})" if self.best else "best -"
                self.progress.update(self.task, advance=1, best=best, description="")
        elif kind == "table":
            self.stop()
            title = "Pareto front (accuracy against cost)" if data["front"] else "trials, best first"
            self.console.print(f"\n{title}; the first row is greedy decoding:", highlight=False)
            print(data["text"])
        elif kind == "test_start":
            self._say(f"held-out: evaluating {data['name']} on {data['items']} items ...")
        elif kind == "test_table":
            print(f"\nheld-out data ({data['items']} items):")
            print(data["text"])

    def _describe(self, text: str) -> None:
        if self.task is not None:
            self.progress.update(self.task, description=f"{self.current} {text}".strip())

    def _say(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, highlight=False)

    def stop(self) -> None:
        self.progress.stop()


def _closing(summary: dict[str, Any]) -> str:
    lines = []
    calls = summary["calls"]
    lines.append(f"\n{summary['trials']} finished trials ({summary['over_budget']} over budget); "
                 f"model calls (samples and scores): {calls['computed']:,} computed, "
                 f"{calls['cached']:,} answered from the cache")
    best = summary.get("best")
    if best:
        lines.append(f"best: trial {best['trial']}, {best['accuracy']:.1%} on the search data "
                     f"-> {best['file']}")
    if summary.get("front"):
        lines.append(f"Pareto front: {len(summary['front'])} configurations -> "
                     f"{summary['out']}/front/")
    test = summary.get("test")
    if test and "best" in test:
        verdict = "beats" if test["best_beats_greedy"] else "does not beat"
        lines.append(f"held-out: best {test['best']['accuracy']:.1%} {verdict} greedy decoding "
                     f"{test['greedy']['accuracy']:.1%}")
    lines.append(f"plot: {summary['plot']}; every trial: {summary['out']}/trials.jsonl")
    return "\n".join(lines)
