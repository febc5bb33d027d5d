"""JSONL data sets and resumable result files.

A data set is one JSON object per line. Every mistake in it is a UserError that
names FILE:LINE, because a bad line 7,312 of a data set must be found without
a debugger.

Results are appended one JSON line per finished item, flushed and fsynced, so
an interrupted evaluation keeps everything it finished; `load_done` reads them
back to skip those items on the next run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from ttsc.common.errors import UserError

PathLike = str | os.PathLike[str]


class Rows(list):
    """The rows of a JSONL file (a list of dicts) that remember their line numbers."""

    def __init__(self, rows: Iterable[dict[str, Any]] = (), line_numbers: Iterable[int] = ()):
        super().__init__(rows)
        self.line_numbers = list(line_numbers)

    def line_of(self, index: int) -> int:
        """1-based line number of row `index` (its position + 1 if unknown)."""
        return self.line_numbers[index] if index < len(self.line_numbers) else index + 1


def _read_bytes(path: PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        reason = e.strerror or str(e)
        raise UserError(f"cannot read data file {path}: {reason}") from None


def _split_lines(data: bytes) -> list[bytes]:
    """Lines split on newlines only: JSON text may hold U+2028, which str.splitlines splits on."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


def _decode(line: bytes, path: PathLike, number: int) -> str:
    try:
        return line.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError:
        raise UserError(f"{path}:{number}: not valid UTF-8 text",
                        hint="data files must be UTF-8 encoded JSONL") from None


def load_jsonl(path: PathLike) -> Rows:
    """The objects of a JSONL file; blank lines are skipped."""
    rows, line_numbers = [], []
    for number, raw in enumerate(_split_lines(_read_bytes(path)), start=1):
        line = _decode(raw, path, number)
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{number}: malformed JSON: {e.msg} (column {e.colno})",
                            hint="each line must be one JSON object") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{number}: expected a JSON object, got {_json_type(row)}",
                            hint='each line must look like {"question": ..., "answer": ...}')
        rows.append(row)
        line_numbers.append(number)
    return Rows(rows, line_numbers)


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def check_fields(rows: Sequence[dict[str, Any]], path: PathLike,
                 required: Sequence[str]) -> None:
    """UserError naming the first row (by line) that lacks a required field."""
    for index, row in enumerate(rows):
        missing = [name for name in required if name not in row]
        if missing:
            line = rows.line_of(index) if isinstance(rows, Rows) else index + 1
            present = ", ".join(sorted(row)) or "none"
            raise UserError(
                f"{path}:{line}: missing field {', '.join(repr(m) for m in missing)} "
                f"(fields present: {present})",
                hint=f"every row needs: {', '.join(required)}")


def row_id(row: dict[str, Any], index: int) -> str:
    """The key of a data row in results: its "id" field, else its position."""
    return str(row["id"]) if "id" in row else str(index)


def check_unique_ids(rows: Sequence[dict[str, Any]], path: PathLike) -> None:
    """UserError at the second row whose id repeats an earlier one (resuming needs unique ids)."""
    seen: dict[str, int] = {}
    for index, row in enumerate(rows):
        key = row_id(row, index)
        line = rows.line_of(index) if isinstance(rows, Rows) else index + 1
        if key in seen:
            raise UserError(f"{path}:{line}: duplicate id {key!r} (first on line {seen[key]})")
        seen[key] = line


def drop_partial_last_line(path: PathLike) -> None:
    """Cut a JSON-lines file back to its last whole line. A process killed
    mid-write leaves a line without its newline; appending after it would
    glue two records into one malformed line."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        keep = f.read().rfind(b"\n") + 1
        f.truncate(keep)


class ResultsWriter:
    """Appends one JSON line per finished item, durably (flush + fsync per line)."""

    def __init__(self, path: PathLike, key: str = "id"):
        self.path = Path(path)
        self.key = key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        drop_partial_last_line(self.path)
        self._file = open(self.path, "ab")

    def write(self, record: dict[str, Any]) -> None:
        if self.key not in record:
            raise ValueError(f"result record lacks its key field {self.key!r}")
        line = json.dumps(record, ensure_ascii=False) + "\n"
        self._file.write(line.encode("utf-8"))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "ResultsWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_done(path: PathLike, key: str = "id") -> dict[str, dict[str, Any]]:
    """Finished results by str(key); a missing file is empty, a cut-off last line is ignored."""
    if not Path(path).exists():
        return {}
    data = _read_bytes(path)
    lines = _split_lines(data)
    done: dict[str, dict[str, Any]] = {}
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            if number == len(lines) and not data.endswith(b"\n"):
                break  # the write an interrupted run did not finish
            reason = e.msg if isinstance(e, json.JSONDecodeError) else "not valid UTF-8"
            raise UserError(f"{path}:{number}: malformed JSON in results file: {reason}",
                            hint="fix or delete that line to resume") from None
        if not isinstance(record, dict) or key not in record:
            raise UserError(f"{path}:{number}: result line is not an object with {key!r}",
                            hint="is this a results file written by ttsc?")
        done[str(record[key])] = record
    return done
