"""The engine benchmark's peer: llama.cpp's own `llama-server`, and its bare rates.

A user who wants parallel sampling on a CPU runs llama.cpp's server with
parallel slots and continuous batching. This module runs it on the embedded
model with the same weight values the paged engine runs:

- `bf16_gguf()` converts the shipped Q4_1 GGUF to BF16 with llama.cpp's own
  `llama-quantize --allow-requantize IN OUT BF16` (the paged engine
  dequantizes the same Q4_1 file to bf16), kept under the ttsc cache
  ($TTSC_CACHE_DIR/gguf/);
- `run_peer(...)` serves one work (prompts as exact token ids, n samples each,
  a forced length with `ignore_eos`) on a fresh server per run, in one of the
  `CONFIGS` (unified KV or not; one request per prompt with `n_cmpl` samples,
  or one request per sample, all sent at once);
- `llama_bench_pp(...)` runs `llama-bench` for its prompt-processing rate.

The tools come from `scripts/build_llama_cpp.sh` (run by scripts/install.sh),
which builds llama.cpp once per machine and links them into .venv/bin.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from ttsc.common import paths
from ttsc.runtime.llama_server import LlamaServer, embedded_gguf, find_tool


def bf16_gguf() -> Path:
    """The embedded model in BF16, converted once by llama-quantize from the shipped Q4_1."""
    source = embedded_gguf()
    folder = paths.room("gguf")
    target = folder / (source.name.replace(".Q4_1.gguf", "") + f".BF16-{source.stat().st_size}.gguf")
    if target.is_file():
        return target
    tool = find_tool("llama-quantize")
    if tool is None:
        raise FileNotFoundError("llama-quantize not found: run scripts/install.sh "
                                "(scripts/build_llama_cpp.sh builds it into .venv/bin)")
    folder.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".tmp{os.getpid()}")
    done = subprocess.run([tool, "--allow-requantize", str(source), str(partial), "BF16"],
                          capture_output=True, text=True)
    if done.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"llama-quantize failed ({done.returncode}):\n{done.stderr[-2000:]}")
    partial.replace(target)  # atomic: a reader never sees half a file
    return target


@dataclass(frozen=True)
class PeerConfig:
    """How the peer serves a work: one slot per sequence either way."""

    kv_unified: bool  # one KV buffer shared by all slots, or one slice per slot
    n_cmpl: bool  # one request per prompt asking for all its samples, or one per sample

    @property
    def name(self) -> str:
        return f"{'kvu' if self.kv_unified else 'no-kvu'}+{'n_cmpl' if self.n_cmpl else 'separate'}"


CONFIGS = tuple(PeerConfig(kvu, n_cmpl) for n_cmpl in (True, False) for kvu in (True, False))


def run_peer(gguf: Path, ids_list: list[list[int]], samples: int, new_tokens: int, config: PeerConfig,
             *, threads: int, poll: int, seed: int = 0) -> dict:
    """One timed run of a work on a fresh server (no prompt cached from an earlier run).

    Returns seconds, generated tokens and the server's own count of prompt
    tokens it evaluated (over all completions)."""
    slots = len(ids_list) * samples
    ctx = max(map(len, ids_list)) + new_tokens + 16
    extra = ["--cache-ram", "0", "-cb", "-kvu" if config.kv_unified else "-no-kvu", "--no-webui"]
    with LlamaServer(gguf, parallel=slots, ctx_per_slot=ctx, threads=threads, poll=poll,
                     extra_args=extra) as server:
        # One connection per concurrent request: with httpx's default cap (100), the
        # 128 one-per-sample requests of work A queued for a connection, and a run
        # once ended in `httpx.ReadError: [Errno 9] Bad file descriptor`.
        limits = httpx.Limits(max_connections=slots + 1, max_keepalive_connections=slots + 1)
        with httpx.Client(timeout=600, limits=limits) as client:
            # Warm-up on a prompt that shares no token with the work's.
            _complete(client, server.root, {"prompt": [42] * 4, "n_predict": 2, "seed": 0}, samples=1)
            bodies = []
            for p, ids in enumerate(ids_list):
                base = {"prompt": ids, "n_predict": new_tokens, "ignore_eos": True, "temperature": 1.0,
                        "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0,
                        "cache_prompt": True, "return_tokens": True}
                first = seed + p * samples
                if config.n_cmpl:
                    bodies.append(({**base, "seed": first, "n_cmpl": samples}, samples))
                else:
                    bodies.extend(({**base, "seed": first + i}, 1) for i in range(samples))
            t0 = time.perf_counter()
            with ThreadPoolExecutor(len(bodies)) as pool:
                replies = list(pool.map(lambda b: _complete(client, server.root, *b), bodies))
            seconds = time.perf_counter() - t0
    completions = [c for reply in replies for c in reply]
    tokens = sum(len(c["tokens"]) for c in completions)
    expected = slots * new_tokens
    if tokens != expected:
        raise RuntimeError(f"llama-server generated {tokens} tokens, expected {expected}")
    return {"seconds": seconds, "tok_s": tokens / seconds, "generated_tokens": tokens,
            "prompt_tokens_evaluated": sum(c["timings"]["prompt_n"] for c in completions)}


def _complete(client: httpx.Client, root: str, body: dict, samples: int) -> list[dict]:
    reply = client.post(f"{root}/completion", json=body)
    reply.raise_for_status()
    data = reply.json()
    completions = data if isinstance(data, list) else [data]
    if len(completions) != samples:
        raise RuntimeError(f"llama-server returned {len(completions)} completions, expected {samples}")
    return completions


def llama_bench_pp(gguf: Path, threads: int, prompt: int = 512, reps: int = 3) -> dict:
    """llama-bench's prompt-processing rate (pp`prompt`): mean and spread, tok/s."""
    tool = find_tool("llama-bench")
    if tool is None:
        raise FileNotFoundError("llama-bench not found: run scripts/install.sh")
    done = subprocess.run([tool, "-m", str(gguf), "-t", str(threads), "-p", str(prompt), "-n", "0",
                           "-r", str(reps), "-o", "json"], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"llama-bench failed ({done.returncode}):\n{done.stderr[-2000:]}")
    row = json.loads(done.stdout)[0]
    return {"prompt_tokens": prompt, "tok_s": row["avg_ts"], "stddev_tok_s": row["stddev_ts"],
            "runs": reps}
