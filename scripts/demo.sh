#!/usr/bin/env bash
# The main job: self-consistency on the embedded model over the bundled
# single-digit addition set; prints the plan, then single-sample accuracy
# against the accuracy of a majority vote over 16 samples.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
ttsc eval examples/self_consistency.tts --data examples/data/addition.jsonl --limit "${LIMIT:-30}" "$@"
