#!/usr/bin/env bash
# Check a GPU machine before a long job: PASS / FAIL / SKIP with a figure per item, about 10 minutes
# on one modern GPU. `--dry-run` runs the same items on the CPU at a tiny size. See tools/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
exec "$PYTHON" tools/gpu_check.py "$@"
