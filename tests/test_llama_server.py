"""runtime/llama_server.py without a server: the flags a CPU needs."""

from __future__ import annotations

from ttsc.runtime.llama_server import _cpu_workarounds

XEON_AMX = "processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
EPYC = "processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n"


def test_amx_cpus_keep_weights_out_of_llama_cpps_amx_buffers() -> None:
    assert _cpu_workarounds(XEON_AMX) == ["--no-repack"]
    assert _cpu_workarounds(EPYC) == []
    assert _cpu_workarounds("model name\t: amx_int8 in a name is not a flag\n") == []
