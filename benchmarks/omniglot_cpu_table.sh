#!/usr/bin/env bash
# The reduced-budget Omniglot table of BENCHMARKS.md: each config trains for at most BUDGET of wall time
# (trainer.max_time, default 20 minutes, the issue's cap per run), then `fit` tests its best checkpoint by val/acc
# (or its last weights when no validation ran) on the config's 1000 fixed test episodes. Prints, per config, the
# test accuracy line, the last training step and every validation, so that a row can be rerun with max_steps.
#
#   benchmarks/omniglot_cpu_table.sh                                   # every method, 5-way 1-shot and 20-way 1-shot
#   BUDGET=00:00:05:00 benchmarks/omniglot_cpu_table.sh maml_5w1s fomaml_5w1s   # chosen configs, 5 minutes each
#   benchmarks/omniglot_cpu_table.sh protonet_5w1s:1000 anil_5w1s:300          # a fixed number of training steps
#
# Runs one config after another. A wall-time budget is only fair on a machine nothing else is using; a step budget
# (config:steps) gives the same accuracy on a busy machine (its times are then upper bounds).
set -euo pipefail
cd "$(dirname "$0")/.."
BUDGET=${BUDGET:-00:00:20:00}
OUT=${OUT:-outputs/omniglot_cpu_table}
export FSL_DATA_ROOT=${FSL_DATA_ROOT:-$(cd .. && pwd)/shared/data} WANDB_MODE=${WANDB_MODE:-offline}
configs=("$@")
if [ ${#configs[@]} -eq 0 ]; then
    configs=(protonet_5w1s protonet_20w1s matchingnet_5w1s matchingnet_20w1s relationnet_5w1s relationnet_20w1s
             maml_5w1s maml_20w1s fomaml_5w1s metasgd_5w1s anil_5w1s reptile_5w1s siamese_20w1s)
fi
for entry in "${configs[@]}"; do
    config=${entry%%:*} steps=()
    [ "$entry" != "$config" ] && steps=(--trainer.max_steps="${entry#*:}")
    run="$OUT/$config"
    rm -rf "$run" && mkdir -p "$run"
    started=$(date +%s)
    .venv/bin/python -m fsl_lightning fit --config "experiments/omniglot/$config.yaml" --trainer.max_time="$BUDGET" "${steps[@]}" \
        --trainer.logger.init_args.save_dir="$run" > "$run/log.txt" 2>&1
    echo "=== $config: $(grep -h 'Test accuracy' "$run/log.txt"), fit + test $(( $(date +%s) - started )) s"
    .venv/bin/python - "$run" <<'PY'
import csv, glob, sys
rows = list(csv.DictReader(open(glob.glob(sys.argv[1] + "/*/version_0/metrics.csv")[0])))
validations = [(int(row["step"]), round(float(row["val/acc"]), 4)) for row in rows if row.get("val/acc")]
print("    last step", max(int(row["step"]) for row in rows if row.get("step")), "; validations (step, acc):", validations)
PY
done
