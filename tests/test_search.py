"""`ttsc search` on the tiny random model: a whole search, its files, the
call cache, resuming after kill -9, two objectives, and every bad input."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import optuna
import pytest

from kill_mid_trial import kill_mid_trial
from search_spaces import SPACE
from ttsc.cli import main
from ttsc.compiler.pipeline import compile_file, load_program
from ttsc.runtime.data import Rows
from ttsc.runtime.scorers import check_golds
from ttsc.runtime.baseline import greedy_source
from ttsc.runtime.search.report import Record, pareto_front
from ttsc.runtime.search.run import holdout_split
from ttsc.runtime.search.space import load_space
from ttsc.runtime.search.study import STUDY_NAME
from ttsc.runtime.search.trial import Scores

ROOT = Path(__file__).resolve().parent.parent
DEV = ROOT / "examples/data/addition_dev.jsonl"
BIG = ROOT / "examples/data/tiers_dev.jsonl"


@pytest.fixture
def space(tmp_path) -> Path:
    path = tmp_path / "space.tts"
    path.write_text(SPACE)
    return path


def run_search(*args: str, capsys) -> tuple[int, str, str]:
    code = main(["search", *args])
    out, err = capsys.readouterr()
    return code, out, err


def summary_of(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def load(study: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{study}")


# ------------------------------------------------------------------ a whole search


def test_a_search_writes_its_table_winner_plot_and_held_out_figures(space, tmp_path, capsys):
    out = tmp_path / "run"
    code, text, err = run_search(str(space), "--data", str(DEV), "--trials", "5", "--out", str(out),
                                 "--holdout", "0.5", "--json", "--quiet", capsys=capsys)
    assert code == 0, err
    summary = summary_of(text)
    assert summary["trials"] == 5 and summary["items"] == 10 and summary["space_size"] == 12
    table = text.split("held-out data")[0]
    first_row = next(line for line in table.splitlines() if line.strip() and "accuracy" not in line)
    assert first_row.split()[0] == "greedy"  # greedy decoding is always the first row
    assert "95% CI" in table
    for name in ("study.db", "greedy.tts", "greedy.jsonl", "best.tts", "trials.jsonl", "summary.json"):
        assert (out / name).exists(), name
    assert (out / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert len(records) == 5
    for r in records:  # every trial: its concrete program and its per-item lines
        assert Path(r["files"]["tts"]).exists()
        assert len(Path(r["files"]["results"]).read_text().splitlines()) == 10
    best = summary["best"]
    assert best["accuracy"] == max(r["scores"]["accuracy"] for r in records)
    assert set(summary["test"]) >= {"greedy", "best", "best_beats_greedy"}
    assert summary["test"]["best"]["items"] == 10
    assert summary["calls"]["computed"] > 0
    # The winner is a plain program: no knob left, and it runs.
    text = (out / "best.tts").read_text()
    assert "choice" not in text
    assert compile_file(out / "best.tts").plan.facts.get("knob_values") is None
    assert main(["run", str(out / "best.tts"), "--input", "question=What is 2 + 2?"]) == 0
    greedy = compile_file(out / "greedy.tts").plan
    (gen,) = [n for n in greedy.region.nodes.values() if n.op == "generate"]
    assert (gen.attrs["n"], gen.attrs["temperature"], gen.attrs["prompt"]) == (1, 0, "solve")


def test_a_second_identical_search_costs_no_model_calls(space, tmp_path, capsys):
    args = [str(space), "--data", str(DEV), "--trials", "4", "--json", "--quiet"]
    code, first, _ = run_search(*args, "--out", str(tmp_path / "a"), capsys=capsys)
    assert code == 0
    code, second, _ = run_search(*args, "--out", str(tmp_path / "b"), capsys=capsys)
    assert code == 0
    a, b = summary_of(first), summary_of(second)
    assert a["calls"]["computed"] > 0
    assert b["calls"] == {"computed": 0, "cached": a["calls"]["computed"] + a["calls"]["cached"]}
    assert b["best"]["accuracy"] == a["best"]["accuracy"] and b["best"]["knobs"] == a["best"]["knobs"]
    assert "model calls (samples and scores): 0 computed" in second
    # The winner, run from the file written for it, is its trial again: same
    # samples (calls are seeded by what they compute), all from the cache.
    assert main(["eval", str(tmp_path / "a" / "best.tts"), "--data", str(DEV), "--json",
                 "--quiet"]) == 0
    again = summary_of(capsys.readouterr().out)
    assert again["accuracy"] == a["best"]["accuracy"] and again["cache_misses"] == 0
    assert again["tokens_per_input"] == pytest.approx(a["best"]["tokens_per_input"])


def test_a_rerun_adds_only_the_missing_trials(space, tmp_path, capsys):
    args = [str(space), "--data", str(DEV), "--limit", "6", "--out", str(tmp_path / "r"), "--json",
            "--quiet"]
    assert run_search(*args, "--trials", "2", capsys=capsys)[0] == 0
    before = {t.number: t.values for t in load(tmp_path / "r" / "study.db").trials}
    code, out, _ = run_search(*args, "--trials", "4", capsys=capsys)
    assert code == 0 and summary_of(out)["trials"] == 4
    after = load(tmp_path / "r" / "study.db").trials
    assert [t.number for t in after] == [0, 1, 2, 3]
    assert {t.number: t.values for t in after if t.number in before} == before  # nothing re-run
    code, out, _ = run_search(*args, "--trials", "4", capsys=capsys)  # already done
    assert code == 0 and len(load(tmp_path / "r" / "study.db").trials) == 4


def test_parallel_trials_run_side_by_side_on_shared_engines(space, tmp_path, capsys):
    out = tmp_path / "par"
    code, text, err = run_search(str(space), "--data", str(DEV), "--trials", "4", "--parallel", "2",
                                 "--out", str(out), "--json", "--quiet", capsys=capsys)
    assert code == 0, err
    trials = load(out / "study.db").trials
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    first, second = trials[0], trials[1]
    assert second.datetime_start < first.datetime_complete  # in flight together


def test_two_objectives_write_the_pareto_front_and_keep_the_budget(space, tmp_path, capsys):
    out = tmp_path / "mo"
    code, text, err = run_search(str(space), "--data", str(DEV), "--limit", "8", "--trials", "8",
                                 "--objective", "accuracy,tokens", "--budget-tokens", "60",
                                 "--out", str(out), "--json", "--quiet", capsys=capsys)
    assert code == 0, err
    summary = summary_of(text)
    assert "Pareto front" in err or "Pareto front" in text
    front = summary["front"]
    assert front and len(list((out / "front").glob("*.tts"))) == len(front)
    for point in front:
        assert point["tokens_per_input"] <= 60
        compile_file(point["file"])
    costs = [p["tokens_per_input"] for p in front]
    accs = [p["accuracy"] for p in front]
    assert costs == sorted(costs) and accs == sorted(accs)  # cheaper is never more accurate
    study = load(out / "study.db")
    over = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    for t in over:  # over budget before running: a constraint, not a score
        assert t.constraints["tokens_over_budget"] > 0 and "cannot be met" in t.user_attrs["reason"]
    for t in study.trials:
        if t.state == optuna.trial.TrialState.COMPLETE:
            measured = t.user_attrs["scores"]["tokens_per_input"]
            assert t.constraints["tokens_over_budget"] == pytest.approx((measured - 60) / 60)


def test_auto_knobs_are_solved_by_the_allocator_in_each_trial(tmp_path, capsys):
    path = tmp_path / "auto.tts"
    path.write_text(SPACE.replace("n=choice(1, 2, 4)", "n=auto") + "budget { tokens <= 400 per input }\n")
    space = load_space(str(path))
    assert [d.setting for d in space.dimensions] == ["branch", "temperature"]  # auto is not searched
    assert [d.id for d in space.solved] == ["space.s.generate.n"]
    out = tmp_path / "o"
    code, text, err = run_search(str(path), "--data", str(DEV), "--limit", "5", "--trials", "3",
                                 "--out", str(out), "--json", "--quiet", capsys=capsys)
    assert code == 0, err
    for record in map(json.loads, (out / "trials.jsonl").read_text().splitlines()):
        program = Path(record["files"]["tts"]).read_text()
        assert "auto" not in program and "n=" in program  # the allocator's n, written out
        assert compile_file(record["files"]["tts"]).plan.facts["tokens_at_most_per_input"] <= 400


# ------------------------------------------------------------------ resuming after kill -9


def _states(study: Path) -> list[tuple[int, str, int]]:
    """(number, state, how many parameters are stored) of each trial."""
    if not study.exists():
        return []
    try:
        db = sqlite3.connect(f"file:{study}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute(
                "SELECT t.number, t.state, COUNT(p.param_id) FROM trials t LEFT JOIN trial_params p "
                "ON p.trial_id = t.trial_id GROUP BY t.trial_id ORDER BY t.number").fetchall()
        finally:
            db.close()
    except sqlite3.OperationalError:
        return []  # tables not made yet


def test_kill_9_then_the_same_command_loses_no_trial_and_reruns_the_cut_one(space, tmp_path, capsys):
    out = tmp_path / "k"
    args = [str(space), "--data", str(BIG), "--trials", "4", "--out", str(out), "--quiet"]
    study = out / "study.db"
    kill_mid_trial(["search", *args], lambda: [(s, k) for _, s, k in _states(study)], params=3)
    cut = [n for n, s, _ in _states(study) if s == "RUNNING"]
    kept = {t.number: (t.params, t.values) for t in load(study).trials
            if t.state == optuna.trial.TrialState.COMPLETE}
    assert len(cut) == 1 and kept
    code, _, err = run_search(*args, capsys=capsys)
    assert code == 0, err
    trials = load(study).trials
    finished = [t for t in trials if t.state.is_finished() and t.state != optuna.trial.TrialState.FAIL]
    assert len(finished) == 4  # exactly --trials
    assert {t.number: (t.params, t.values) for t in trials if t.number in kept} == kept
    (was_cut,) = [t for t in trials if t.number == cut[0]]
    assert was_cut.state == optuna.trial.TrialState.FAIL  # not left RUNNING forever
    (rerun,) = [t for t in trials if t.user_attrs.get("rerun_of") == cut[0]]
    assert rerun.state == optuna.trial.TrialState.COMPLETE and rerun.params == was_cut.params
    assert not any(t.state == optuna.trial.TrialState.RUNNING for t in trials)
    compile_file(out / "best.tts")


# ------------------------------------------------------------------ bad input


def bad(*args: str, capsys) -> str:
    code, out, err = run_search(*args, capsys=capsys)
    assert code == 2, out + err
    assert "Traceback" not in err
    return err


def test_a_space_with_nothing_to_search(tmp_path, capsys):
    fixed = tmp_path / "fixed.tts"
    fixed.write_text(SPACE.replace("choice(solve, terse)", "solve").replace("choice(1, 2, 4)", "2")
                     .replace("choice(0.3, 0.7)", "0.3"))
    err = bad(str(fixed), "--data", str(DEV), "--trials", "2", "--out", str(tmp_path / "o"),
              capsys=capsys)
    assert f"{fixed}:5:10: error: strategy `space` has nothing to search: every setting is fixed" in err


def test_a_range_with_lo_above_hi(space, tmp_path, capsys):
    space.write_text(SPACE.replace("choice(0.3, 0.7)", "range(0.9, 0.1)"))
    err = bad(str(space), "--data", str(DEV), "--trials", "2", "--out", str(tmp_path / "o"),
              capsys=capsys)
    assert f"{space}:6:79: error: range(0.9, 0.1) is empty" in err


def test_data_too_small_for_a_held_out_split(space, tmp_path, capsys):
    err = bad(str(space), "--data", str(DEV), "--limit", "8", "--holdout", "0.25", "--trials", "2",
              "--out", str(tmp_path / "o"), capsys=capsys)
    assert "8 items are too few for a held-out split of 0.25 (6 to search on, 2 held out" in err


def test_a_study_of_another_space_is_refused_and_kept(space, tmp_path, capsys):
    study = tmp_path / "shared.db"
    args = ["--data", str(DEV), "--limit", "4", "--trials", "1", "--study", str(study), "--quiet"]
    assert run_search(str(space), *args, "--out", str(tmp_path / "a"), capsys=capsys)[0] == 0
    other = tmp_path / "other.tts"
    other.write_text(SPACE.replace("choice(1, 2, 4)", "choice(1, 8)"))
    err = bad(str(other), *args, "--out", str(tmp_path / "b"), capsys=capsys)
    assert f"--study {study} holds a search of another space" in err
    assert len(load(study).trials) == 1  # nothing lost
    err = bad(str(space), *args, "--out", str(tmp_path / "c"), "--seed", "3", capsys=capsys)
    assert "holds a search of another seed" in err


def test_a_study_file_that_is_no_study(space, tmp_path, capsys):
    not_db = tmp_path / "notes.db"
    not_db.write_text("hello")
    err = bad(str(space), "--data", str(DEV), "--trials", "1", "--out", str(tmp_path / "o"),
              "--study", str(not_db), capsys=capsys)
    assert "not an SQLite database" in err
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    err = bad(str(space), "--data", str(DEV), "--trials", "1", "--out", str(tmp_path / "o"),
              "--study", str(other), capsys=capsys)
    assert "an SQLite database, but not an Optuna study" in err


def test_an_unwritable_out(space, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    err = bad(str(space), "--data", str(DEV), "--trials", "1", "--out", str(blocker / "run"),
              capsys=capsys)
    assert f"--out {blocker / 'run'}: cannot write there" in err


def test_a_scorer_that_does_not_fit_the_data(space, tmp_path, capsys):
    err = bad(str(space), "--data", str(ROOT / "examples/data/mcq.jsonl"), "--trials", "1",
              "--out", str(tmp_path / "o"), capsys=capsys)
    assert "mcq.jsonl:1: the gold answer 'D' is not a number, so the `number` scorer cannot" in err
    assert "--scorer choice" in err
    err = bad(str(space), "--data", str(DEV), "--scorer", "choice", "--trials", "1",
              "--out", str(tmp_path / "o"), capsys=capsys)
    assert "addition_dev.jsonl:1: the gold answer '16' is not a choice letter" in err


@pytest.mark.parametrize("flags, message", [
    (["--objective", "tokens"], "expected accuracy, accuracy,tokens or accuracy,latency"),
    (["--objective", "accuracy,speed"], "expected accuracy, accuracy,tokens or accuracy,latency"),
    (["--trials", "0"], "--trials must be at least 1"),
    (["--holdout", "1.5"], "--holdout must be a fraction between 0 and 1"),
    (["--holdout", "0.5", "--test", str(DEV)], "--test and --holdout both name held-out data"),
    (["--model", "nope=tiny-random"], "the file defines no model `nope`"),
    (["--no-cache"], "`ttsc search` always uses the call cache"),
    (["--budget-tokens", "-5"], "--budget-tokens must be positive"),
])
def test_bad_flags(space, tmp_path, capsys, flags, message):
    args = {"--trials": "2"}
    for flag, value in zip(flags[::2], flags[1::2]):
        args[flag] = value
    plain = [f for f in flags if f == "--no-cache"]
    rest = [x for kv in args.items() for x in kv if kv[0] != "--no-cache"] + plain
    err = bad(str(space), "--data", str(DEV), "--out", str(tmp_path / "o"), *rest, capsys=capsys)
    assert message in err


def test_a_total_token_budget_is_refused_at_its_line(space, tmp_path, capsys):
    space.write_text(SPACE + "budget { tokens <= 5000 total }\n")
    err = bad(str(space), "--data", str(DEV), "--trials", "1", "--out", str(tmp_path / "o"),
              capsys=capsys)
    assert f"{space}:10:10: error: `ttsc search` keeps a budget per input" in err


# ------------------------------------------------------------------ the pieces


def test_knobs_that_optuna_cannot_hold_travel_as_indices(tmp_path):
    path = tmp_path / "s.tts"
    path.write_text(SPACE.replace("max_tokens=8", 'max_tokens=8, stop=choice("\\n", [".", "!"])'))
    space = load_space(str(path))
    stop = next(d for d in space.dimensions if d.setting == "stop")
    assert space.distributions()[stop.id].choices == (0, 1)
    assignment = {d.id: d.values[-1] for d in space.dimensions}
    params = space.params_of(assignment)
    assert params[stop.id] == 1 and space.assignment(params) == assignment
    assert space.short_names() == {"space.s.generate.prompt": "prompt", "space.s.generate.n": "n",
                                   "space.s.generate.temperature": "temperature",
                                   "space.s.generate.stop": "stop"}
    assert "stop=['.', '!']" in space.describe(assignment)


def test_the_held_out_split_is_seeded_and_disjoint():
    rows = Rows([{"id": str(i)} for i in range(20)], range(1, 21))
    a, b = holdout_split(rows, 0.3, 7, "d.jsonl")
    again = holdout_split(rows, 0.3, 7, "d.jsonl")
    assert [r["id"] for r in a] == [r["id"] for r in again[0]]
    assert len(b) == 6 and not {r["id"] for r in a} & {r["id"] for r in b}
    assert b.line_of(0) == int(b[0]["id"]) + 1  # line numbers travel with the rows
    assert [r["id"] for r in holdout_split(rows, 0.3, 8, "d.jsonl")[1]] != [r["id"] for r in b]


def test_gold_checks_name_the_line():
    rows = Rows([{"answer": "3"}, {"answer": "B"}], [4, 9])
    check_golds("choice", Rows([{"answer": "B"}], [1]), "d.jsonl")
    check_golds("exact", rows, "d.jsonl")
    with pytest.raises(Exception, match="d.jsonl:9: the gold answer 'B' is not a number"):
        check_golds("number", rows, "d.jsonl")
    with pytest.raises(Exception, match="is not a regular expression"):
        check_golds("regex", Rows([{"answer": "(("}], [1]), "d.jsonl")


def test_greedy_decoding_takes_the_first_generator_and_the_spaces_extractor(tmp_path):
    source = SPACE.replace("extract(s, number)", 'extract(s, regex("= (\\\\d+)"))')
    program, _ = load_program(source, "s.tts")
    from ttsc.compiler.pipeline import compile_program

    plan, _ = compile_program(program, {"space.s.generate.prompt": 1})
    text = greedy_source(source, "s.tts", plan, "number")
    path = tmp_path / "g.tts"
    path.write_text(text)
    g = compile_file(path).plan
    (gen,) = [n for n in g.region.nodes.values() if n.op == "generate"]
    (ext,) = [n for n in g.region.nodes.values() if n.op == "extract"]
    assert (gen.attrs["prompt"], gen.attrs["n"], gen.attrs["temperature"], gen.attrs["max_tokens"]) \
        == ("terse", 1, 0, 8)
    assert ext.attrs["how"] == {"how": "regex", "pattern": "= (\\d+)"}


def _record(number: int, acc: float, tokens: float, over: float = 0.0) -> Record:
    scores = Scores(10, int(acc * 10), acc, (acc, acc), tokens, tokens, tokens, 1.0, 0, 0, 0.0)
    return Record(number, "complete", {"k": str(number)}, scores, over=over)


def test_the_pareto_front_keeps_what_nothing_beats_on_both():
    records = [_record(0, 0.5, 100), _record(1, 0.6, 200), _record(2, 0.55, 250),
               _record(3, 0.7, 400), _record(4, 0.9, 90, over=0.2), _record(5, 0.6, 150)]
    front = pareto_front(records, "tokens")
    assert [r.number for r in front] == [0, 5, 3]  # 4 is over budget, 1 and 2 are beaten
