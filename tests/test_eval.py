"""`ttsc eval`: per-item results, provenance, the call cache, and bad input
found before any model loads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ttsc.cli import main

ROOT = Path(__file__).resolve().parent.parent
TINY = '''model policy = "tiny-random"
prompt solve = """{question}"""
strategy sc(question) {
    return vote(extract(generate(policy, solve, n=3, max_tokens=4), number))
}
strategy other(question) {
    return vote(extract(generate(policy, solve, n=2, max_tokens=4), number))
}
'''
# A model spec that is well-formed but cannot load: checks that run before the
# load report their own error, not this one.
UNLOADABLE = ["--model", "policy=hf:nobody/no-such-model"]


@pytest.fixture
def tiny_file(tmp_path):
    path = tmp_path / "tiny.tts"
    path.write_text(TINY)
    return path


def data_file(tmp_path, n=5, rows=None):
    path = tmp_path / "d.jsonl"
    rows = rows or [{"id": i, "question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_eval(capsys, *args):
    code = main(["eval", *map(str, args), "--quiet"])
    out, err = capsys.readouterr()
    return code, out, err


def summary_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_items_record_tokens_and_what_produced_them(tiny_file, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    code, text, _ = run_eval(capsys, tiny_file, "--data", data_file(tmp_path), "--out", out,
                             "--strategy", "sc", "--json", "--no-cache")
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == ["0", "1", "2", "3", "4"]
    for r in rows:
        t = r["tokens"]
        assert t["generated"] <= 3 * 4 and t["computed"] <= t["requested"]
        assert t["computed"] > t["generated"]  # some prompt tokens were computed too
        assert r["produced_by"]["strategy"] == "sc" and r["produced_by"]["seed"] == 0
        assert r["produced_by"]["models"] == {"policy": "tiny-random"}
    summary = summary_json(text)
    assert summary["tokens"] == sum(r["tokens"]["computed"] for r in rows)
    assert "tokens/input" in text and "computed" in text and "requested" in text


def test_results_of_another_run_are_refused_then_force_starts_over(tiny_file, tmp_path, capsys):
    data, out = data_file(tmp_path, 3), tmp_path / "r.jsonl"
    assert run_eval(capsys, tiny_file, "--data", data, "--out", out, "--strategy", "sc")[0] == 0
    first = out.read_text()
    code, _, err = run_eval(capsys, tiny_file, "--data", data, "--out", out, "--strategy", "other",
                            *UNLOADABLE)
    assert code == 2
    assert "produced by strategy `sc`" in err and "this run is strategy `other`" in err
    assert "--force" in err and "Traceback" not in err
    assert out.read_text() == first  # nothing lost
    code, _, err = run_eval(capsys, tiny_file, "--data", data, "--out", out, "--strategy", "sc",
                            "--seed", "1", *UNLOADABLE)
    assert code == 2 and "seed 0" in err
    code, text, _ = run_eval(capsys, tiny_file, "--data", data, "--out", out, "--strategy", "other",
                             "--force")
    assert code == 0 and "resumed" not in text
    assert (tmp_path / "r.jsonl.old").read_text() == first
    assert all(json.loads(line)["produced_by"]["strategy"] == "other"
               for line in out.read_text().splitlines())


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--limit", "-1"], "--limit must be at least 1"),
    (["--limit", "0"], "--limit must be at least 1"),
    (["--scorer", "bogus"], "unknown scorer `bogus`"),
])
def test_bad_flags_are_reported_before_any_model_loads(tiny_file, tmp_path, capsys, args, message):
    code, _, err = run_eval(capsys, tiny_file, "--data", data_file(tmp_path), *args, *UNLOADABLE)
    assert code == 2 and message in err and "Traceback" not in err


def test_duplicate_ids_name_both_lines(tiny_file, tmp_path, capsys):
    rows = [{"id": "a", "question": "1", "answer": "1"}, {"id": "b", "question": "2", "answer": "2"},
            {"id": "a", "question": "3", "answer": "3"}]
    code, _, err = run_eval(capsys, tiny_file, "--data", data_file(tmp_path, rows=rows), *UNLOADABLE)
    assert code == 2 and "d.jsonl:3: duplicate id 'a' (first on line 1)" in err


def test_malformed_results_file_is_reported_before_loading(tiny_file, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    out.write_text('{"id": "0", "prediction": "1"}\nnot json\n{"id": "2"}\n')
    code, _, err = run_eval(capsys, tiny_file, "--data", data_file(tmp_path), "--out", out,
                            *UNLOADABLE)
    assert code == 2 and "r.jsonl:2: malformed JSON in results file" in err


def test_a_second_identical_eval_computes_nothing_and_prints_the_same(tiny_file, tmp_path, capsys):
    data, cache = data_file(tmp_path, 4), tmp_path / "calls.db"
    code, first, _ = run_eval(capsys, tiny_file, "--data", data, "--cache", cache, "--json")
    assert code == 0
    code, second, _ = run_eval(capsys, tiny_file, "--data", data, "--cache", cache, "--json")
    assert code == 0
    a, b = summary_json(first), summary_json(second)
    assert a["cache_misses"] > 0 and a["cache_hits"] == 0
    assert b["cache_misses"] == 0 and b["cache_hits"] == a["cache_misses"]
    for key in ("accuracy", "sample_accuracy", "tokens", "tokens_per_input",
                "requested_tokens_per_input", "generated_tokens_per_input"):
        assert a[key] == b[key], key
    assert "nothing computed" in second


@pytest.mark.parametrize("content, message", [
    (b"this is not a database at all" * 40, "not a usable ttsc call cache"),
    (None, "is an SQLite database but not a ttsc call cache"),
])
def test_a_bad_cache_file_is_a_clear_error(tiny_file, tmp_path, capsys, content, message):
    cache = tmp_path / "calls.db"
    if content is None:
        import sqlite3

        db = sqlite3.connect(cache)
        db.execute("CREATE TABLE people (name TEXT)")
        db.commit()
        db.close()
    else:
        cache.write_bytes(content)
    code, _, err = run_eval(capsys, tiny_file, "--data", data_file(tmp_path), "--cache", cache,
                            *UNLOADABLE)
    assert code == 2 and message in err and "--no-cache" in err and "Traceback" not in err


def test_kill_9_mid_run_then_resume_matches_an_uninterrupted_run(tiny_file, tmp_path):
    data = data_file(tmp_path, rows=[{"id": i, "question": f"What is {i} + {i}?", "answer": str(2 * i)}
                                     for i in range(40)])
    env = {**os.environ, "TTSC_CALL_CACHE": "off"}

    def command(out):
        return [sys.executable, "-P", "-m", "ttsc.cli", "eval", str(tiny_file), "--data", str(data),
                "--out", str(out), "--quiet", "--strategy", "sc", "--batch-size", "2"]

    whole = tmp_path / "whole.jsonl"
    subprocess.run(command(whole), env=env, check=True, capture_output=True)
    cut = tmp_path / "cut.jsonl"
    proc = subprocess.Popen(command(cut), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not cut.exists() or len(cut.read_text().splitlines()) < 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = len(cut.read_bytes().split(b"\n")) - 1
    assert 5 <= kept < 40, "the run was not cut in the middle"
    again = subprocess.run(command(cut), env=env, capture_output=True, text=True, check=True)
    assert f"{kept} resumed" in again.stdout or f"{kept - 1} resumed" in again.stdout

    def by_id(path):
        return {r["id"]: (r["prediction"], r["samples"]) for r in map(json.loads, path.read_text().splitlines())}

    lines = cut.read_text().splitlines()
    assert len(lines) == 40 and len({json.loads(line)["id"] for line in lines}) == 40
    assert by_id(cut) == by_id(whole)
