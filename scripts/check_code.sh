#!/usr/bin/env bash
# Lint, format check and type check of the code base (CI runs it after installing, before the tests).
# Uses the tools installed by ./install.sh in ${VENV:-.venv}; settings in pyproject.toml ([tool.ruff], [tool.mypy]).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/mypy"
