#!/usr/bin/env bash
# One command to install fsl_lightning with everything it needs (learn2learn included) into ./.venv.
# Rerunning it is cheap: pip skips what is already there and the learn2learn wheel is cached.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${FSL_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip setuptools wheel
# The dependency versions the tests last passed with (constraints.txt), unless FSL_NEWEST=1 asks for the newest
# versions pyproject.toml allows: then the same install may differ from one month to the next.
if [ "${FSL_NEWEST:-0}" = "1" ]; then
    "$PY" -m pip install -q -e ".[dev]"
else
    "$PY" -m pip install -q -e ".[dev]" -c constraints.txt
fi
bash scripts/install_learn2learn.sh "$PY"
echo "fsl_lightning installed in $VENV (activate with: source $VENV/bin/activate)"
