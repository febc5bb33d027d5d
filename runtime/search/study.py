"""The Optuna study behind a search: storage, sampler, resuming, the trial loop.

- Storage: Optuna's RDB storage in one SQLite file (DIR/study.db), or with
  `--ray` (or a --study file ending .journal) Optuna's journal storage: an
  append-only log file (DIR/study.journal) that Optuna locks for each write,
  safe for several processes, where SQLite shared between processes is not.
  Every trial is written
  when it is asked for (RUNNING, with its parameters) and when it is told
  (COMPLETE, PRUNED or FAIL, with what it measured), so a process killed at
  any moment leaves a study that a rerun continues.
- One search at a time per study: a lock file beside it (released by the OS
  when the process dies, so kill -9 leaves no stale lock). A trial still
  RUNNING when a search starts was therefore cut off: it is marked FAIL and
  its parameters are queued, so the next trial re-runs it.
- Finished means COMPLETE or PRUNED (over budget before running); a search
  stops at exactly `trials` finished trials, however often it was restarted.
- Samplers: TPE for one objective; multi-objective TPE (MOTPE) for two. The
  budget is a constraint (`Trial.set_constraint`, Optuna 5's replacement of
  `constraints_func`): tokens over budget as a fraction of it, > 0 is
  infeasible. Constrained TPE ranks infeasible trials below feasible ones
  whatever they scored; nothing is folded into the objective.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from ttsc.common.errors import UserError
from ttsc.runtime.data import drop_partial_last_line

STUDY_NAME = "ttsc-search"
SIGNATURE_ATTR = "ttsc_search"
ABOUT_ATTR = "ttsc_search_about"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
OBJECTIVES = {"accuracy": "maximize", "tokens": "minimize", "latency": "minimize"}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def parse_objectives(text: str) -> list[str]:
    """`accuracy`, `accuracy,tokens` or `accuracy,latency`."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names or names[0] != "accuracy" or len(names) > 2 or len(set(names)) != len(names) or \
            any(n not in OBJECTIVES for n in names):
        raise UserError(f"--objective {text!r}: expected accuracy, accuracy,tokens or accuracy,latency",
                        hint="accuracy is maximized; tokens (computed per input) or latency "
                             "(predicted per input) is the cost it is traded against")
    return names


class StudyLock:
    """An exclusive lock on a study for one search process."""

    def __init__(self, study_path: Path):
        # Not NAME.lock: Optuna's journal storage locks each write with that file.
        self.study = study_path
        self.path = study_path.with_name(study_path.name + ".ttsc-lock")
        self._file = None

    def __enter__(self) -> "StudyLock":
        self._file = open(self.path, "a")
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.close()
            raise UserError(f"another `ttsc search` is using the study {self.study}",
                            hint="wait for it to finish, or give this search another --study") from None
        if is_journal(self.study):
            settle_journal(self.study)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()


JOURNAL_SUFFIX = ".journal"


def is_journal(path: Path) -> bool:
    """Whether the study at `path` is an Optuna journal (by its name) rather than SQLite."""
    return path.suffix == JOURNAL_SUFFIX


def check_study_file(path: Path) -> None:
    """A UserError when `path` exists but is not an Optuna study of its kind."""
    if not path.exists():
        return
    if is_journal(path):
        _check_journal(path)
        return
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            db.close()
    except sqlite3.DatabaseError:
        raise UserError(f"--study {path}: not an SQLite database",
                        hint="give a new file (it is created), or the .db of an earlier search") from None
    if tables and "studies" not in tables:
        raise UserError(f"--study {path}: an SQLite database, but not an Optuna study",
                        hint="give a new file, or the .db of an earlier `ttsc search`")


def _check_journal(path: Path) -> None:
    with open(path, "rb") as f:
        first = f.readline()
    if not first.strip():
        return
    try:
        entry = json.loads(first)
    except ValueError:
        entry = None
    if not isinstance(entry, dict) or "op_code" not in entry:
        raise UserError(f"--study {path}: not an Optuna journal (line 1 is no journal entry)",
                        hint="give a new file (it is created), or the .journal of an earlier search")


def settle_journal(path: Path) -> None:
    """Called holding the StudyLock, so no other search writes this journal:
    undo what a search killed mid-write (kill -9) leaves. Optuna's write lock
    (NAME.lock, which Optuna would wait 30 s for, then break) is stale, and a
    last entry without its newline would be glued to the next one."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path.with_name(path.name + ".lock"))
    drop_partial_last_line(path)


def open_storage(path: Path) -> optuna.storages.BaseStorage:
    """The storage the study file names: a journal for NAME.journal, else SQLite."""
    if is_journal(path):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(path)))
    return optuna.storages.RDBStorage(f"sqlite:///{path}",
                                      engine_kwargs={"connect_args": {"timeout": 60}})


def open_study(path: Path, objectives: list[str], seed: int, signature: dict[str, Any],
               n_trials: int, sampler: str = "tpe", about: dict[str, str] | None = None) -> optuna.Study:
    """The study in `path` (created if new), checked to be this search's.
    `about` says in words what the signature's digests stand for (the space
    and data files), for the message when they differ."""
    check_study_file(path)
    storage = open_storage(path)
    directions = [OBJECTIVES[o] for o in objectives]
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, load_if_exists=True,
                                directions=directions,
                                sampler=make_sampler(objectives, seed, n_trials, sampler))
    theirs = study.user_attrs.get(SIGNATURE_ATTR)
    if theirs is None:
        if study.trials:
            raise UserError(f"--study {path}: a study not written by `ttsc search`")
        study.set_user_attr(SIGNATURE_ATTR, signature)
        study.set_user_attr(ABOUT_ATTR, dict(about or {}))
    elif theirs != signature:
        key = next(k for k in signature if theirs.get(k) != signature[k])
        there, here = study.user_attrs.get(ABOUT_ATTR, {}).get(key), (about or {}).get(key)
        if there is None or here is None:
            there, here = _show(theirs.get(key)), _show(signature[key])
        raise UserError(
            f"--study {path} holds a search of another {_WHAT.get(key, key)}: "
            f"{there} there, {here} here",
            hint="use another --study (or --out), or delete that file to start over")
    return study


_WHAT = {"space": "space (the .tts program or its knobs differ)", "strategy": "strategy",
         "data": "data set", "objectives": "objective", "scorer": "scorer",
         "answer_field": "answer field", "seed": "seed", "budget": "budget", "models": "model set"}


def _show(value: Any) -> str:
    return repr(value) if not isinstance(value, str) or len(value) < 60 else repr(value[:57] + "...")


SAMPLERS = ("tpe", "random")


def make_sampler(objectives: list[str], seed: int, n_trials: int,
                 kind: str = "tpe") -> optuna.samplers.BaseSampler:
    """TPE (MOTPE for two objectives), its first quarter of the trials (4 to
    10) drawn at random; or random search, the baseline the benchmark
    compares it with."""
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind != "tpe":
        raise UserError(f"--sampler {kind!r}: expected {' or '.join(SAMPLERS)}")
    startup = min(10, max(4, n_trials // 4))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True,
                                      constant_liar=True)


def recover(study: optuna.Study) -> list[int]:
    """Trials left RUNNING by a process that died: marked FAIL, their
    parameters queued to run next. Returns their numbers."""
    cut = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in cut:
        study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"rerun_of": t.number})
    return [t.number for t in cut]


def requeue(study: optuna.Study, trial: Trial) -> None:
    """A trial that did not finish: FAIL, and the same parameters queued, so
    the next trial (of this search or a rerun) retries them first."""
    study.tell(trial, state=TrialState.FAIL)
    study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number})


def finished(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=FINISHED)


class Stop(Exception):
    """A trial failed: the search stops after the trials in flight."""


def run_trials(study: optuna.Study, n_trials: int, parallel: int,
               objective: Callable[[Trial], tuple[float, ...] | None],
               distributions: dict[str, Any]) -> None:
    """Ask, run and tell until `n_trials` trials are finished, `parallel` at
    once. `objective` returns the objective values, or None when the trial
    did not run (PRUNED). An exception (Ctrl-C included) marks the trial FAIL,
    queues its parameters again and, once the trials in flight end, is raised."""
    lock = threading.Lock()
    in_flight = 0
    errors: list[BaseException] = []

    def worker() -> None:
        nonlocal in_flight
        while True:
            with lock:
                if errors or len(finished(study)) + in_flight >= n_trials:
                    return
                trial = study.ask(distributions)
                in_flight += 1
            try:
                values = objective(trial)
            except BaseException as exc:  # noqa: BLE001 (re-raised below, after the others end)
                requeue(study, trial)
                with lock:
                    in_flight -= 1
                    errors.append(exc)
                return
            if values is None:
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, list(values))
            with lock:
                in_flight -= 1

    if parallel <= 1:
        worker()
    else:
        threads = [threading.Thread(target=worker, name=f"ttsc-trial-{k}", daemon=True)
                   for k in range(parallel)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]


def default_study_path(out: Path, journal: bool = False) -> Path:
    return out / ("study" + (JOURNAL_SUFFIX if journal else ".db"))


def ensure_writable(out: Path) -> None:
    """--out exists (or is made) and takes files; a UserError otherwise."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".ttsc-write-check"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write there ({exc.strerror or exc})",
                        hint="choose a folder you can write to") from None
    if not os.access(out, os.W_OK):
        raise UserError(f"--out {out}: cannot write there", hint="choose a folder you can write to")
