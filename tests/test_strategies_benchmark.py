"""benchmarks/strategies.py's own logic: which examples it runs (and why it
skips the others), the flag against greedy decoding, the Pareto front, the
plot. The measuring itself is the benchmark's run, not a test."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("strategies_bench", ROOT / "benchmarks/strategies.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["strategies_bench"] = module
    spec.loader.exec_module(module)
    return module


def row(bench, name, accuracy, lo, hi, tokens):
    return bench.Row(name, name, accuracy=accuracy, ci=(lo, hi), tokens=tokens, generated=tokens,
                     seconds=1.0, items=10)


def test_every_example_that_fits_runs_and_the_rest_say_why(bench):
    runs, skipped = bench.discover(None)
    names = [s.name for s in runs]
    assert "self_consistency" in names and names.index("self_consistency") == 0
    assert set(names) | set(skipped) == {p.stem for p in (ROOT / "examples").glob("*.tts")}
    assert "calibrate" in skipped["adaptive_budget"] and "search space" in skipped["search_space"]
    assert all(s.file.parent == ROOT / "examples" for s in runs)  # never examples/search/


def test_only_the_strategies_asked_for(bench):
    runs, _ = bench.discover(["best_of_n", "self_consistency"])
    assert [s.name for s in runs] == ["self_consistency", "best_of_n"]
    with pytest.raises(SystemExit, match="no example nope"):
        bench.discover(["nope"])


def test_greedy_decoding_takes_self_consistencys_prompt(bench, tmp_path):
    text = bench.greedy_file(tmp_path).read_text()
    assert "n=1" in text and "temperature=0" in text and "max_tokens=40" in text
    assert "Give the final answer as 'Answer: <number>'." in text


def test_the_flag_needs_five_points_apart_intervals_and_fewer_tokens(bench):
    greedy = row(bench, "greedy", 0.50, 0.40, 0.60, 30)
    sc = row(bench, "self_consistency", 0.55, 0.45, 0.65, 500)
    good = row(bench, "good", 0.72, 0.62, 0.82, 200)
    overlapping = row(bench, "overlapping", 0.66, 0.56, 0.76, 200)  # +16 points, intervals overlap
    costly = row(bench, "costly", 0.80, 0.70, 0.90, 600)  # more tokens than SC n=16
    bench.flag([greedy, sc, good, overlapping, costly])
    assert good.flag and not overlapping.flag and not costly.flag and not sc.flag
    assert not greedy.flag


def test_the_pareto_front_and_the_plot(bench, tmp_path):
    rows = [row(bench, "greedy", 0.5, 0.4, 0.6, 30), row(bench, "a", 0.6, 0.5, 0.7, 100),
            row(bench, "b", 0.55, 0.45, 0.65, 300), row(bench, "c", 0.7, 0.6, 0.8, 900)]
    assert [r.name for r in bench.pareto(rows)] == ["greedy", "a", "c"]
    path = tmp_path / "p.png"
    bench.plot({"one": rows, "two": rows[:2]}, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = bench.table("one", "spec", rows, {"x": "why"})
    assert text.strip().splitlines()[2].split()[0] == "greedy" and "x" in text and "skipped: why" in text
