"""`ttsc search --ray` on a real local Ray instance with the tiny random model:
the same files and table as without Ray, the shared call cache, an actor
killed mid-trial (kill -9), the driver killed and the command rerun, and bad
input."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import optuna
import pytest

pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'ttsc[ray]'; "
                                  "scripts/install.sh installs it)")

from kill_mid_trial import kill_mid_trial  # noqa: E402
from search_spaces import SPACE  # noqa: E402
from ttsc.cli import main  # noqa: E402
from ttsc.runtime.distributed.workers import RayOptions  # noqa: E402
from ttsc.runtime.search import SearchOptions, search  # noqa: E402
from ttsc.runtime.search.study import STUDY_NAME, open_storage  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEV = ROOT / "examples/data/addition_dev.jsonl"
BIG = ROOT / "examples/data/tiers_dev.jsonl"
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def space(tmp_path: Path, max_tokens: int = 8) -> Path:
    path = tmp_path / "space.tts"
    path.write_text(SPACE.replace("max_tokens=8", f"max_tokens={max_tokens}"))
    return path


def journal(path: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=STUDY_NAME, storage=open_storage(path)).trials


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def table_shape(text: str) -> tuple[list[str], int]:
    """The table's header and its number of rows."""
    lines_ = text.splitlines()
    start = next(i for i, line in enumerate(lines_) if "accuracy" in line)
    end = next(i for i in range(start, len(lines_)) if not lines_[i].strip())
    return lines_[start].split(), end - start - 1


@pytest.mark.usefixtures("local_ray")
def test_a_ray_search_matches_one_without_ray(tmp_path, capsys):
    path = space(tmp_path)
    common = [str(path), "--data", str(DEV), "--limit", "8", "--trials", "4", "--json",
              "--cache", str(tmp_path / "calls.db")]
    assert main(["search", *common, "--out", str(tmp_path / "plain")]) == 0
    plain_out = capsys.readouterr().out
    assert main(["search", *common, "--out", str(tmp_path / "ray"), "--ray", "--ray-actors",
                 "2"]) == 0
    ray_out, ray_err = capsys.readouterr()
    plain, on_ray = (json.loads(t.strip().splitlines()[-1]) for t in (plain_out, ray_out))
    assert on_ray["trials"] == plain["trials"] == 4
    assert table_shape(ray_out) == table_shape(plain_out)
    assert on_ray["study"].endswith("study.journal")
    trials = journal(tmp_path / "ray" / "study.journal")
    assert len(trials) == 4 and all(t.state in FINISHED for t in trials)
    records = lines(tmp_path / "ray" / "trials.jsonl")
    assert sorted(r["trial"] for r in records) == [0, 1, 2, 3]
    for r in records:  # each trial's program and its per-item lines, written by the driver
        assert Path(r["files"]["tts"]).exists()
        assert len(lines(Path(r["files"]["results"]))) == 8
    # Greedy decoding on the actors: the same answers, from the cache the
    # first search filled (served to the actors by the cache actor).
    greedy = {r["id"]: r["prediction"] for r in lines(tmp_path / "plain" / "greedy.jsonl")}
    assert {r["id"]: r["prediction"] for r in lines(tmp_path / "ray" / "greedy.jsonl")} == greedy
    assert on_ray["greedy"]["cache_misses"] == 0
    assert "ray: worker" in ray_err and "ready" in ray_err  # the workers' lines, one progress
    # Rerun: all four trials are there; nothing runs, no actor starts.
    assert main(["search", *common, "--out", str(tmp_path / "ray"), "--ray", "--quiet"]) == 0
    assert "ray: worker" not in capsys.readouterr().err
    assert len(journal(tmp_path / "ray" / "study.journal")) == 4


@pytest.mark.usefixtures("local_ray")
def test_an_actor_killed_mid_trial_has_its_trial_run_again_elsewhere(tmp_path):
    ready: list[int] = []
    lost = []
    killed: list[int] = []
    told: list[int] = []

    def on_event(kind: str, data: dict) -> None:
        if kind == "worker":
            (ready if data["event"].kind == "ready" else lost).append(
                data["event"].pid if data["event"].kind == "ready" else data["event"])
        if kind == "trial" and "scores" in data:
            told.append(data["number"])
            if not killed:  # the first actor up: it has a trial in flight (two each at once)
                killed.append(ready[0])
                os.kill(ready[0], signal.SIGKILL)

    out = tmp_path / "k"
    options = SearchOptions(space=str(space(tmp_path, max_tokens=32)), data=str(BIG), limit=12,
                            trials=6, out=str(out), parallel=2, cache=str(tmp_path / "calls.db"),
                            ray=RayOptions(actors=2))
    summary = search(options, on_event)
    assert killed and len(lost) == 1 and lost[0].pid == killed[0]
    assert lost[0].requeued >= 1  # what it was running ran again on the other actors
    assert summary["trials"] == 6
    trials = journal(out / "study.journal")
    assert len(trials) == 6 and all(t.state in FINISHED for t in trials)  # no FAIL, none repeated
    numbers = [r["trial"] for r in lines(out / "trials.jsonl")]
    assert sorted(numbers) == list(range(6)) and sorted(told) == list(range(6))
    for t in trials:
        assert len(lines(out / "trials" / f"{t.number:04d}.jsonl")) == 12  # each item once


def _states(study: Path) -> list[tuple[optuna.trial.TrialState, int]]:
    """(state, how many parameters are stored) of each trial."""
    try:
        return [(t.state, len(t.params)) for t in journal(study)]
    except (FileNotFoundError, KeyError):  # not written yet, or the study not made yet
        return []


def test_the_driver_killed_then_the_same_command_resumes(tmp_path, capsys, local_ray):
    out = tmp_path / "d"
    args = ["search", str(space(tmp_path, max_tokens=32)), "--data", str(BIG), "--limit", "12",
            "--trials", "4", "--out", str(out), "--quiet", "--ray", local_ray.address]
    study = out / "study.journal"
    kill_mid_trial(args, lambda: [(s.name, k) for s, k in _states(study)], params=3, poll=0.1)
    before = journal(study)
    kept = {t.number: (t.params, t.values) for t in before
            if t.state == optuna.trial.TrialState.COMPLETE}
    cut = [t.number for t in before if t.state == optuna.trial.TrialState.RUNNING and t.params]
    assert kept and cut
    assert main(args[:-1] + [local_ray.address]) == 0
    trials = journal(study)
    assert sum(t.state in FINISHED for t in trials) == 4  # exactly --trials
    assert {t.number: (t.params, t.values) for t in trials if t.number in kept} == kept
    assert any(len(trials[number].params) == 3 for number in cut)
    for number in cut:  # marked FAIL, its configuration run again
        (rerun,) = [t for t in trials if t.user_attrs.get("rerun_of") == number]
        assert rerun.state == optuna.trial.TrialState.COMPLETE
        # A trial killed while its parameters were being drawn keeps those it
        # had; the rerun draws the rest.
        assert trials[number].params.items() <= rerun.params.items()
        assert len(rerun.params) == 3
    assert not any(t.state == optuna.trial.TrialState.RUNNING for t in trials)
    finished = [r["trial"] for r in lines(out / "trials.jsonl") if r["state"] == "complete"]
    assert len(finished) == len(set(finished)) == 4


@pytest.mark.parametrize("flags, message", [
    (["--ray-actors", "2"], "needs --ray"),
    (["--ray", "--ray-actors", "0"], "--ray-actors must be at least 1"),
    (["--ray", "--study", "STUDY.db"], "with --ray the study is an Optuna journal"),
    (["--study", "JUNK.journal"], "not an Optuna journal"),
])
def test_bad_ray_input(tmp_path, capsys, flags, message):
    (tmp_path / "JUNK.journal").write_text("not a journal\n")
    flags = [f.replace("STUDY", str(tmp_path / "s")).replace("JUNK", str(tmp_path / "JUNK"))
             for f in flags]
    code = main(["search", str(space(tmp_path)), "--data", str(DEV), "--trials", "2",
                 "--out", str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_a_ray_search_on_the_embedded_model_draws_what_one_without_ray_draws(tmp_path, capsys):
    """Two actors, each loading the embedded model once, each with its own
    computations (separate call caches): every configuration both searches
    tried predicts the same answers, item by item (seeds come from what a
    call computes, and the paged engine is batch-invariant)."""
    path = tmp_path / "space.tts"
    path.write_text(SPACE.replace("tiny-random", "smollm2-135m").replace("MAX", "12"))
    predictions = {}
    for arm, extra in (("plain", []), ("ray", ["--ray", "--ray-actors", "2"])):
        out = tmp_path / arm
        assert main(["search", str(path), "--data", str(DEV), "--limit", "6", "--trials", "3",
                     "--out", str(out), "--cache", str(tmp_path / f"{arm}.db"), "--json",
                     "--quiet", *extra]) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["trials"] == 3
        by_config = {}
        for r in lines(out / "trials.jsonl"):
            items = lines(Path(r["files"]["results"]))
            by_config[tuple(sorted(r["knobs"].items()))] = {i["id"]: i["prediction"] for i in items}
        by_config["greedy"] = {i["id"]: i["prediction"] for i in lines(out / "greedy.jsonl")}
        predictions[arm] = by_config
    both = set(predictions["plain"]) & set(predictions["ray"])
    assert "greedy" in both and len(both) >= 2
    for config in both:
        assert predictions["ray"][config] == predictions["plain"][config], config
