import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ttsc.common.errors import UserError
from ttsc.runtime.data import (ResultsWriter, check_fields, check_unique_ids, load_done,
                               load_jsonl, row_id)

DATA = Path(__file__).resolve().parent.parent / "examples" / "data"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_load_skips_blank_lines_and_keeps_line_numbers(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"q": 1}\n\n  \n{"q": 2}\n')
    rows = load_jsonl(path)
    assert rows == [{"q": 1}, {"q": 2}]
    assert rows.line_numbers == [1, 4]


def test_line_separator_inside_a_string_is_not_a_new_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(json.dumps({"q": "a\u2028b"}, ensure_ascii=False).encode() + b"\n")
    assert load_jsonl(path) == [{"q": "a\u2028b"}]


def test_missing_file_names_path_and_reason(tmp_path):
    with pytest.raises(UserError, match=r"cannot read data file .*nope\.jsonl: No such file"):
        load_jsonl(tmp_path / "nope.jsonl")


def test_malformed_line_gives_file_and_line(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"q": 1}\n\n{"q": 2,}\n')
    with pytest.raises(UserError) as info:
        load_jsonl(path)
    assert re.search(r"d\.jsonl:3: malformed JSON: ", info.value.message)


def test_non_object_line(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"q": 1}\n[1, 2]\n')
    with pytest.raises(UserError, match=r"d\.jsonl:2: expected a JSON object, got an array"):
        load_jsonl(path)


def test_bad_utf8_gives_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"q": 1}\n{"q": "\xff"}\n')
    with pytest.raises(UserError, match=r"d\.jsonl:2: not valid UTF-8"):
        load_jsonl(path)


def test_check_fields_names_line_missing_and_present(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"question": "a", "answer": "1"}\n\n{"question": "b", "ans": "2"}\n')
    rows = load_jsonl(path)
    check_fields(rows[:1], path, ["question", "answer"])
    with pytest.raises(UserError) as info:
        check_fields(rows, path, ["question", "answer"])
    message = info.value.message
    assert "d.jsonl:3:" in message and "'answer'" in message and "ans, question" in message


def test_check_unique_ids(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"id": 1}\n{"id": 2}\n{"id": "1"}\n')
    with pytest.raises(UserError, match=r"d\.jsonl:3: duplicate id '1' \(first on line 1\)"):
        check_unique_ids(load_jsonl(path), path)
    assert row_id({"x": 1}, 5) == "5"


def test_results_round_trip_and_resume(tmp_path):
    path = tmp_path / "out" / "results.jsonl"
    with ResultsWriter(path) as writer:
        writer.write({"id": 1, "correct": True})
        writer.write({"id": "b", "prediction": "caf\u00e9"})
    assert load_done(path) == {"1": {"id": 1, "correct": True},
                               "b": {"id": "b", "prediction": "caf\u00e9"}}
    with ResultsWriter(path) as writer:  # a second run appends
        writer.write({"id": 3})
    assert set(load_done(path)) == {"1", "b", "3"}
    assert load_done(tmp_path / "absent.jsonl") == {}


def test_truncated_last_line_is_ignored_then_overwritten(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"id": 1}\n{"id": 2, "pred')  # a run killed mid-write
    assert set(load_done(path)) == {"1"}
    with ResultsWriter(path) as writer:
        writer.write({"id": 2})
    assert path.read_bytes() == b'{"id": 1}\n{"id": 2}\n'


def test_corrupt_middle_line_is_an_error(tmp_path):
    path = write(tmp_path / "results.jsonl", '{"id": 1}\n{"id": \n{"id": 3}\n')
    with pytest.raises(UserError, match=r"results\.jsonl:2: malformed JSON"):
        load_done(path)


def test_writer_requires_key(tmp_path):
    with ResultsWriter(tmp_path / "r.jsonl") as writer, pytest.raises(ValueError):
        writer.write({"no_id": 1})


def test_results_survive_a_killed_process(tmp_path):
    # Each line is fsynced as it is written: a process killed right after
    # writing loses nothing it finished.
    path = tmp_path / "results.jsonl"
    script = (f"from ttsc.runtime.data import ResultsWriter\n"
              f"import os\n"
              f"w = ResultsWriter({str(path)!r})\n"
              f"for i in range(5):\n"
              f"    w.write({{'id': i}})\n"
              f"os._exit(1)\n")
    subprocess.run([sys.executable, "-P", "-c", script], check=False)
    assert set(load_done(path)) == {"0", "1", "2", "3", "4"}


# --- the example data sets --------------------------------------------------

EXPECTED_ROWS = {"addition.jsonl": 60, "addition_dev.jsonl": 20, "two_digit.jsonl": 40,
                 "mixed.jsonl": 40, "mcq.jsonl": 30, "tiers.jsonl": 90, "tiers_dev.jsonl": 120}


@pytest.mark.parametrize("name, count", EXPECTED_ROWS.items())
def test_example_data_is_well_formed(name, count):
    path = DATA / name
    rows = load_jsonl(path)
    assert len(rows) == count
    check_fields(rows, path, ["id", "question", "answer"])
    check_unique_ids(rows, path)
    assert len({row["question"] for row in rows}) == count


@pytest.mark.parametrize("name", ["addition.jsonl", "addition_dev.jsonl", "two_digit.jsonl",
                                  "mixed.jsonl"])
def test_arithmetic_answers_are_right(name):
    for row in load_jsonl(DATA / name):
        a, op, b = re.fullmatch(r"What is (\d+) ([+-]) (\d+)\?", row["question"]).groups()
        assert int(row["answer"]) == (int(a) + int(b) if op == "+" else int(a) - int(b))


def test_calibration_set_is_disjoint_from_test_set():
    test = {row["question"] for row in load_jsonl(DATA / "addition.jsonl")}
    dev = {row["question"] for row in load_jsonl(DATA / "addition_dev.jsonl")}
    assert not test & dev


def test_mixed_difficulties():
    rows = load_jsonl(DATA / "mixed.jsonl")
    assert sorted(r["difficulty"] for r in rows) == ["easy"] * 20 + ["hard"] * 20
    for row in rows:
        a, b = map(int, re.findall(r"\d+", row["question"]))
        assert (max(a, b) < 10) == (row["difficulty"] == "easy")


@pytest.mark.parametrize("name, per_tier", [("tiers.jsonl", 30), ("tiers_dev.jsonl", 40)])
def test_tiers_are_right_and_balanced(name, per_tier):
    rows = load_jsonl(DATA / name)
    assert sorted(r["difficulty"] for r in rows) == sorted(["easy", "medium", "hard"] * per_tier)
    for row in rows:
        copy = re.fullmatch(r"What is the number (\d+)\?", row["question"])
        if row["difficulty"] == "easy":
            assert copy and copy.group(1) == row["answer"]
            continue
        a, op, b = re.fullmatch(r"What is (\d+) ([+-]) (\d+)\?", row["question"]).groups()
        assert int(row["answer"]) == (int(a) + int(b) if op == "+" else int(a) - int(b))
        assert (max(int(a), int(b)) < 10) == (row["difficulty"] == "medium")


def test_tiers_held_out_set_is_disjoint_from_its_dev_set():
    held = {row["question"] for row in load_jsonl(DATA / "tiers.jsonl")}
    dev = {row["question"] for row in load_jsonl(DATA / "tiers_dev.jsonl")}
    assert not held & dev


def test_mcq_answers_are_right_and_balanced():
    rows = load_jsonl(DATA / "mcq.jsonl")
    for row in rows:
        kind = re.match(r"Which number is (largest|smallest)\?", row["question"]).group(1)
        options = dict(re.findall(r"([A-D])\) (\d+)", row["question"]))
        values = {letter: int(v) for letter, v in options.items()}
        pick = max if kind == "largest" else min
        assert row["answer"] == pick(values, key=values.get)
    counts = [sum(r["answer"] == letter for r in rows) for letter in "ABCD"]
    assert max(counts) - min(counts) <= 1


def test_make_data_is_deterministic(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_data", DATA / "make_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, rows in module.make_all().items():
        assert rows == load_jsonl(DATA / name), f"{name} is stale: rerun make_data.py"
