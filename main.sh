#!/usr/bin/env bash
# The main job: install, then train Prototypical Networks (Conv4) on real Omniglot (Vinyals split) and test
# the best checkpoint on 1000 fixed 5-way 1-shot episodes (mean accuracy ± 95% confidence interval).
# Another config: CONFIG=experiments/omniglot/protonet_20w5s.yaml ./main.sh ; extra arguments go to the CLI.
set -euo pipefail
cd "$(dirname "$0")"
./install.sh
if [ -z "${FSL_DATA_ROOT:-}" ] && [ -d ../shared/data/omniglot ]; then
    export FSL_DATA_ROOT=$(cd ../shared/data && pwd)  # a local copy beside the checkout; else downloaded
fi
CONFIG=${CONFIG:-experiments/omniglot/protonet_5w1s.yaml}
schedule=()
if ! .venv/bin/python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "No GPU found: shortened CPU schedule (20-way training episodes, 2000 steps, about 10 minutes)."
    echo "The paper schedule (60-way, 20000 steps) runs on a GPU, or here with: $0 --trainer.max_steps=20000"
    schedule=(--data.train.way=20 --trainer.max_steps=2000)
fi
exec .venv/bin/python -m fsl_lightning fit --config "$CONFIG" "${schedule[@]}" "$@"
