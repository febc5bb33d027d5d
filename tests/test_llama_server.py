"""runtime/llama_server.py without a server: the flags a CPU needs (the CPU's
flags as common/cpu.py reads them)."""

from __future__ import annotations

from ttsc.common.cpu import flags_of
from ttsc.runtime.llama_server import _cpu_workarounds

XEON_AMX = "processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
EPYC = "processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n"


def test_flags_are_read_from_the_flags_line_only() -> None:
    assert flags_of(XEON_AMX) == {"fpu", "sse2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}
    assert flags_of("model name\t: amx_int8 in a name is not a flag\n" + EPYC) == flags_of(EPYC)
    assert flags_of("") == frozenset()


def test_amx_cpus_keep_weights_out_of_llama_cpps_amx_buffers() -> None:
    assert _cpu_workarounds(flags_of(XEON_AMX)) == ["--no-repack"]
    assert _cpu_workarounds(flags_of(EPYC)) == []
