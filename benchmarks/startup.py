"""Start-up of `ttsc run` on one question: cold and warm, with and without the weight cache.

    ttsc run examples/self_consistency.tts --input question="What is 3 + 4?"

runs as a fresh process, timed from the start of the command to its first line
on stdout (the answer) and to its exit:

- cold: an empty cache directory (no converted GGUF model, no cached weights),
  except the C++ CPU kernels, which are built once per machine and shared;
- warm: the same cache directory afterwards: the paged engine's weights come
  from safetensors (runtime/engines/paged/weight_cache.py);
- warm without the weight cache (`TTSC_WEIGHT_CACHE=off`): the model loads
  through transformers from the converted GGUF model, as before the cache.

    python -P benchmarks/startup.py [--warm-runs 3]

`measure_startup()` is what benchmarks/runtime.py calls: it prints each run
and returns the figures (medians of the warm runs); run as a script, the last
line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ["run", "examples/self_consistency.tts", "--input", "question=What is 3 + 4?"]


def ttsc_command() -> list[str]:
    script = Path(sys.executable).with_name("ttsc")
    return [str(script)] if script.is_file() else [sys.executable, "-P", "-c",
                                                      "import sys; from ttsc.cli import main; sys.exit(main())"]


def time_run(env: dict[str, str]) -> dict:
    """One `ttsc run`: seconds to the first line on stdout and to the exit, and that line."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(ttsc_command() + COMMAND, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    first_s = time.perf_counter() - t0
    rest, err = proc.communicate()
    total_s = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"ttsc run failed ({proc.returncode}): {err.strip()[-2000:]}")
    return {"first_answer_s": round(first_s, 3), "total_s": round(total_s, 3), "answer": first.strip()}


def measure_startup(warm_runs: int = 3, log: Callable[[str], None] = print) -> dict:
    """Cold and warm start of `ttsc run` on one question (see the module docstring)."""
    from ttsc.common import paths
    from ttsc.kernels import cpu_ops

    t0 = time.perf_counter()
    kernels = cpu_ops.load()  # built here if this machine never built them
    log(f"C++ CPU kernels {'ready' if kernels is not None else 'unavailable'} "
        f"({time.perf_counter() - t0:.1f}s)")
    root = Path(tempfile.mkdtemp(prefix="ttsc-startup-"))
    try:
        kernels_room = paths.room("kernels")
        if kernels_room.is_dir():
            (root / "kernels").symlink_to(kernels_room, target_is_directory=True)
        env = {**os.environ, "TTSC_CACHE_DIR": str(root)}
        env.pop("TTSC_WEIGHT_CACHE", None)
        figures: dict = {"command": "ttsc " + " ".join(COMMAND), "load_average": os.getloadavg()[0]}
        cold = time_run(env)
        log(f"cold: answer after {cold['first_answer_s']:.2f}s, exit after {cold['total_s']:.2f}s")
        figures["cold"] = cold
        for name, extra in (("warm", {}), ("warm_without_weight_cache", {"TTSC_WEIGHT_CACHE": "off"})):
            runs = [time_run({**env, **extra}) for _ in range(warm_runs)]
            for r in runs:
                log(f"{name}: answer after {r['first_answer_s']:.2f}s, exit after {r['total_s']:.2f}s")
            figures[name] = {key: round(statistics.median(r[key] for r in runs), 3)
                             for key in ("first_answer_s", "total_s")}
            figures[name]["runs"] = runs
        answers = {r["answer"] for k in ("warm", "warm_without_weight_cache") for r in figures[k]["runs"]}
        figures["same_answer"] = len(answers | {cold["answer"]}) == 1
        log(f"warm start: answer {figures['warm']['first_answer_s']:.2f}s, end {figures['warm']['total_s']:.2f}s "
            f"(without the weight cache {figures['warm_without_weight_cache']['first_answer_s']:.2f}s, "
            f"{figures['warm_without_weight_cache']['total_s']:.2f}s); cold {cold['total_s']:.2f}s")
        return figures
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm-runs", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(measure_startup(args.warm_runs)))


if __name__ == "__main__":
    main()
