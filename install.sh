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
"$PY" -m pip install -q -e ".[dev]"
bash scripts/install_learn2learn.sh "$PY"
echo "fsl_lightning installed in $VENV (activate with: source $VENV/bin/activate)"
