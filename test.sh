#!/usr/bin/env bash
# Installs what the tests need, then runs them. Real Omniglot is read from $FSL_DATA_ROOT
# (default: ../shared/data beside this checkout). Extra arguments go to pytest.
# ./test.sh --fast: only the tests that need neither the real data nor more than a few seconds.
set -euo pipefail
cd "$(dirname "$0")"
./install.sh
export FSL_DATA_ROOT=${FSL_DATA_ROOT:-$(cd .. && pwd)/shared/data}
export WANDB_MODE=offline
if [ "${1:-}" = "--fast" ]; then  # the quick tier: no real data, nothing slow (about 1.5 minutes on 2 cores)
    shift
    exec .venv/bin/python -m pytest -m "not data and not slow" "$@"
fi
exec .venv/bin/python -m pytest "$@"
