"""Run generated Python code, away from our process: against assert-style
tests, or as a program whose answer is read back.

`run_python_tests(code, tests)` backs the `run_tests` op and the `unit_tests`
scorer. Each top-level test statement (an `assert`, or a loop or `with` that
contains asserts) is one test, run on its own so a failure does not hide the
rest; other top-level statements (imports, helpers) run as setup, in order.
`run_python_program(code)` backs the `program` extractor (PAL): it reads
the program's answer back.

The code runs in a child `python -I -S` (isolated: no site-packages, no user
paths, no PYTHON* variables), in a fresh temporary directory that is its working
directory and is removed afterwards, with stdin closed and an almost empty
environment. Limits: address space (memory_mb), CPU seconds, file size, open
files, no new processes (RLIMIT_NPROC, plus fork/exec/spawn replaced by
functions that raise, since root ignores RLIMIT_NPROC), and a wall-clock timeout
that kills the whole process group.

The network is blocked on a best-effort basis only: `socket.socket` and its
relatives are replaced before the user code runs. Together with the limits this
stops accidents and sloppy generated code (loops, memory bombs, stray files,
downloads), not a determined attacker: code that reaches ctypes, or writes to an
absolute path outside its directory, is not contained. Run untrusted code in a
container as well.
"""

from __future__ import annotations

import ast
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

FILE_SIZE_LIMIT = 1 << 20  # bytes any one file the code writes may reach
OPEN_FILES_LIMIT = 64
MESSAGE_LIMIT = 300  # characters kept of each error message


@dataclass(frozen=True)
class TestRun:
    __test__ = False  # not a pytest test class, despite the name

    passed: int
    total: int
    error: str | None  # the first problem met (setup error, failed test, limit), if any
    timed_out: bool

    @property
    def all_passed(self) -> bool:
        return self.total > 0 and self.passed == self.total

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0


# A driver runs inside the child: the preamble reads the job from stdin, then
# closes stdin, sets limits and blocks network and process creation; the body
# reports JSON lines on a private copy of stdout, so output of the user code
# (sent to /dev/null) cannot be mistaken for results.
_PREAMBLE = r'''
import ast, json, os, resource, socket, sys, traceback
import _socket, posix

job = json.loads(sys.stdin.buffer.read().decode("utf-8"))
report_fd = os.dup(1)
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)

def report(**item):
    os.write(report_fd, (json.dumps(item) + "\n").encode("ascii"))

def limit(kind, value):
    try:
        resource.setrlimit(kind, (value, value))
    except (ValueError, OSError):
        pass

limit(resource.RLIMIT_AS, job["memory_bytes"])
limit(resource.RLIMIT_CPU, job["cpu_seconds"])
limit(resource.RLIMIT_FSIZE, job["file_size"])
limit(resource.RLIMIT_NOFILE, job["open_files"])
limit(resource.RLIMIT_CORE, 0)
limit(resource.RLIMIT_NPROC, 0)

def refuse(what):
    def refused(*args, **kwargs):
        raise OSError(f"{what} is disabled in the sandbox")
    return refused

class NoSocket:
    def __init__(self, *args, **kwargs):
        raise OSError("network access is disabled in the sandbox")

for module in (socket, _socket):
    for name in ("socket", "SocketType", "socketpair", "fromfd", "create_connection",
                 "create_server", "getaddrinfo", "gethostbyname"):
        if hasattr(module, name):
            setattr(module, name, NoSocket if name in ("socket", "SocketType") else refuse("network access"))
# kill/killpg too: the code runs as our user and could signal the parent.
for module in (os, posix):
    for name in dir(module):
        if name in ("fork", "forkpty", "system", "popen", "kill", "killpg") or \
                name.startswith(("exec", "spawn", "posix_spawn")):
            setattr(module, name, refuse(f"os.{name}"))
import _posixsubprocess
_posixsubprocess.fork_exec = refuse("starting processes")

def describe(exc, source=None):
    if isinstance(exc, AssertionError) and not str(exc) and source:
        return f"AssertionError: {source}"[:1000]
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()[:1000]
'''

# One JSON line per test: each top-level test statement runs on its own.
_TESTS = _PREAMBLE + r'''
namespace = {"__name__": "solution", "__builtins__": __builtins__}
try:
    exec(compile(job["code"], "<solution>", "exec"), namespace)
except BaseException as exc:
    report(setup_error=f"the code raised {describe(exc)}")

tests = ast.parse(job["tests"], "<tests>")
index = 0
for stmt, is_test in zip(tests.body, job["test_flags"]):
    source = ast.get_source_segment(job["tests"], stmt) or ""
    try:
        exec(compile(ast.Module([stmt], []), "<tests>", "exec"), namespace)
        outcome = {"ok": True}
    except BaseException as exc:
        outcome = {"ok": False, "error": f"line {stmt.lineno}: {describe(exc, source)}"}
    if is_test:
        report(test=index, **outcome)
        index += 1
    elif not outcome["ok"]:
        report(setup_error=f"a setup statement of the tests failed at {outcome['error']}")
report(done=True)
'''

# One JSON line: the program's answer (see run_python_program) or its error.
_PROGRAM = _PREAMBLE + r'''
import contextlib, io
tree = ast.parse(job["code"], "<program>")
last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
namespace = {"__name__": "__main__", "__builtins__": __builtins__}
printed = io.StringIO()
try:
    with contextlib.redirect_stdout(printed):
        exec(compile(tree, "<program>", "exec"), namespace)
        value = eval(compile(ast.Expression(last.value), "<program>", "eval"), namespace) \
            if last is not None else None
    if value is None:
        value = namespace.get("answer")
    if value is None:
        lines = [line for line in printed.getvalue().splitlines() if line.strip()]
        value = lines[-1] if lines else None
    report(value=None if value is None else str(value)[:1000])
except BaseException as exc:
    report(error=describe(exc))
report(done=True)
'''


def find_tests(tests: str) -> list[bool]:
    """For each top-level statement of `tests`, whether it is a test (raises SyntaxError)."""
    return [_is_test(stmt) for stmt in ast.parse(tests, "<tests>").body]


def _is_test(stmt: ast.stmt) -> bool:
    # A helper function may assert internally; defining it is setup, not a test.
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return False
    return any(isinstance(node, ast.Assert) for node in ast.walk(stmt))


def _syntax_problem(where: str, e: SyntaxError) -> str:
    return f"SyntaxError in {where} at line {e.lineno}: {e.msg}"


def run_python_tests(code: str, tests: str, *, timeout_s: float = 5.0,
                     memory_mb: int = 512) -> TestRun:
    """Run `code`, then each test in `tests`, in a limited child process."""
    try:
        flags = find_tests(tests)
    except SyntaxError as e:
        return TestRun(0, 0, _syntax_problem("tests", e), False)
    except ValueError as e:  # null bytes
        return TestRun(0, 0, f"invalid tests: {e}", False)
    total = sum(flags)
    try:
        ast.parse(code, "<solution>")
    except SyntaxError as e:
        return TestRun(0, total, _syntax_problem("code", e), False)
    except ValueError as e:  # null bytes
        return TestRun(0, total, f"invalid code: {e}", False)

    output, returncode, timed_out = _run(_TESTS, {"code": code, "tests": tests, "test_flags": flags},
                                         timeout_s, memory_mb)
    return _collect(output, returncode, timed_out, total, timeout_s)


@dataclass(frozen=True)
class ProgramRun:
    value: str | None  # the program's answer, as text; None when it has none
    error: str | None  # why there is no answer: a syntax error, an exception, a limit


def run_python_program(code: str, *, timeout_s: float = 5.0, memory_mb: int = 512) -> ProgramRun:
    """Run `code` in a limited child process and read its answer (program-aided
    answering, PAL): the value of its last statement when that is an
    expression (`46 - 17`), else its variable `answer`, else the last line it
    printed."""
    try:
        ast.parse(code, "<program>")
    except SyntaxError as e:
        return ProgramRun(None, _syntax_problem("program", e))
    except ValueError as e:  # null bytes
        return ProgramRun(None, f"invalid program: {e}")
    output, returncode, timed_out = _run(_PROGRAM, {"code": code}, timeout_s, memory_mb)
    if timed_out or returncode == -signal.SIGXCPU:
        return ProgramRun(None, f"timed out after {timeout_s:g} s")
    for item in _report_lines(output):
        if "value" in item:
            return ProgramRun(item["value"], None)
        if "error" in item:
            return ProgramRun(None, f"the program raised {item['error']}"[:MESSAGE_LIMIT])
    return ProgramRun(None, f"the program's process ended early ({_signal_name(returncode)})")


def _run(driver: str, fields: dict, timeout_s: float, memory_mb: int) -> tuple[bytes, int, bool]:
    """Run `driver` on a job of `fields` and the limits, in a fresh directory."""
    job = json.dumps({
        **fields, "memory_bytes": memory_mb << 20, "cpu_seconds": math.ceil(timeout_s) + 1,
        "file_size": FILE_SIZE_LIMIT, "open_files": OPEN_FILES_LIMIT,
    }).encode("utf-8")
    workdir = tempfile.mkdtemp(prefix="ttsc-sandbox-")
    try:
        return _run_child(driver, job, workdir, timeout_s)
    finally:
        _remove_tree(workdir)


def _run_child(driver: str, job: bytes, workdir: str, timeout_s: float) -> tuple[bytes, int, bool]:
    env = {"HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", driver], cwd=workdir, env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        start_new_session=True)  # its own process group, killed as a whole
    try:
        output, _ = proc.communicate(job, timeout=timeout_s)
        return output, proc.returncode, False
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)  # not yet reaped, so the group id is still its own
        output, _ = proc.communicate()
        return output, proc.returncode, True


def _remove_tree(path: str) -> None:
    def make_writable_and_retry(func, failed_path, _exc) -> None:
        # The code may have taken permissions away from what it created.
        try:
            os.chmod(os.path.dirname(failed_path), 0o700)
            os.chmod(failed_path, 0o700)
            func(failed_path)
        except OSError:
            pass
    shutil.rmtree(path, onerror=make_writable_and_retry)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _collect(output: bytes, returncode: int, timed_out: bool, total: int,
             timeout_s: float) -> TestRun:
    passed, errors, done = 0, [], False
    for item in _report_lines(output):
        if item.get("ok"):
            passed += 1
        elif "error" in item:
            errors.append(f"test {item.get('test', 0) + 1} failed at {item['error']}")
        elif "setup_error" in item:
            errors.append(item["setup_error"])
        done = done or bool(item.get("done"))
    passed = min(passed, total)
    if returncode == -signal.SIGXCPU:
        timed_out = True
    if timed_out:
        return TestRun(passed, total, f"timed out after {timeout_s:g} s", True)
    if not done:
        how = _signal_name(returncode)
        errors.insert(0, f"the test process ended early ({how}) after {passed} passed test(s)")
    error = errors[0][:MESSAGE_LIMIT] if errors else None
    return TestRun(passed, total, error, False)


def _report_lines(output: bytes) -> list[dict]:
    """The driver's JSON report lines (a line cut short by a kill is dropped)."""
    items = []
    for line in output.decode("utf-8", "replace").splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(item, dict):
            items.append(item)
    return items


def _signal_name(returncode: int) -> str:
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit status {returncode}"


def run_many_python_tests(jobs: Sequence[tuple[str, str]], *, timeout_s: float = 5.0,
                          memory_mb: int = 512, workers: int | None = None) -> list[TestRun]:
    """`run_python_tests` over many (code, tests) pairs, several children at a time."""
    return _in_parallel(lambda job: run_python_tests(job[0], job[1], timeout_s=timeout_s,
                                                     memory_mb=memory_mb), jobs, workers)


def run_many_python_programs(programs: Sequence[str], *, timeout_s: float = 5.0,
                             memory_mb: int = 512, workers: int | None = None) -> list[ProgramRun]:
    """`run_python_program` over many programs, several children at a time."""
    return _in_parallel(lambda code: run_python_program(code, timeout_s=timeout_s,
                                                        memory_mb=memory_mb), programs, workers)


def _in_parallel(run, jobs: Sequence, workers: int | None) -> list:
    if not jobs:
        return []
    workers = workers or max(1, min(len(jobs), os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(run, jobs))
