"""Kill -9 a `ttsc search` at the moment that tests its resume: one trial
finished and another running with its configuration stored."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent


def kill_mid_trial(args: list[str], states: Callable[[], list[tuple[str, int]]], params: int,
                   poll: float = 0.05, timeout: float = 300) -> None:
    """Run `ttsc ARGS...`; as soon as `states()` (each trial's state name and
    how many parameters it has stored) shows a COMPLETE trial and a RUNNING one
    with all `params`, kill the process with SIGKILL. Fails the test if the
    process exits first or the moment never comes."""
    proc = subprocess.Popen([sys.executable, "-P", "-m", "ttsc.cli", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            now = states()
            if any(s == "COMPLETE" for s, _ in now) and \
                    any(s == "RUNNING" and k == params for s, k in now):
                break
            assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
            time.sleep(poll)
        else:
            pytest.fail("the search never had a finished and a running trial at once")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()  # type: ignore[union-attr]
