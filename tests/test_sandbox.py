import os
import tempfile

import pytest

from ttsc.runtime.sandbox import (ProgramRun, find_tests, run_many_python_programs, run_many_python_tests,
                                  run_python_program, run_python_tests)

ADD = "def add(a, b):\n    return a + b\n"


@pytest.fixture
def sandbox_root(tmp_path, monkeypatch):
    """Sandbox directories are created under tmp_path, so a test can see them go."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_passing_code_passes():
    run = run_python_tests(ADD, "assert add(1, 2) == 3\nassert add(0, 0) == 0")
    assert (run.passed, run.total, run.error, run.timed_out) == (2, 2, None, False)
    assert run.all_passed and run.fraction == 1.0


def test_failing_asserts_are_counted_and_do_not_hide_others():
    tests = "assert add(1, 2) == 4\nassert add(1, 1) == 2\nassert add(2, 2) == 5\nassert add(3, 3) == 6"
    run = run_python_tests(ADD, tests)
    assert (run.passed, run.total) == (2, 4)
    assert run.error == "test 1 failed at line 1: AssertionError: assert add(1, 2) == 4"
    assert not run.all_passed


def test_what_counts_as_a_test():
    tests = ("import math\n"
             "def helper(x):\n    assert x\n    return x\n"
             "assert add(1, 1) == 2\n"
             "for i in range(3):\n    assert add(i, 0) == i\n"
             "x = add(2, 3)\n"
             "assert x == 5\n")
    assert find_tests(tests) == [False, False, True, True, False, True]
    run = run_python_tests(ADD, tests)
    assert (run.passed, run.total, run.error) == (3, 3, None)


def test_exceptions_in_tests_are_failures():
    run = run_python_tests(ADD, "assert add(1) == 1\nassert add(1, 1) == 2")
    assert (run.passed, run.total) == (1, 2)
    assert "TypeError" in run.error


def test_error_in_code_fails_every_test():
    run = run_python_tests("def add(a, b):\n    return a + b\nraise ValueError('boom')",
                           "assert undefined_name\nassert 1 + 1 == 2")
    assert (run.passed, run.total) == (1, 2)
    assert run.error == "the code raised ValueError: boom"


def test_syntax_errors():
    run = run_python_tests("def add(a, b) return", "assert add(1, 2) == 3")
    assert (run.passed, run.total, run.timed_out) == (0, 1, False)
    assert run.error.startswith("SyntaxError in code at line 1")
    run = run_python_tests(ADD, "assert (add(1, 2)")
    assert (run.passed, run.total) == (0, 0)
    assert run.error.startswith("SyntaxError in tests")


def test_main_block_does_not_run():
    code = ADD + "if __name__ == '__main__':\n    input()\n"
    assert run_python_tests(code, "assert add(1, 2) == 3").all_passed


def test_infinite_loop_times_out():
    run = run_python_tests("while True:\n    pass", "assert True", timeout_s=1.0)
    assert run.timed_out and run.passed == 0 and run.total == 1
    assert "timed out" in run.error


def test_timeout_keeps_tests_finished_before_it():
    code = "def slow():\n    while True:\n        pass\n"
    run = run_python_tests(code, "assert 1 + 1 == 2\nassert slow()\nassert True", timeout_s=2.0)
    assert run.timed_out and (run.passed, run.total) == (1, 3)


def test_sleeping_code_times_out_on_the_wall_clock():
    run = run_python_tests("import time\ntime.sleep(30)", "assert True", timeout_s=0.5)
    assert run.timed_out


def test_memory_bomb_is_stopped():
    code = "def grow():\n    chunks = []\n    while True:\n        chunks.append(bytearray(10**7))\n"
    run = run_python_tests(code, "assert grow()\nassert 2 + 2 == 4", memory_mb=256)
    assert (run.passed, run.total, run.timed_out) == (1, 2, False)
    assert "MemoryError" in run.error


def test_socket_use_fails():
    code = ("import socket\n"
            "def connect():\n"
            "    try:\n"
            "        socket.create_connection(('127.0.0.1', 9), timeout=1)\n"
            "    except OSError as e:\n"
            "        return str(e)\n"
            "def raw():\n"
            "    import _socket\n"
            "    return _socket.socket()\n")
    run = run_python_tests(code, "assert 'disabled' in connect()\nassert raw()")
    assert (run.passed, run.total) == (1, 2)
    assert "network access is disabled" in run.error


def test_processes_cannot_be_started():
    code = ("import os, subprocess\n"
            "def fork():\n    return os.fork()\n"
            "def shell():\n    return subprocess.run(['true'])\n"
            "def system():\n    return os.system('true')\n")
    run = run_python_tests(code, "assert fork()\nassert shell()\nassert system()")
    assert (run.passed, run.total) == (0, 3)
    assert "disabled in the sandbox" in run.error


def test_files_stay_in_a_temporary_directory_that_is_removed(sandbox_root):
    here = os.getcwd()
    code = ("import os\n"
            "with open('out.txt', 'w') as f:\n    f.write('x')\n"
            "os.mkdir('sub')\n"
            "workdir = os.getcwd()\n")
    tests = ("assert os.path.exists('out.txt')\n"
             "assert os.path.basename(workdir).startswith('ttsc-sandbox-')\n"
             f"assert workdir != {here!r}\n")
    run = run_python_tests(code, tests)
    assert (run.passed, run.total, run.error) == (3, 3, None)
    assert list(sandbox_root.iterdir()) == []  # the sandbox directory is gone
    assert not os.path.exists(os.path.join(here, "out.txt"))


def test_large_files_are_refused():
    code = "def big():\n    with open('big', 'w') as f:\n        f.write('a' * (4 << 20))\n"
    run = run_python_tests(code, "assert big() is None")
    assert run.passed == 0 and "File too large" in run.error


def test_stdin_is_closed_and_output_is_ignored():
    code = "print('noise ' * 1000)\ndef ask():\n    return input()\n"
    run = run_python_tests(code, "assert ask()\nassert True")
    assert (run.passed, run.total) == (1, 2)
    assert "EOFError" in run.error


def test_process_exit_is_reported():
    run = run_python_tests("import os\nos._exit(3)", "assert True")
    assert (run.passed, run.total, run.timed_out) == (0, 1, False)
    assert "exit status 3" in run.error


def test_environment_is_isolated(monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "s3cret")
    code = "import os, sys\nenv = dict(os.environ)\npaths = list(sys.path)\n"
    tests = "assert 'SECRET_TOKEN' not in env\nassert not any('site-packages' in p for p in paths)"
    assert run_python_tests(code, tests).all_passed


def test_run_many():
    runs = run_many_python_tests([(ADD, "assert add(1, 1) == 2"),
                                  ("def add(a, b):\n    return 0", "assert add(1, 1) == 2")],
                                 workers=2)
    assert [r.passed for r in runs] == [1, 0]


# ---------------------------------------------------------------- programs (PAL)


def test_program_answer_is_its_last_expression_else_answer_else_last_printed_line():
    assert run_python_program("46 - 17") == ProgramRun("29", None)
    assert run_python_program("x = 6\nx * 7").value == "42"
    assert run_python_program("answer = 2 ** 10").value == "1024"
    assert run_python_program("print('a')\nprint(3 * 4)\n").value == "12"  # print() returns None
    assert run_python_program("answer = 1\n2").value == "2"  # the last expression wins


def test_program_without_an_answer_or_failing_has_none_and_says_why():
    assert run_python_program("x = 1") == ProgramRun(None, None)
    run = run_python_program("1 / 0")
    assert run.value is None and "ZeroDivisionError" in run.error
    assert "SyntaxError in program at line 1" in run_python_program("def f(:").error
    assert "disabled in the sandbox" in run_python_program("import os\nos.system('true')").error
    assert run_python_program("while True:\n    pass", timeout_s=1) == ProgramRun(None, "timed out after 1 s")


def test_run_many_programs_keeps_their_order():
    runs = run_many_python_programs(["1 + 1", "raise ValueError('no')", "print(7)"], workers=2)
    assert [r.value for r in runs] == ["2", None, "7"]
    assert "ValueError: no" in runs[1].error
