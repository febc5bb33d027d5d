#!/usr/bin/env bash
# The main job: self-consistency on the embedded model over the bundled
# single-digit addition set; prints the plan, then greedy decoding (one
# sample at temperature 0: what a user has without a strategy), single-sample
# accuracy, the majority vote over 16 samples, and the vote's gain against
# greedy decoding.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
ttsc eval examples/self_consistency.tts --data examples/data/addition.jsonl --limit "${LIMIT:-30}" --greedy "$@"
