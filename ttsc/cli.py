"""The `ttsc` command line.

    ttsc check FILE...                    report every error and warning
    ttsc compile FILE [--explain]         show the plan (--emit json, --dot)
    ttsc run FILE --input question="..."  answer one input
    ttsc eval FILE --data FILE.jsonl      accuracy over a data set
    ttsc profile MODEL                    measure an engine for the cost model
    ttsc calibrate FILE --data dev.jsonl  fit the utility model the allocator uses
    ttsc search SPACE --data dev.jsonl    search a space of strategies (ttsc/search_cli.py)
    ttsc serve FILE [--port 8000]         serve strategies as an OpenAI-compatible API

A user mistake prints `FILE:LINE:COL: error: ...` (or the data file's line)
and exits with status 2; nothing a user can fix ends in a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from ttsc.common.errors import TTSError, UserError
from ttsc.data_flags import DATA_FORMS, SCORER_HELP
from ttsc.ray_flags import add_ray_flags, ray_options

EXAMPLES = """\
examples:
  ttsc check examples/*.tts
  ttsc compile examples/best_of_n.tts --explain
  ttsc compile examples/beam_search.tts --emit json > plan.json
  ttsc compile examples/beam_search.tts --dot | dot -Tpng > ir.png
  ttsc run examples/self_consistency.tts --input question="What is 3 + 4?"
  ttsc eval examples/self_consistency.tts --data examples/data/addition.jsonl --limit 30
  ttsc eval examples/self_consistency.tts --data "reasoning-gym:chain_sum?max_terms=2&size=60&seed=1"
  ttsc profile smollm2-135m
  ttsc calibrate examples/search_space.tts --data examples/data/addition_dev.jsonl
  ttsc search examples/search/sampling.tts --data examples/data/tiers_dev.jsonl --trials 20 --out runs/s
"""


def _stderr(text: str) -> None:
    print(text, file=sys.stderr)


def _key_values(items: Sequence[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} {item!r}: expected NAME=VALUE",
                            hint=f'for example {flag} question="What is 2 + 3?"')
        out[key.strip()] = value
    return out


def _print_warnings(warnings: list, sources: dict[str, str]) -> None:
    for w in warnings:
        _stderr(w.render(sources.get(w.span.file) if w.span else None))


# ------------------------------------------------------------------- commands

def cmd_check(args: argparse.Namespace) -> int:
    from ttsc.compiler.pipeline import check_source, read_source

    errors = warnings = 0
    for path in args.files:
        try:
            source = read_source(path)
        except UserError as exc:
            _stderr(exc.render())
            errors += 1
            continue
        diags = check_source(source, str(path))
        for d in diags:
            _stderr(d.render(source))
            _stderr("")
        e = sum(d.severity == "error" for d in diags)
        errors += e
        warnings += len(diags) - e
        if not e:
            print(f"{path}: ok" + (f" ({len(diags) - e} warning(s))" if len(diags) > e else ""))
    if len(args.files) > 1 or errors:
        print(f"{len(args.files)} file(s) checked: {errors} error(s), {warnings} warning(s)")
    return 2 if errors else 0


def cmd_compile(args: argparse.Namespace) -> int:
    from ttsc.compiler.dot import to_dot
    from ttsc.compiler.explain import explain, plan_summary
    compiled = _compile(args)
    if args.dot is not None:
        dot = to_dot(compiled.program.graph, f"{compiled.plan.strategy} ({args.file})")
        if args.dot == "-":
            sys.stdout.write(dot)
        else:
            Path(args.dot).write_text(dot)
            _stderr(f"wrote {args.dot}")
        if args.emit != "json" and not args.explain:
            return 0
    if args.emit == "json":
        print(compiled.plan.to_json())
        return 0
    print(explain(compiled) if args.explain else plan_summary(compiled.plan))
    return 0


def _compile(args: argparse.Namespace, budget_tokens: float | None = None,
             probe: bool = False) -> Any:
    """The file compiled for the command's models (`--model`) and engine
    (`--engine`: an op it cannot serve is an error here, before anything
    loads; with `probe`, a server is asked what it serves); its warnings
    printed."""
    from ttsc.compiler.pipeline import compile_file
    from ttsc.runtime.engines.setup import capabilities_of

    compiled = compile_file(args.file, args.strategy, budget_tokens,
                            models=_key_values(args.model, "--model"),
                            capabilities=capabilities_of(args.engine, probe))
    _print_warnings(compiled.warnings, {compiled.program.file: compiled.program.source})
    return compiled


def cmd_run(args: argparse.Namespace) -> int:
    from ttsc.api import make_engines, open_cache
    from ttsc.compiler.explain import trace_table
    from ttsc.runtime.executor import Executor

    plan = _compile(args, probe=True).plan
    inputs = _key_values(args.input, "--input")
    unknown = [k for k in inputs if k not in plan.params]
    if unknown:
        raise UserError(f"--input {unknown[0]}=...: strategy `{plan.strategy}` has no parameter "
                        f"`{unknown[0]}`", hint=f"its parameters: {', '.join(plan.params)}")
    missing = [p for p in plan.params if p not in inputs]
    if missing:
        raise UserError(f"missing input `{missing[0]}` for strategy `{plan.strategy}`",
                        hint=f'pass it with --input {missing[0]}="..."')
    if any(n.facts.get("adaptive") for n in plan.region.nodes.values()):
        raise UserError(f"strategy `{plan.strategy}` spends a total token budget across a data set",
                        hint="evaluate it with `ttsc eval --data ...`, or write the budget "
                             "`per input` to run one question")
    cache = open_cache(_cache_path(args))
    engines = make_engines(plan, args.engine, args.device, cache=cache)
    result = Executor(plan, engines, seed=args.seed).run([inputs])
    answer = result.outputs[0]
    print(answer if isinstance(answer, str) else json.dumps(_jsonable(answer), indent=2))
    _stderr(f"[{plan.strategy}] {result.summary()}")
    if args.trace:
        _stderr(trace_table(result.trace))
    return 0


def _cache_path(args: argparse.Namespace) -> str | None:
    """--cache PATH, --no-cache, or the default call cache."""
    if args.no_cache:
        return None
    return args.cache or "default"


def _jsonable(value: Any) -> Any:
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if hasattr(value, "text"):
        return value.text
    return value


def cmd_eval(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TextColumn

    from ttsc.api import make_engines, open_cache
    from ttsc.compiler.explain import plan_summary
    from ttsc.runtime.allocation.adaptive import (adaptive_target, check_budget, evaluate_adaptive,
                                                  vote_table)
    from ttsc.runtime.eval import evaluate, load_dataset, load_results, run_signature, scorer_for
    from ttsc.runtime.scorers import check_golds

    compiled = _compile(args, budget_tokens=args.budget_tokens, probe=True)
    plan = compiled.plan
    # Everything that can be checked is checked before any model loads.
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1 (got {args.batch_size})",
                        hint="it is how many inputs run at once; the default is 8")
    rows = load_dataset(args.data, plan.params, args.answer_field, args.limit)
    scorer = scorer_for(rows, args.scorer)
    check_golds(scorer, rows, args.data, args.answer_field)
    done = (load_results(args.out, run_signature(plan, args.seed, rows.source), force=args.force)
            if args.out else {})
    target = adaptive_target(plan)
    ray = ray_options(args)
    if ray is not None and target is not None:
        raise UserError("--ray does not spread a total token budget (n=auto) over workers yet",
                        hint="drop --ray, or write the budget `per input`")
    if target is not None:
        values, cal = vote_table(plan, target, args.calibration)
        spent = sum(r["tokens"]["computed"] for r in done.values())
        check_budget(target, cal, len(rows) - len(done), spent)
    elif args.calibration:
        raise UserError("--calibration is read only for `n=auto` under a total token budget",
                        hint="add --budget-tokens T, or `budget { tokens <= T total }` to the file")
    greedy_plan = _greedy_plan(compiled, args, scorer) if args.greedy else None
    cache = open_cache(_cache_path(args))
    if not args.quiet:
        _stderr(plan_summary(plan))
    engines = make_engines(plan, args.engine, args.device, cache=cache) if ray is None else {}
    with Progress(TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=False, disable=args.quiet, console=None) as progress:
        task = progress.add_task("eval", total=len(rows))
        common = dict(scorer=scorer, answer_field=args.answer_field, seed=args.seed,
                      batch_size=args.batch_size, out=args.out, data=rows.source,
                      on_item=lambda done, total: progress.update(task, completed=done))
        log = None if args.quiet else progress.console.print

        def run(plan_: Any, log: Any, **kw: Any) -> Any:
            """`plan_` over the rows, on Ray workers (--ray) or the local engines."""
            if ray is None:
                return evaluate(plan_, engines, rows, **kw)
            from ttsc.runtime.distributed.evaluate import evaluate_on_ray

            return evaluate_on_ray(plan_, rows, options=ray, engine=args.engine,
                                   device=args.device, cache=cache, log=log, **kw)

        greedy = None
        if greedy_plan is not None:
            # First, and with no results file: its calls come from the call
            # cache on a rerun, and a resumed --out stays the strategy's own.
            greedy = run(greedy_plan, None, **{**common, "out": None})
            progress.update(task, completed=0)
        if target is None:  # (--ray with a total budget was refused above)
            summary = run(plan, log, **common)
        else:
            summary = evaluate_adaptive(plan, engines, rows, target, values, log=log, **common)
    print(eval_report(summary, plan.strategy, args, greedy))
    if args.json:
        print(json.dumps({**summary.as_dict(), **({"greedy": greedy.as_dict()} if greedy else {})}))
    return 0


def _greedy_plan(compiled: Any, args: argparse.Namespace, scorer: str) -> Any:
    """The plan of greedy decoding with the strategy's first generator
    (runtime/baseline.py), compiled for the same models and engine."""
    from ttsc.compiler.pipeline import compile_source
    from ttsc.runtime.baseline import greedy_source
    from ttsc.runtime.engines.setup import capabilities_of

    program = compiled.program
    text = greedy_source(program.source, program.file, compiled.plan, scorer)
    return compile_source(text, f"{program.file} (greedy decoding)",
                          models=_key_values(args.model, "--model"),
                          capabilities=capabilities_of(args.engine)).plan


def eval_report(summary: Any, strategy: str, args: argparse.Namespace, greedy: Any = None) -> str:
    lines = [f"strategy       {strategy} ({args.file})",
             f"data           {args.data} ({summary.items} items"
             + (f", {summary.items - summary.run_items} resumed from {args.out}" if
                summary.run_items < summary.items else "") + ")"]
    if greedy is not None:
        glo, ghi = greedy.accuracy_ci
        lines.append(f"greedy         {greedy.accuracy:7.1%}   (n=1, temperature 0, the first generator; "
                     f"95% CI {glo:.1%} to {ghi:.1%}; {greedy.tokens_per_input:.1f} tokens/input)")
    if summary.sample_accuracy is not None:
        lines.append(f"single sample  {summary.sample_accuracy:7.1%}   (mean accuracy of one sample)")
    lo, hi = summary.accuracy_ci
    lines.append(f"accuracy       {summary.accuracy:7.1%}   ({summary.correct}/{summary.items}; "
                 f"95% CI {lo:.1%} to {hi:.1%})")
    if greedy is not None:
        gain = 100 * (summary.accuracy - greedy.accuracy)
        times = summary.tokens_per_input / max(greedy.tokens_per_input, 1e-9)
        lines.append(f"vs greedy      {gain:+6.1f} points   at {times:.1f}x its tokens per input")
    if summary.pass_at:
        lines.append("coverage       " + ", ".join(f"pass@{k} {v:.1%}" for k, v in summary.pass_at.items())
                     + "   (unbiased estimator over each item's samples)")
    lines.append(f"tokens/input   {summary.tokens_per_input:9.1f}   computed (prompt computed + "
                 f"generated); {summary.requested_per_input:.1f} requested, "
                 f"{summary.generated_per_input:.1f} generated")
    if summary.budget is not None:
        lines.append(f"budget         {summary.tokens:,} of {summary.budget:,.0f} tokens")
    u = summary.usage
    if u.cache_hits or u.cache_misses:
        lines.append(f"call cache     {u.cache_hits} hits, {u.cache_misses} misses"
                     + ("   (nothing computed)" if not u.cache_misses else ""))
    lines.append(f"wall time      {summary.seconds:9.1f} s")
    return "\n".join(lines)


def cmd_profile(args: argparse.Namespace) -> int:
    from ttsc.runtime.profile import Timing, profile_model

    def show(t: Timing) -> None:
        rate = (t.batch * t.prompt_tokens if t.kind == "prefill" else t.batch * t.decode_tokens)
        print(f"  {t.kind:<8} batch={t.batch:<3} prompt={t.prompt_tokens:<5} "
              f"decode={t.decode_tokens:<3} {t.seconds:7.3f} s  ({rate / t.seconds:8.1f} tok/s)")

    batch_sizes, prompt_tokens = _ints(args.batch_sizes), _ints(args.prompt_tokens)
    print(f"profiling {args.model} on engine {args.engine} ...")
    profile = profile_model(args.model, args.engine, args.device, batch_sizes=batch_sizes,
                            prompt_tokens=prompt_tokens, decode_tokens=args.decode_tokens,
                            save=not args.dry_run, on_timing=show)
    print(f"effective roofline: {profile.peak_flops / 1e9:.1f} GFLOP/s, "
          f"{profile.bandwidth / 1e9:.2f} GB/s, {profile.overhead_s * 1e3:.2f} ms per forward pass "
          f"({profile.engine}, {profile.device}, {profile.dtype_bytes}-byte weights)")
    if profile.path:
        print(f"saved {profile.path}")
    if args.json:
        print(profile.to_json())
    return 0


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise UserError(f"expected positive whole numbers, got {text!r}")
    return values


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ttsc.runtime.calibrate import calibrate_file, summary

    cal = calibrate_file(args.file, args.data, strategy=args.strategy, samples=args.samples,
                         pilot=args.pilot, max_tokens=args.max_tokens, scorer=args.scorer,
                         answer_field=args.answer_field, limit=args.limit, engine=args.engine,
                         device=args.device, cache=_cache_path(args), seed=args.seed,
                         group_field=args.group_field or None, pilot_feature=args.pilot_feature,
                         models=_key_values(args.model, "--model"), out=args.out,
                         save=not args.dry_run, log=_stderr)
    print(summary(cal))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve every strategy of the file (or --strategy) as an OpenAI-compatible API."""
    import logging
    import os

    from ttsc.compiler.build import build
    from ttsc.compiler.pipeline import compile_source, read_source
    from ttsc.dsl.parser import parse
    from ttsc.runtime.engines.setup import capabilities_of, open_cache
    from ttsc.runtime.serve import Service, engines_for, serve

    source = read_source(args.file)
    names: list[str | None] = ([args.strategy] if args.strategy else
                               list(build(parse(source, str(args.file))).info.strategies) or [None])
    overrides = _key_values(args.model, "--model")
    plans, named = {}, {}
    for name in names:
        compiled = compile_source(source, str(args.file), name, models=overrides,
                                  capabilities=capabilities_of(args.engine))
        _print_warnings(compiled.warnings, {compiled.program.file: compiled.program.source})
        plans[compiled.plan.strategy] = compiled.plan
        named[compiled.plan.strategy] = name
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port}: expected a port number from 1 to 65535")
    api_key = args.api_key or os.environ.get("TTSC_SERVE_API_KEY") or None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per upstream call
    engines = engines_for(plans, args.engine, args.device,
                          open_cache(args.cache) if args.cache else None)
    for strategy, by_model in engines.items():  # what each server serves, now asked of it
        compile_source(source, str(args.file), named[strategy], models=overrides,
                       capabilities={m: e.capabilities for m, e in by_model.items()})
    service = Service(plans, engines)
    models = sorted({f"{m}={spec}" for plan in plans.values() for m, spec in plan.models.items()})
    _stderr(f"ttsc serve: {', '.join(plans)} on http://{args.host}:{args.port}/v1 "
            f"(models: {', '.join(models)}; {'API key required' if api_key else 'no API key'}); "
            "Ctrl-C stops")
    serve(service, host=args.host, port=args.port, api_key=api_key,
          shutdown_timeout=args.shutdown_timeout)
    return 0


def add_serve_parser(sub: Any, fmt: Any) -> None:
    c = sub.add_parser(
        "serve", formatter_class=fmt, help="serve strategies as an OpenAI-compatible API",
        description="Serve every strategy of FILE (or only --strategy) as an OpenAI-compatible "
                    "API: each strategy is a model of POST /v1/chat/completions and "
                    "/v1/completions (the last user message, or the prompt, fills the "
                    "strategy's first parameter; others come in the request's `inputs` object). "
                    "A request's n, temperature and max_tokens override the plan's; `stream` "
                    "works; usage counts every token the strategy spent. Concurrent requests "
                    "batch together in the engines. SIGINT/SIGTERM stop it gracefully.",
        epilog="examples:\n  ttsc serve examples/self_consistency.tts --port 8000\n"
               "  ttsc serve examples/best_of_n.tts --model policy=openai:http://127.0.0.1:8080/v1#m\n"
               "then, with the official client:\n"
               "  OpenAI(base_url=\"http://127.0.0.1:8000/v1\", api_key=\"-\").chat.completions"
               ".create(model=\"self_consistency\", messages=[...])")
    c.add_argument("file", metavar="FILE")
    c.add_argument("--strategy", help="serve only this strategy (default: all of them)")
    c.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    c.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")
    c.add_argument("--api-key", metavar="KEY",
                   help="require `Authorization: Bearer KEY` (or set TTSC_SERVE_API_KEY)")
    c.add_argument("--model", action="append", default=[], metavar="NAME=SPEC",
                   help="use another model for a model name (repeatable)")
    c.add_argument("--engine", default="auto", choices=["auto", "hf", "paged"],
                   help="torch engine to run local models on (default: auto)")
    c.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    c.add_argument("--cache", metavar="PATH",
                   help="answer repeated calls of the same seed from this call cache (default: none)")
    c.add_argument("--shutdown-timeout", type=float, default=30.0, metavar="S",
                   help="on SIGINT/SIGTERM, seconds in-flight requests get to finish "
                        "(default %(default)s)")
    c.set_defaults(func=cmd_serve)


# --------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="ttsc", formatter_class=fmt,
        description="ttsc compiles test-time-scaling strategies (.tts files) for LLMs into "
                    "inspectable plans and runs them fast.",
        epilog=EXAMPLES)
    p.add_argument("--version", action="version", version="ttsc 0.1.0")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("check", formatter_class=fmt, help="check .tts files for errors",
                       description="Parse and type-check .tts files. Reports every error and "
                                   "warning it finds as FILE:LINE:COL, with the line and a caret. "
                                   "Exit status 2 if any file has an error.")
    c.add_argument("files", nargs="+", metavar="FILE")
    c.set_defaults(func=cmd_check)

    c = sub.add_parser("compile", formatter_class=fmt, help="compile a strategy and show its plan",
                       description="Compile one strategy to a plan: stages of batched LLM calls, "
                                   "host steps and loop regions, after the optimization passes.",
                       epilog="examples:\n  ttsc compile examples/best_of_n.tts --explain\n"
                              "  ttsc compile examples/beam_search.tts --emit json\n"
                              "  ttsc compile examples/beam_search.tts --dot ir.dot")
    c.add_argument("file", metavar="FILE")
    c.add_argument("--strategy", help="which strategy (default: the last one in the file)")
    c.add_argument("--explain", action="store_true",
                   help="print what each pass changed and the stages with their static facts")
    c.add_argument("--emit", choices=["json"], help="print the plan as JSON")
    c.add_argument("--dot", nargs="?", const="-", metavar="PATH",
                   help="write Graphviz DOT of the IR (to PATH, or stdout)")
    c.add_argument("--model", action="append", default=[], metavar="NAME=SPEC",
                   help="compile for another model for a model name (as `ttsc run` would run it)")
    c.add_argument("--engine", default="auto", choices=["auto", "hf", "paged", "vllm"],
                   help="check every op against this engine's capabilities (default: auto)")
    c.set_defaults(func=cmd_compile)

    def runtime_args(c: argparse.ArgumentParser) -> None:
        c.add_argument("--strategy", help="which strategy (default: the last one in the file)")
        c.add_argument("--model", action="append", default=[], metavar="NAME=SPEC",
                       help="use another model for a model name, e.g. policy=hf:ORG/NAME "
                            "(repeatable)")
        c.add_argument("--seed", type=int, default=0, help="run seed (default 0): same seed, "
                       "same answers")
        c.add_argument("--engine", default="auto", choices=["auto", "hf", "paged", "vllm"],
                       help="engine to run models on (default: auto, the paged torch engine "
                            "for local models, vLLM for vllm: specs)")
        c.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
        c.add_argument("--cache", metavar="PATH",
                       help="call cache (SQLite): a repeated call with the same seed is answered "
                            "from it (default: calls.db under $TTSC_CACHE_DIR, ~/.cache/ttsc)")
        c.add_argument("--no-cache", action="store_true", help="compute every call; keep nothing")

    c = sub.add_parser("run", formatter_class=fmt, help="run a strategy on one input",
                       description="Run a strategy on one input and print its answer, then a "
                                   "one-line cost summary (calls, tokens, seconds) on stderr.",
                       epilog='example:\n  ttsc run examples/self_consistency.tts '
                              '--input question="What is 3 + 4?" --trace')
    c.add_argument("file", metavar="FILE")
    c.add_argument("--input", action="append", default=[], metavar="NAME=VALUE",
                   help="a strategy parameter (repeatable)")
    c.add_argument("--trace", action="store_true", help="print the per-stage trace")
    runtime_args(c)
    c.set_defaults(func=cmd_run)

    c = sub.add_parser("eval", formatter_class=fmt, help="evaluate a strategy on a JSONL data set",
                       description="Run a strategy over a JSONL data set (one object a line with "
                                   "the strategy's parameters and an answer field) and print "
                                   "accuracy, tokens per input and wall time. With --out, each "
                                   "item is appended as it finishes; rerunning resumes.",
                       epilog="example:\n  ttsc eval examples/self_consistency.tts "
                              "--data examples/data/addition.jsonl --limit 30 --out results.jsonl")
    c.add_argument("file", metavar="FILE")
    c.add_argument("--data", required=True, metavar="DATA", help=f"the data: {DATA_FORMS}")
    c.add_argument("--limit", type=int, help="only the first N items")
    c.add_argument("--scorer", help=SCORER_HELP)
    c.add_argument("--answer-field", default="answer", help="field holding the gold answer")
    c.add_argument("--out", metavar="results.jsonl", help="append per-item results here (resumable)")
    c.add_argument("--batch-size", type=int, default=8,
                   help="inputs in flight at once, each at its own pace (default 8)")
    c.add_argument("--force", action="store_true",
                   help="start over when --out holds results of another run (kept as FILE.old)")
    c.add_argument("--budget-tokens", type=float, metavar="T",
                   help="a total token budget for the whole data set: `n=auto` is allocated in "
                        "rounds, input by input, from the table `ttsc calibrate` fits (the same as "
                        "`budget { tokens <= T total }` in the file)")
    c.add_argument("--calibration", metavar="PATH",
                   help="the calibration to allocate with (default: the one `ttsc calibrate FILE` "
                        "stored)")
    c.add_argument("--greedy", action="store_true",
                   help="first evaluate greedy decoding (the strategy's first generator, n=1, "
                        "temperature 0: what a user has without a strategy) on the same items, and "
                        "print the strategy's gain against it")
    c.add_argument("--json", action="store_true", help="also print the summary as one JSON line")
    c.add_argument("--quiet", action="store_true", help="no plan summary or progress bar")
    add_ray_flags(c, "the inputs", "; same results file and answers")
    runtime_args(c)
    c.set_defaults(func=cmd_eval)

    from ttsc.runtime import calibrate, profile
    from ttsc.runtime.allocation import pilot

    c = sub.add_parser(
        "profile", formatter_class=fmt, help="measure a model's speed for the cost model",
        description="Time prefill and decode of MODEL on an engine at a few batch sizes and "
                    "prompt lengths, fit an effective roofline (FLOP/s, bytes/s, overhead per "
                    "forward pass) and store it as JSON under $TTSC_CACHE_DIR/profiles "
                    "(default ~/.cache/ttsc/profiles). `ttsc compile` predicts latency from it; "
                    "without one it uses documented defaults. Also caches the model's tokenizer "
                    "so compile-time token counts are exact.",
        epilog="examples:\n  ttsc profile smollm2-135m\n"
               "  ttsc profile smollm2-135m --engine paged --batch-sizes 1,16,64\n"
               "  ttsc profile hf:HuggingFaceTB/SmolLM2-360M-Instruct --device cuda")
    c.add_argument("model", metavar="MODEL", help="a model spec, e.g. smollm2-135m")
    c.add_argument("--engine", default="auto", help="engine to time (default: auto)")
    c.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    c.add_argument("--batch-sizes", default=",".join(map(str, profile.DEFAULT_BATCH_SIZES)),
                   metavar="B,B,...", help="rows per call (default %(default)s)")
    c.add_argument("--prompt-tokens", default=",".join(map(str, profile.DEFAULT_PROMPT_TOKENS)),
                   metavar="P,P,...", help="prompt lengths (default %(default)s)")
    c.add_argument("--decode-tokens", type=int, default=profile.DEFAULT_DECODE_TOKENS, metavar="N",
                   help="tokens generated per row (default %(default)s)")
    c.add_argument("--dry-run", action="store_true", help="measure and print, store nothing")
    c.add_argument("--json", action="store_true", help="also print the profile as JSON")
    c.set_defaults(func=cmd_profile)

    c = sub.add_parser(
        "calibrate", formatter_class=fmt, help="fit the utility model from pilot samples",
        description="Draw pilot samples of the strategy's first `generate` on a dev set, score "
                    "them, and fit the utility model the budget allocator uses: a Beta of "
                    "per-question accuracy (per difficulty group too), how wrong answers "
                    "cluster, completion lengths, accuracy by pilot agreement, the vote-state "
                    "table `ttsc eval` allocates a data-set token budget with (n=auto), and the "
                    "verifier's reliability. Stored under $TTSC_CACHE_DIR/calibrations, where "
                    "`ttsc compile` and `ttsc eval` find it (or --out PATH).",
        epilog="examples:\n  ttsc calibrate examples/search_space.tts "
               "--data examples/data/addition_dev.jsonl --samples 16\n"
               "  ttsc calibrate examples/adaptive_budget.tts --data examples/data/tiers_dev.jsonl "
               "--samples 32")
    c.add_argument("file", metavar="FILE")
    c.add_argument("--data", required=True, metavar="DEV",
                   help=f"dev questions with gold answers: {DATA_FORMS}")
    c.add_argument("--samples", type=int, default=calibrate.DEFAULT_SAMPLES,
                   help="samples per question (default %(default)s); n=auto allocates up to this")
    c.add_argument("--pilot", type=int, default=calibrate.DEFAULT_PILOT,
                   help="pilot samples whose score predicts difficulty (default %(default)s)")
    c.add_argument("--pilot-feature", choices=pilot.PILOT_FEATURES,
                   default=pilot.DEFAULT_PILOT_FEATURE,
                   help="the pilot's score: agreement of its answers, their mean token "
                        "probability (confidence), or both (confident_agreement); "
                        "default %(default)s")
    c.add_argument("--max-tokens", type=int, help="tokens per sample (default: the strategy's)")
    c.add_argument("--scorer", help=SCORER_HELP)
    c.add_argument("--answer-field", default="answer", help="field holding the gold answer")
    c.add_argument("--group-field", default="difficulty",
                   help="field to fit per-group Betas by, when present (default %(default)s)")
    c.add_argument("--limit", type=int, help="only the first N questions")
    c.add_argument("--out", metavar="PATH", help="write the calibration here instead")
    c.add_argument("--dry-run", action="store_true", help="fit and print, write nothing")
    runtime_args(c)
    c.set_defaults(func=cmd_calibrate)
    add_serve_parser(sub, fmt)

    from ttsc import search_cli

    search_cli.add_parser(sub, runtime_args)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except TTSError as exc:
        _stderr(exc.render())
        return 2
    except UserError as exc:
        _stderr(exc.render())
        return 2
    except KeyboardInterrupt:
        _stderr("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
