"""Serving benchmark: `ttsc serve` under concurrent load, and against OptiLLM.

    python -P benchmarks/serve.py [--part concurrency|peer|all] [--requests 32]

- concurrency: `ttsc serve examples/self_consistency.tts` (n=16) on the paged
  engine with the embedded model; the same 32 requests (addition questions,
  one seed each) sent by the official `openai` client all at once, then one
  at a time: wall time, tokens, accuracy, and the ratio of wall times.
- peer: self-consistency over the same llama.cpp server (llama-server serving
  the embedded model), (a) through OptiLLM's proxy (the `optillm` package,
  its `self_consistency` approach) and (b) through `ttsc serve` of the same
  strategy with ttsc's `openai` engine pointed at the server. OptiLLM's
  approach draws 5 samples at temperature 1 (fixed in its code), so ttsc is
  asked for the same (n=5, temperature=1); the prompt and max_tokens are the
  same, and so is the system turn. 32 concurrent requests to each proxy, then
  8 of them one at a time: wall time, the upstream completion requests the
  llama.cpp server served, and its token counters (prompt tokens computed and
  reused, tokens generated; /metrics).

OptiLLM is installed into its own virtual environment (under the ttsc cache
directory) without its dependencies, plus only the packages its proxy
imports; its full list (torch, gradio, spacy, selenium, ...) would not fit
this machine's purpose. If that fails, the figures say what failed.

Run it alone (it loads both cores): `flock /tmp/ttsc-heavy.lock python -P
benchmarks/serve.py`. Progress goes to stderr; the last line is one JSON
object of figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import openai

from ttsc.common import paths
from ttsc.runtime.llama_server import EMBEDDED_ALIAS, LlamaServer, embedded_gguf, free_port
from ttsc.runtime.scorers import get_scorer

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "data" / "addition.jsonl"
SELF_CONSISTENCY = ROOT / "examples" / "self_consistency.tts"
PROMPT = "{question} Give the final answer as 'Answer: <number>'."  # the example's prompt
OPTILLM = "optillm==0.4.0"
# What OptiLLM's proxy imports (its server module and the approaches it loads).
OPTILLM_IMPORTS = ["flask", "openai", "cerebras_cloud_sdk", "z3-solver<=4.15.4.0", "numpy",
                   "networkx", "requests", "aiohttp", "sympy", "PyYAML", "math-verify"]
PEER_SAMPLES = 5  # OptiLLM's self_consistency: num_samples=5, temperature=1 (not settable)
PEER_ONE_AT_A_TIME = 8  # requests sent one after the other (latency), a subset of the 32
# The system turn SmolLM2's chat template adds when a prompt has none (what ttsc
# sends); OptiLLM is given it explicitly, so both send the same prompt tokens.
SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
MAX_TOKENS = 40  # the example's max_tokens


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def questions(count: int) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    return rows[:count]


@contextmanager
def ttsc_serve(*args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`ttsc serve` in a subprocess; yields its base URL once /health answers."""
    port = free_port()
    errlog = tempfile.NamedTemporaryFile(prefix="ttsc-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-P", "-m", "ttsc.cli", "serve", *args, "--port",
                             str(port)], stdout=subprocess.DEVNULL, stderr=errlog,
                            env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(f"{url}/health", proc, errlog.name, 600)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        Path(errlog.name).unlink(missing_ok=True)


def wait_healthy(url: str, proc: subprocess.Popen, logfile: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited:\n{Path(logfile).read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} never became healthy:\n{Path(logfile).read_text()[-2000:]}")


def send_all(calls: list[Callable[[], Any]], concurrent: bool) -> tuple[list[Any], float]:
    """Run the calls all at once (a thread each) or one after the other."""
    start = time.perf_counter()
    results: list[Any] = [None] * len(calls)
    if concurrent:
        def run(i: int) -> None:
            results[i] = calls[i]()
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for i, call in enumerate(calls):
            results[i] = call()
    return results, time.perf_counter() - start


def answers_figures(rows: list[dict[str, Any]], texts: list[str | None]) -> dict[str, Any]:
    score = get_scorer("number")
    return {"correct": sum(bool(t is not None and score(t, str(r["answer"])))
                           for r, t in zip(rows, texts))}


def usage_figures(responses: list[Any]) -> dict[str, int]:
    prompt = sum(r.usage.prompt_tokens for r in responses)
    cached = sum(r.usage.prompt_tokens_details.cached_tokens for r in responses)
    generated = sum(r.usage.completion_tokens for r in responses)
    return {"prompt_tokens": prompt, "prompt_tokens_cached": cached, "generated_tokens": generated,
            "tokens_computed": prompt - cached + generated}


# ------------------------------------------------------------------ concurrency

def part_concurrency(count: int) -> dict[str, Any]:
    rows = questions(count)
    log(f"[concurrency] ttsc serve {SELF_CONSISTENCY.name} (n=16) on the paged engine, "
        f"{count} requests")
    with ttsc_serve(str(SELF_CONSISTENCY), "--engine", "paged") as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0, timeout=3600)

        def call(i: int) -> Callable[[], Any]:
            return lambda: client.chat.completions.create(
                model="self_consistency", seed=i,
                messages=[{"role": "user", "content": rows[i]["question"]}])

        send_all([call(0)], concurrent=False)  # warm up (kernels, caches)
        out: dict[str, Any] = {"requests": count, "samples_per_request": 16}
        answers: dict[str, list[str]] = {}
        for mode, concurrent in (("concurrent", True), ("one_at_a_time", False)):
            responses, seconds = send_all([call(i) for i in range(count)], concurrent)
            answers[mode] = [r.choices[0].message.content for r in responses]
            out[mode] = {"seconds": round(seconds, 2), **usage_figures(responses),
                         **answers_figures(rows, answers[mode])}
            log(f"[concurrency] {mode}: {seconds:.1f} s, {out[mode]}")
        out["speedup"] = round(out["one_at_a_time"]["seconds"] / out["concurrent"]["seconds"], 2)
        # Seeds come with the requests, so both ways run the same samples.
        out["same_answers"] = answers["concurrent"] == answers["one_at_a_time"]
    log(f"[concurrency] concurrent is {out['speedup']}x faster than one at a time")
    return out


# --------------------------------------------------------------------- the peer

def optillm_python() -> tuple[str | None, str | None]:
    """The Python of a virtual environment with OptiLLM's proxy, made on first
    use; (None, what failed) when it cannot be made."""
    venv = paths.room("optillm-venv")
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", "import optillm.server"],
                                          capture_output=True).returncode == 0:
        return str(python), None
    log(f"[peer] installing {OPTILLM} (without its dependencies) and what its proxy imports "
        f"into {venv}")
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [str(python), "-m", "pip", "install", "-q", "--no-deps", OPTILLM],
             [str(python), "-m", "pip", "install", "-q", *OPTILLM_IMPORTS],
             [str(python), "-c", "import optillm.server"]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            lines = [l for l in (done.stderr or done.stdout).splitlines()
                     if l.strip() and "WARNING: Location" not in l]
            return None, f"`{' '.join(step[-3:])}` failed: {' | '.join(lines[-3:])}"
    return str(python), None


@contextmanager
def optillm_proxy(python: str, upstream: str) -> Iterator[str]:
    port = free_port()
    errlog = tempfile.NamedTemporaryFile(prefix="optillm-", suffix=".log", delete=False)
    proc = subprocess.Popen([python, "-m", "optillm.server", "--approach", "self_consistency",
                             "--base-url", upstream, "--port", str(port), "--log", "warning"],
                            stdout=errlog, stderr=subprocess.STDOUT, cwd=tempfile.gettempdir(),
                            env={**os.environ, "OPENAI_API_KEY": "none"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:  # OptiLLM has no health route: wait for the port
            if proc.poll() is not None:
                raise RuntimeError(f"optillm exited:\n{Path(errlog.name).read_text()[-2000:]}")
            try:
                httpx.get(url, timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError("optillm never started listening") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        Path(errlog.name).unlink(missing_ok=True)


def llama_counters(server: LlamaServer) -> dict[str, float]:
    """llama-server's token counters (/metrics) and the completion requests it
    has served so far (one log line each; a request's extra choices run as
    child tasks, not counted)."""
    text = httpx.get(f"{server.root}/metrics", timeout=10).text
    found = dict(re.findall(r"^llamacpp:(\w+) ([0-9.e+-]+)$", text, re.M))
    tasks = len(re.findall(r"processing task, is_child = 0",
                           Path(server.log_path).read_text(errors="replace")))
    return {"upstream_requests": tasks,
            "prompt_tokens_computed": float(found.get("prompt_tokens_total", 0)),
            "prompt_tokens_reused": float(found.get("prompt_tokens_cached_total", 0)),
            "generated_tokens": float(found.get("tokens_predicted_total", 0))}


def measured(server: LlamaServer, calls: list[Callable[[], Any]],
             concurrent: bool = True) -> tuple[list[Any], dict[str, Any]]:
    before = llama_counters(server)
    responses, seconds = send_all(calls, concurrent)
    time.sleep(0.5)  # the server logs a task's end after answering it
    after = llama_counters(server)
    figures = {k: int(after[k] - before[k]) for k in after}
    figures["tokens_computed"] = figures["prompt_tokens_computed"] + figures["generated_tokens"]
    return responses, {"seconds": round(seconds, 2), **figures}


def part_peer(count: int, threads: int, slots: int, poll: int) -> dict[str, Any]:
    rows = questions(count)
    prompts = [PROMPT.format(question=r["question"]) for r in rows]
    out: dict[str, Any] = {"requests": count, "samples_per_request": PEER_SAMPLES,
                           "llama_server": {"threads": threads, "slots": slots, "poll": poll}}
    python, failure = optillm_python()
    with LlamaServer(embedded_gguf(), threads=threads, parallel=slots, ctx_per_slot=256,
                     poll=poll, extra_args=["--metrics"]) as upstream:
        log(f"[peer] llama-server on {upstream.url} ({slots} slots, {threads} threads)")
        if python is None:
            out["optillm"] = {"error": failure}
            log(f"[peer] OptiLLM cannot run here: {failure}")
        else:
            with optillm_proxy(python, upstream.url) as proxy:
                client = openai.OpenAI(base_url=f"{proxy}/v1", api_key="none", max_retries=0,
                                       timeout=3600)
                calls = [lambda p=p: client.chat.completions.create(
                    model=EMBEDDED_ALIAS, max_tokens=MAX_TOKENS,
                    messages=[{"role": "system", "content": SMOLLM_SYSTEM},
                              {"role": "user", "content": p}]) for p in prompts]
                out["optillm"] = peer_runs(upstream, rows, calls, "OptiLLM self_consistency")
        spec = f"policy={upstream.spec}"
        with ttsc_serve(str(SELF_CONSISTENCY), "--model", spec,
                        env={"TTSC_OPENAI_CONCURRENCY": str(slots)}) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0, timeout=3600)
            calls = [lambda r=r, i=i: client.chat.completions.create(
                model="self_consistency", n=PEER_SAMPLES, temperature=1.0, max_tokens=MAX_TOKENS,
                seed=i, messages=[{"role": "user", "content": r["question"]}])
                for i, r in enumerate(rows)]
            out["ttsc"] = peer_runs(upstream, rows, calls, "ttsc serve + openai engine")
    if "concurrent" in out.get("optillm", {}):
        for mode in ("concurrent", "one_at_a_time"):
            out[f"ttsc_speedup_{mode}"] = round(out["optillm"][mode]["seconds"]
                                                / out["ttsc"][mode]["seconds"], 2)
        log(f"[peer] ttsc vs OptiLLM: {out['ttsc_speedup_concurrent']}x with {count} requests at "
            f"once, {out['ttsc_speedup_one_at_a_time']}x one request at a time")
    return out


def peer_runs(upstream: LlamaServer, rows: list[dict[str, Any]], calls: list[Callable[[], Any]],
              name: str) -> dict[str, Any]:
    """All requests at once, then the first few one after the other."""
    out: dict[str, Any] = {}
    for mode, subset, concurrent in (("concurrent", calls, True),
                                     ("one_at_a_time", calls[:PEER_ONE_AT_A_TIME], False)):
        responses, figures = measured(upstream, subset, concurrent)
        texts = [r.choices[0].message.content for r in responses]
        out[mode] = {"requests": len(subset), **figures, **answers_figures(rows, texts)}
        log(f"[peer] {name}, {mode}: {out[mode]}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["concurrency", "peer", "all"], default="all")
    parser.add_argument("--requests", type=int, default=32)
    # Both cores (run it under the heavy lock: when other jobs share the cores,
    # llama.cpp's threads wait on each other at every op; then try 1).
    parser.add_argument("--llama-threads", type=int, default=2)
    # Enough slots for every sample of 32 requests at once: OptiLLM keeps at most
    # one call per request in flight, ttsc all five; neither is slowed by more.
    parser.add_argument("--llama-slots", type=int, default=160)
    # llama.cpp's own default: its threads spin for work between ops, which is
    # its fastest setting while nothing else needs the cores.
    parser.add_argument("--llama-poll", type=int, default=50)
    args = parser.parse_args()
    figures: dict[str, Any] = {"load_average_before": list(os.getloadavg())}
    if args.part in ("concurrency", "all"):
        figures["concurrency"] = part_concurrency(args.requests)
    if args.part in ("peer", "all"):
        figures["peer"] = part_peer(args.requests, args.llama_threads, args.llama_slots,
                                    args.llama_poll)
    figures["load_average_after"] = list(os.getloadavg())
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
