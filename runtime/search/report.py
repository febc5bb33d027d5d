"""What a search shows at the end: its trials, the winners, a plot.

Records come from the study itself (every trial's measurements are stored as
its user attributes), so a resumed search reports every trial it ever ran.
Greedy decoding is always the table's first row. With one objective the
winner is the most accurate feasible trial (fewer tokens break ties); with
two, every feasible trial no other beats on both accuracy and cost is on the
Pareto front. Infeasible trials (over the budget) are listed, never chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from ttsc.runtime.search.trial import Scores

COSTS = {"tokens": ("tokens_per_input", "tokens computed per input"),
         "latency": ("predicted_latency_s", "predicted latency per input (s)")}


@dataclass
class Record:
    """One trial as the report sees it."""

    number: int
    state: str  # "complete", "over budget", "failed", "running"
    knobs: dict[str, str]  # knob id -> the value as written
    scores: Scores | None = None
    reason: str | None = None  # why it did not run
    over: float = 0.0  # tokens over the budget, as a fraction of it (> 0: infeasible)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def feasible(self) -> bool:
        return self.state == "complete" and self.over <= 0

    def cost(self, objective: str) -> float:
        value = getattr(self.scores, COSTS[objective][0]) if self.scores else None
        return float(value) if value is not None else float("inf")

    def as_dict(self) -> dict[str, Any]:
        return {"trial": self.number, "state": self.state, "knobs": self.knobs,
                "feasible": self.feasible, "over_budget": self.over,
                **({"scores": self.scores.as_dict()} if self.scores else {}),
                **({"reason": self.reason} if self.reason else {}), "files": self.files}


_STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "over budget",
           TrialState.FAIL: "failed", TrialState.RUNNING: "running", TrialState.WAITING: "queued"}


def record_of(trial: FrozenTrial) -> Record:
    a = trial.user_attrs
    scores = Scores.from_dict(a["scores"]) if "scores" in a else None
    over = sum(v for v in trial.constraints.values() if v > 0) if trial.constraints else 0.0
    return Record(trial.number, _STATES.get(trial.state, trial.state.name.lower()),
                  dict(a.get("knobs", {})), scores, a.get("reason"), over, dict(a.get("files", {})))


def best(records: list[Record]) -> Record | None:
    """The most accurate feasible trial; fewer tokens, then the earlier trial, break ties."""
    done = [r for r in records if r.feasible and r.scores]
    if not done:
        return None
    return min(done, key=lambda r: (-r.scores.accuracy, r.scores.tokens_per_input, r.number))


def pareto_front(records: list[Record], cost: str) -> list[Record]:
    """Feasible trials no other beats on both accuracy (higher) and cost
    (lower), cheapest first; of trials with the same knobs, the first."""
    done, seen = [], set()
    for r in sorted((r for r in records if r.feasible and r.scores), key=lambda r: r.number):
        key = tuple(sorted(r.knobs.items()))
        if key not in seen:
            seen.add(key)
            done.append(r)
    front = [r for r in done
             if not any(_dominates(o, r, cost) for o in done if o is not r)]
    return sorted(front, key=lambda r: (r.cost(cost), -r.scores.accuracy))


def _dominates(a: Record, b: Record, cost: str) -> bool:
    ge = a.scores.accuracy >= b.scores.accuracy and a.cost(cost) <= b.cost(cost)
    gt = a.scores.accuracy > b.scores.accuracy or a.cost(cost) < b.cost(cost)
    return ge and gt


# ------------------------------------------------------------------ the table


def table(rows: list[tuple[str, Scores | None, str, str]]) -> str:
    """Rows of (label, scores, status, knobs) as aligned text: accuracy and
    its 95% bootstrap interval, tokens computed per input, the cost model's
    latency per input, and samples and scores computed / answered from the
    call cache."""
    head = (f"{'trial':>7}  {'accuracy':>8}  {'95% CI':>13}  {'tokens/in':>9}  {'pred. s':>8}  "
            f"{'computed':>8}  {'cached':>7}  configuration")
    lines = [head]
    for label, s, status, knobs in rows:
        if s is None:
            lines.append(f"{label:>7}  {status:>8}  {'':>13}  {'':>9}  {'':>8}  {'':>8}  {'':>7}  {knobs}")
            continue
        lo, hi = s.accuracy_ci
        latency = f"{s.predicted_latency_s:.2f}s" if s.predicted_latency_s is not None else "?"
        mark = "" if status in ("", "complete") else f" [{status}]"
        lines.append(f"{label:>7}  {s.accuracy:>8.1%}  {f'{lo:.1%}-{hi:.1%}':>13}  "
                     f"{s.tokens_per_input:>9.1f}  {latency:>8}  {s.cache_misses:>8}  "
                     f"{s.cache_hits:>7}  {knobs}{mark}")
    return "\n".join(lines)


def trial_rows(describe: Any, greedy: Scores | None,
               shown: list[Record]) -> list[tuple[str, Scores | None, str, str]]:
    """Greedy decoding first, then the trials shown."""
    rows: list[tuple[str, Scores | None, str, str]] = []
    if greedy is not None:
        rows.append(("greedy", greedy, "", "greedy decoding: n=1, temperature=0"))
    for r in shown:
        status = "" if r.feasible else ("over budget" if r.over > 0 and r.state == "complete" else r.state)
        text = describe(r.knobs)
        if r.reason and r.state != "complete":
            text += f"  ({r.reason})"
        rows.append((str(r.number), r.scores, status, text))
    return rows


# ------------------------------------------------------------------ the plot


def plot(records: list[Record], greedy: Scores | None, front: list[Record], cost: str,
         path: Path, budget: float | None, title: str) -> None:
    """Accuracy against cost, one point per trial; the front joined and
    ringed; greedy decoding a star; infeasible trials crossed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    key, label = COSTS[cost]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ok = [r for r in records if r.feasible and r.scores]
    bad = [r for r in records if r.scores and not r.feasible]
    if ok:
        ax.scatter([r.cost(cost) for r in ok], [r.scores.accuracy for r in ok], s=18, c="#7f8c8d",
                   label="trial", zorder=2)
    if bad:
        ax.scatter([r.cost(cost) for r in bad], [r.scores.accuracy for r in bad], s=22, marker="x",
                   c="#c0392b", label="over budget", zorder=2)
    if front:
        xs = [r.cost(cost) for r in front]
        ys = [r.scores.accuracy for r in front]
        ax.plot(xs, ys, "-", c="#2c3e50", lw=1.2, zorder=3)
        ax.scatter(xs, ys, s=60, facecolors="none", edgecolors="#2c3e50", lw=1.5,
                   label="Pareto front", zorder=4)
        for r in front:
            ax.annotate(str(r.number), (r.cost(cost), r.scores.accuracy), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
    g = getattr(greedy, key, None) if greedy else None
    if greedy is not None and g is not None:
        ax.scatter([g], [greedy.accuracy], s=140, marker="*", c="#f39c12", edgecolors="black",
                   lw=0.6, label="greedy decoding", zorder=5)
    if budget is not None:
        ax.axvline(budget, ls="--", lw=1, c="#c0392b", label="budget", zorder=1)
    ax.set_xlabel(label)
    ax.set_ylabel("accuracy")
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
