"""Architecture search over a `.tts` space (`ttsc search`).

    space.py     a strategy's knobs as Optuna parameters (auto knobs stay the allocator's)
    baseline.py  greedy decoding, the baseline every table starts with
    engines.py   one engine per model spec for all trials, behind the call cache
    trial.py     one configuration: compile with its knobs fixed, evaluate, measure
    study.py     the Optuna study: SQLite or journal storage, samplers, resuming, the trial loop
    report.py    records, the winner and the Pareto front, the table, the plot
    run.py       the command: checks, baseline, trials, winners, held-out evaluation
"""

from ttsc.runtime.search.run import SearchOptions, prepare, search

__all__ = ["SearchOptions", "prepare", "search"]
