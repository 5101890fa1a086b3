#!/usr/bin/env bash
# Installs what the tests need, then runs them. Real Omniglot is read from $FSL_DATA_ROOT
# (default: ../shared/data beside this checkout). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
./install.sh
export FSL_DATA_ROOT=${FSL_DATA_ROOT:-$(cd .. && pwd)/shared/data}
export WANDB_MODE=offline
exec .venv/bin/python -m pytest "$@"
