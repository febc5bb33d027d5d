"""The library benchmark: every strategy in examples/ on the embedded model,
against greedy decoding, on four data sets.

    python -P benchmarks/strategies.py [--strategies a,b] [--data addition,tiers,...]
        [--limit N] [--out DIR] [--plot PATH] [--cache PATH|none]

The strategies are every example .tts under examples/ (not examples/search/,
which holds spaces) whose strategy takes one input, `question`; each is run
through `ttsc eval`'s own evaluation (runtime.eval.evaluate, one engine per
model for the whole run, every call through one call cache). A file that
does not fit is listed with the reason: `SKIP` names the ones known not to
run here on purpose, a code strategy runs only on code data, a file that
does not compile or whose model cannot load says so. `LIBRARY` gives the
known ones a label and an order; a new example runs without being added.

Greedy decoding (n=1, temperature 0, self_consistency.tts's prompt and
max_tokens) is the first row of every table: what a user has with no
strategy. A strategy is flagged (`*`) when it beats greedy decoding by at
least 5 points with 95% intervals that do not overlap, at fewer tokens per
input than self-consistency n=16 (examples/self_consistency.tts) on the same
data.

Per strategy and data set: accuracy with its 95% bootstrap interval over
items (runtime.metrics), tokens computed per input (prompt computed +
generated: the headline of `ttsc eval`), generated tokens per input, wall
time, and the calls answered from the cache (a strategy that reuses another's
samples, as confidence_vote reuses self-consistency's, computes nothing: its
wall time is then not its cost; its tokens are, as recorded when computed).
A plot (one panel per data set) of accuracy against tokens per input marks
greedy decoding and the Pareto front. Per-item lines go to
DIR/DATA/STRATEGY.jsonl. Progress goes to stderr; the tables to stdout; the
last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

# The data sets: name -> (data, kind). The reasoning-gym tasks are set small
# enough that the 135M model solves some: two terms, small numbers, no
# parentheses or negation.
DATA: dict[str, tuple[str, str]] = {
    "addition": (str(EXAMPLES / "data/addition.jsonl"), "math"),
    "tiers": (str(EXAMPLES / "data/tiers.jsonl"), "math"),
    "chain_sum": ("reasoning-gym:chain_sum?min_terms=2&max_terms=2&min_digits=1&max_digits=2"
                  "&size=60&seed=1", "math"),
    "basic_arithmetic": ("reasoning-gym:basic_arithmetic?min_terms=2&max_terms=2&min_digits=1"
                         "&max_digits=1&operators=+,-,*&allow_parentheses=false"
                         "&allow_negation=false&size=60&seed=1", "math"),
}

# Known strategies, in table order, with a label: technique (paper). Any
# other example that fits runs too, after these, labelled by its header.
LIBRARY: dict[str, str] = {
    "self_consistency": "self-consistency n=16 (Wang et al. 2022)",
    "adaptive_consistency": "adaptive consistency (Aggarwal et al. 2023)",
    "confidence_vote": "confidence-filtered vote (DeepConf, Fu et al. 2025)",
    "multi_temperature": "multi-temperature pooling (2025)",
    "repeated_sampling": "repeated sampling, coverage (Brown et al. 2024)",
    "deepconf": "DeepConf offline: keep the most confident, vote (Fu et al. 2025)",
    "perplexity_vote": "perplexity-weighted vote (2025)",
    "best_of_n": "best-of-N, LLM verifier",
    "weighted_vote": "weighted vote, LLM verifier",
    "knockout": "knockout / pairwise self-verification",
    "beam_search": "step-level beam search, verifier",
    "dvts": "diverse verifier tree search (DVTS)",
    "particle_filter": "particle filtering (Puri et al. 2025)",
    "first_finish": "first-finish search (FFS)",
    "budget_forcing": "budget forcing (s1, Muennighoff et al. 2025)",
    "pal": "program-aided answering (PAL, Gao et al. 2023)",
    "pal_vote": "program of thoughts + self-consistency (Chen et al. 2023)",
    "pal_deepconf": "PAL with DeepConf's confidence filter",
    "debate": "multi-agent debate (Du et al. 2023)",
    "composed": "self-consistency over critique-and-refine",
    "archon": "Archon layers (Saad-Falcon et al. 2024)",
    "codemonkeys": "CodeMonkeys (Ehrlich et al. 2025)",
}

# Examples that are not run, and why.
SKIP: dict[str, str] = {
    "adaptive_budget": "spends one token budget over a whole data set: needs `ttsc calibrate` first",
    "search_space": "a search space (choice/range/auto knobs), for `ttsc search`",
}

GREEDY = "greedy"
REFERENCE = "self_consistency"  # the n=16 sampler a flagged strategy must undercut
GAIN = 0.05  # points over greedy decoding, as a fraction


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ the strategies


@dataclass
class Strategy:
    name: str
    label: str
    file: Path
    kind: str = "math"  # "code": runs only on code data


def greedy_file(out: Path) -> Path:
    """Greedy decoding as a .tts file: self_consistency.tts's model, prompt and
    max_tokens, one sample at temperature 0."""
    from ttsc.compiler.pipeline import compile_file
    from ttsc.runtime.baseline import greedy_source

    source_file = EXAMPLES / f"{REFERENCE}.tts"
    plan = compile_file(source_file).plan
    path = out / "greedy.tts"
    path.write_text(greedy_source(source_file.read_text(), str(source_file), plan, "number"))
    return path


def _header(path: Path) -> str:
    """The first line of a file's header comment, as a label."""
    for line in path.read_text().splitlines():
        text = line.lstrip("# ").strip()
        if line.startswith("#") and text:
            return text.split(":")[0][:60]
    return path.stem


def discover(wanted: list[str] | None) -> tuple[list[Strategy], dict[str, str]]:
    """The library's strategies that run, and the skipped ones with why."""
    from ttsc.common.errors import UserError
    from ttsc.compiler.pipeline import compile_file
    from ttsc.runtime.baseline import nodes_in_order

    files = {p.stem: p for p in sorted(EXAMPLES.glob("*.tts"))}
    order = [n for n in LIBRARY if n in files] + sorted(n for n in files if n not in LIBRARY)
    if wanted is not None:
        unknown = [n for n in wanted if n not in files and n != GREEDY]
        if unknown:
            raise SystemExit(f"--strategies: no example {', '.join(unknown)} "
                             f"(known: {', '.join(order)})")
        order = [n for n in order if n in wanted]
    runs, skipped = [], {}
    for name in order:
        if name in SKIP:
            skipped[name] = SKIP[name]
            continue
        try:
            plan = compile_file(files[name]).plan
        except UserError as e:
            skipped[name] = f"does not compile here: {e.message.splitlines()[0]}"
            continue
        if plan.params != ["question"]:
            skipped[name] = f"takes ({', '.join(plan.params)}), not one input `question`"
            continue
        nodes = list(nodes_in_order(plan.region))
        hows = {(n.attrs.get("how") or {}).get("how") for n in nodes if n.op == "extract"}
        kind = "code" if "code" in hows else "math"
        runs.append(Strategy(name, LIBRARY.get(name, _header(files[name])), files[name], kind))
    return runs, skipped


# ------------------------------------------------------------------ running


@dataclass
class Row:
    name: str
    label: str
    accuracy: float | None = None
    ci: tuple[float, float] | None = None
    tokens: float | None = None
    generated: float | None = None
    seconds: float | None = None
    items: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    error: str | None = None
    flag: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"strategy": self.name, "label": self.label, "accuracy": self.accuracy,
                "accuracy_ci": list(self.ci) if self.ci else None, "tokens_per_input": self.tokens,
                "generated_per_input": self.generated, "seconds": self.seconds,
                "items": self.items, "cache_hits": self.cache_hits,
                "cache_misses": self.cache_misses, "beats_greedy": self.flag, "error": self.error}


def run_one(strategy: Strategy, rows: Any, pool: Any, out: Path,
            batch_size: int) -> Row:
    """`ttsc eval` of one strategy on one data set (a fresh results file)."""
    from ttsc.common.errors import UserError
    from ttsc.compiler.pipeline import compile_file
    from ttsc.runtime.engines.setup import capabilities_of
    from ttsc.runtime.eval import evaluate, scorer_for

    row = Row(strategy.name, strategy.label)
    try:
        plan = compile_file(strategy.file, capabilities=capabilities_of(pool.engine)).plan
        engines = pool.engines_for(plan)  # loaded once for the whole run, before the clock starts
        start = time.perf_counter()
        summary = evaluate(plan, engines, rows, scorer=scorer_for(rows),
                           batch_size=batch_size, out=out, force=True, data=rows.source)
        row.seconds = time.perf_counter() - start
    except Exception as e:  # noqa: BLE001 - a model that cannot load here: the row says so, the run goes on
        message = getattr(e, "message", None) or str(e) or type(e).__name__
        row.error = message.splitlines()[0][:160]
        log(f"  {strategy.name}: failed: {row.error}")
        if not isinstance(e, UserError):
            log(traceback.format_exc(limit=3))
        return row
    row.accuracy, row.ci = summary.accuracy, summary.accuracy_ci
    row.tokens, row.generated = summary.tokens_per_input, summary.generated_per_input
    row.items = summary.items
    row.cache_hits, row.cache_misses = summary.usage.cache_hits, summary.usage.cache_misses
    return row


def flag(rows: list[Row]) -> None:
    """Mark each strategy that beats greedy decoding by GAIN with intervals
    that do not overlap, at fewer tokens per input than self-consistency n=16."""
    greedy = next((r for r in rows if r.name == GREEDY and r.accuracy is not None), None)
    sc = next((r for r in rows if r.name == REFERENCE and r.tokens is not None), None)
    if greedy is None or sc is None:
        return
    for r in rows:
        if r.accuracy is None or r.name in (GREEDY,):
            continue
        r.flag = (r.accuracy - greedy.accuracy >= GAIN - 1e-12 and r.ci[0] > greedy.ci[1]
                  and r.tokens < sc.tokens)


def table(name: str, spec: str, rows: list[Row], skipped: dict[str, str]) -> str:
    items = max((r.items for r in rows), default=0)
    lines = [f"\n{name}: {spec} ({items} items)",
             f"{'strategy':<22} {'accuracy':>8} {'95% CI':>13} {'vs greedy':>9} "
             f"{'tokens/in':>10} {'gen/in':>8} {'wall s':>8} {'cached':>7}"]
    greedy = next((r for r in rows if r.name == GREEDY and r.accuracy is not None), None)
    for r in rows:
        if r.error:
            lines.append(f"{r.name:<22} failed: {r.error}")
            continue
        gain = (f"{(r.accuracy - greedy.accuracy) * 100:+8.1f}" if greedy and r is not greedy
                else f"{'':>8}")
        calls = r.cache_hits + r.cache_misses
        cached = f"{r.cache_hits / calls:6.0%}" if calls else f"{'-':>6}"
        lines.append(f"{r.name + (' *' if r.flag else ''):<22} {r.accuracy:8.1%} "
                     f"{r.ci[0]:6.1%}-{r.ci[1]:6.1%} {gain} {r.tokens:10.1f} {r.generated:8.1f} "
                     f"{r.seconds:8.1f} {cached:>7}")
    for n, why in skipped.items():
        lines.append(f"{n:<22} skipped: {why}")
    if not any(r.name == REFERENCE and r.tokens is not None for r in rows):
        lines.append(f"(no flags: {REFERENCE} n=16, the token bar, did not run)")
    else:
        lines.append("* beats greedy decoding by >= 5 points, intervals apart, at fewer tokens "
                     "per input than self-consistency n=16")
    return "\n".join(lines)


# ------------------------------------------------------------------ the plot


def pareto(rows: list[Row]) -> list[Row]:
    """Rows no other beats on both accuracy (higher) and tokens (fewer), cheapest first."""
    done = [r for r in rows if r.accuracy is not None]
    front = [r for r in done if not any(
        o.accuracy >= r.accuracy and o.tokens <= r.tokens and
        (o.accuracy > r.accuracy or o.tokens < r.tokens) for o in done if o is not r)]
    return sorted(front, key=lambda r: r.tokens)


def plot(results: dict[str, list[Row]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    names = list(results)
    cols = min(2, len(names))
    rows_n = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(7 * cols, 5 * rows_n), squeeze=False)
    for ax, name in zip(axes.flat, names):
        done = [r for r in results[name] if r.accuracy is not None]
        for r in done:
            marker, size = ("*", 220) if r.name == GREEDY else ("o", 50)
            color = "black" if r.name == GREEDY else ("tab:red" if r.flag else "tab:blue")
            ax.errorbar(r.tokens, r.accuracy, yerr=[[r.accuracy - r.ci[0]], [r.ci[1] - r.accuracy]],
                        fmt="none", ecolor="lightgray", zorder=1)
            ax.scatter(r.tokens, r.accuracy, marker=marker, s=size, color=color, zorder=3)
            ax.annotate(r.name, (r.tokens, r.accuracy), textcoords="offset points", xytext=(5, 4),
                        fontsize=8)
        front = pareto(done)
        if front:
            ax.step([r.tokens for r in front], [r.accuracy for r in front], where="post",
                    color="tab:green", linewidth=1.5, label="Pareto front", zorder=2)
        greedy = next((r for r in done if r.name == GREEDY), None)
        if greedy is not None:
            ax.axhline(greedy.accuracy, color="black", linestyle=":", linewidth=1,
                       label="greedy decoding")
        if any(r.flag for r in done):
            ax.scatter([], [], marker="o", s=50, color="tab:red",
                       label=f"beats greedy by >= {GAIN * 100:.0f} points, intervals apart")
        ax.set_xscale("log")
        # Plain numbers at 1-2-5 steps: the default log labels (3x10^1) overlap.
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(name)
        ax.set_xlabel("tokens computed per input (log)")
        ax.set_ylabel("accuracy (95% bootstrap interval)")
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle("The strategy library on the embedded model: accuracy against tokens")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--strategies", help="comma-separated example names (default: all that fit); "
                                        "greedy decoding always runs")
    p.add_argument("--data", default=",".join(DATA),
                   help=f"comma-separated data sets (default: {','.join(DATA)})")
    p.add_argument("--limit", type=int, help="only the first N items of each data set")
    p.add_argument("--out", help="folder for greedy.tts, per-item lines and the call cache "
                                 "(default: a temporary folder)")
    p.add_argument("--plot", default=str(ROOT / "benchmarks/strategies.png"),
                   help="the plot's path (default: %(default)s)")
    p.add_argument("--cache", help="call cache (default: DIR/calls.db; `none`: compute every call)")
    p.add_argument("--engine", default="auto")
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()

    from ttsc.common.errors import UserError
    from ttsc.runtime.engines.setup import open_cache
    from ttsc.runtime.eval import load_dataset
    from ttsc.runtime.search.engines import EnginePool

    chosen = [d.strip() for d in args.data.split(",") if d.strip()]
    unknown = [d for d in chosen if d not in DATA]
    if unknown:
        raise SystemExit(f"--data: unknown {', '.join(unknown)} (known: {', '.join(DATA)})")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="ttsc-strategies-"))
    out.mkdir(parents=True, exist_ok=True)
    wanted = [s.strip() for s in args.strategies.split(",")] if args.strategies else None
    strategies, skipped_all = discover(wanted)
    greedy = Strategy(GREEDY, "greedy decoding (n=1, temperature 0)", greedy_file(out))
    cache_path = None if args.cache == "none" else (args.cache or str(out / "calls.db"))
    cache = open_cache(cache_path)
    pool = EnginePool(cache, args.engine) if cache else _UncachedPool(args.engine)
    log(f"strategies: {', '.join(s.name for s in strategies)}; skipped: "
        f"{', '.join(skipped_all) or 'none'}; out {out}")

    results: dict[str, list[Row]] = {}
    report: dict[str, Any] = {}
    start = time.perf_counter()
    try:
        for name in chosen:
            spec, kind = DATA[name]
            try:
                rows = load_dataset(spec, ["question"], limit=args.limit)
            except UserError as e:
                log(f"{name}: {e.render()}")
                report[name] = {"spec": spec, "error": e.message}
                continue
            skipped = dict(skipped_all)
            table_rows = []
            for s in [greedy, *strategies]:
                if s.kind != kind:
                    skipped[s.name] = f"a {s.kind} strategy: runs only on {s.kind} data"
                    continue
                log(f"{name}: {s.name} on {len(rows)} items ...")
                row = run_one(s, rows, pool, out / name / f"{s.name}.jsonl", args.batch_size)
                if row.accuracy is not None:
                    log(f"  {row.accuracy:.1%} at {row.tokens:.1f} tokens/input, {row.seconds:.1f} s")
                table_rows.append(row)
            flag(table_rows)
            results[name] = table_rows
            print(table(name, spec, table_rows, skipped), flush=True)
            report[name] = {"spec": spec, "items": len(rows),
                            "rows": [r.as_dict() for r in table_rows], "skipped": skipped,
                            "beat_greedy": [r.name for r in table_rows if r.flag]}
            plot(results, Path(args.plot))  # after each data set: a cut-short run keeps its plot
    finally:
        pool.close()
    plot_path = Path(args.plot)
    if results:
        log(f"plot: {plot_path}")
    print(json.dumps({"data": report, "limit": args.limit, "out": str(out),
                      "plot": str(plot_path) if results else None,
                      "seconds": round(time.perf_counter() - start, 1)}))
    return 0


class _UncachedPool:
    """EnginePool's interface without a call cache (--cache none)."""

    def __init__(self, engine: str):
        from ttsc.runtime.engines.registry import make_engine

        self.engine, self._make, self._by_spec = engine, make_engine, {}

    def engines_for(self, plan: Any) -> dict[str, Any]:
        used = {s.model for s in plan.llm_stages()}
        out = {}
        for name, spec in plan.models.items():
            if name in used:
                if spec not in self._by_spec:
                    self._by_spec[spec] = self._make(spec, engine=self.engine)
                out[name] = self._by_spec[spec]
        return out

    def close(self) -> None:
        for engine in self._by_spec.values():
            engine.close()


if __name__ == "__main__":
    sys.exit(main())
