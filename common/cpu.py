"""The CPU's feature flags, as Linux lists them in /proc/cpuinfo.

Read, not probed or timed, so that choices made from them (bf16 or fp32, a
llama-server flag) never depend on how busy the machine is.
"""

from __future__ import annotations

import functools
from pathlib import Path


def flags_of(cpuinfo: str) -> frozenset[str]:
    """The flags of /proc/cpuinfo's first `flags` line (all cores list the same)."""
    line = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This machine's CPU flags; none where /proc/cpuinfo cannot be read."""
    try:
        return flags_of(Path("/proc/cpuinfo").read_text())
    except OSError:
        return frozenset()
