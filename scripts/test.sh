#!/usr/bin/env bash
# The README's test command: set up (if needed) and run the whole test suite, slow tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 PYTHONHASHSEED=0
exec .venv/bin/python -m pytest -q "$@"
