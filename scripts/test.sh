#!/usr/bin/env bash
# The test suite (the README's test command runs this after installing).
# Slow tests load the embedded model; they run too, unless FAST=1.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then . .venv/bin/activate; fi
if [ "${FAST:-0}" = "1" ]; then
    exec pytest -q -m "not slow" "$@"
fi
exec pytest -q "$@"
