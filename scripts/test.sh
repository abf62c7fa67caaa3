#!/usr/bin/env bash
# README command 2 (and what CI runs): set-up with the test tools, lint, then the whole test suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export AVDP_DEV=1
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
# one linter configuration (pyproject.toml): an unused import or a 121-character line fails here
"$VENV/bin/ruff" check .
exec "$VENV/bin/python" -m pytest -q "$@"
