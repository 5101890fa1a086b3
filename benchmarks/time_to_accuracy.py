"""Issue 17, item 3: the main job's accuracy against wall-clock time, for 5-way 1-shot and 20-way 1-shot.

    python benchmarks/time_to_accuracy.py [--out time_to_accuracy] [-- <extra arguments for ./main.sh>]
    python benchmarks/time_to_accuracy.py --out time_to_accuracy --reuse     # the evaluations again, no training

Runs ``./main.sh`` as a newcomer would (install check, fit, test of the best checkpoint on the 1000 fixed 5-way
1-shot test episodes), timing it from the outside, with two callbacks added: ``EpisodeThroughput`` (the wall time
since the start of fit at each validation, and the 5-way validation accuracy there) and a checkpoint at each
validation. Snell et al. train their 5-way and 20-way 1-shot Omniglot models the same way (60-way 1-shot 5-query
episodes), so the same run gives the 20-way curve: each saved checkpoint is validated on 20-way 1-shot validation
episodes (``experiments/omniglot/protonet_20w1s.yaml``), and the checkpoint best on them is tested once on that
config's 1000 fixed 20-way test episodes. Test episodes are read once per setting, at the end; the checkpoints are
chosen on validation episodes only.

Prints a markdown table (step, seconds since fit started, 5-way and 20-way validation accuracy) and the two test
results, and writes them to ``<out>/time_to_accuracy.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from fsl_lightning.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
LOCAL_DATA = REPO.parent / "shared" / "data"  # main.sh's default data root, beside the checkout
TWENTY_WAY = REPO / "experiments" / "omniglot" / "protonet_20w1s.yaml"
TEST_LINE = re.compile(r"Test accuracy: ([\d.]+)% ± ([\d.]+)%")


def run_main_job(out: Path, extra: list[str]) -> tuple[float, str]:
    """./main.sh with the timing and checkpoint callbacks; returns its wall time and its printed test result."""
    callbacks = [
        "--trainer.callbacks+=fsl_lightning.callbacks.EpisodeThroughput",
        f"--trainer.callbacks.output_path={out / 'throughput.json'}",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={out / 'checkpoints'}",
        "--trainer.callbacks.filename={step}",
        "--trainer.callbacks.save_top_k=-1",
        f"--trainer.logger.init_args.save_dir={out / 'outputs'}",
    ]
    started = time.perf_counter()
    process = subprocess.run([str(REPO / "main.sh"), *callbacks, *extra], cwd=REPO, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    (out / "main_job.log").write_text(process.stdout)
    if process.returncode != 0:
        sys.exit(f"./main.sh failed (exit {process.returncode}); its output is in {out / 'main_job.log'}")
    return seconds, test_result(process.stdout)


def test_result(output: str) -> str:
    found = TEST_LINE.findall(output)
    return f"{found[-1][0]}% ± {found[-1][1]}%" if found else "not printed"


def twenty_way(command: str, checkpoint: Path, out: Path) -> float | str:
    """``validate`` (the 20-way validation accuracy, a fraction) or ``test`` (the printed mean ± CI) of one
    checkpoint in the 20-way 1-shot config, in this process."""
    cli = cli_main([command, "--config", str(TWENTY_WAY), "--ckpt_path", str(checkpoint),
                    f"--trainer.logger.init_args.save_dir={out / 'outputs_20way'}", "--trainer.enable_progress_bar=false"])
    if command == "validate":
        return float(cli.trainer.callback_metrics["val/acc"])
    summary = cli.model.last_accuracy["test"]
    return f"{100 * float(summary.mean):.2f}% ± {100 * float(summary.ci95):.2f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("time_to_accuracy"))
    parser.add_argument("--reuse", action="store_true",
                        help="skip ./main.sh and evaluate the run already in --out (its log and checkpoints)")
    parser.add_argument("extra", nargs="*", help="arguments for ./main.sh (after --)")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not os.environ.get("FSL_DATA_ROOT") and LOCAL_DATA.is_dir():
        os.environ["FSL_DATA_ROOT"] = str(LOCAL_DATA)  # as main.sh does, for the 20-way evaluations in this process
    if args.reuse:
        wall_seconds, five_way_test = float("nan"), test_result((out / "main_job.log").read_text())
    else:
        wall_seconds, five_way_test = run_main_job(out, args.extra)
    validations = json.loads((out / "throughput.json").read_text())["validations"]
    rows = []
    for validation in validations:
        checkpoint = out / "checkpoints" / f"step={validation['step']}.ckpt"
        accuracy = float(twenty_way("validate", checkpoint, out)) if checkpoint.exists() else None
        rows.append({**validation, "val_acc_20way": accuracy, "checkpoint": str(checkpoint)})
    best = max((row for row in rows if row["val_acc_20way"] is not None), key=lambda row: row["val_acc_20way"])
    twenty_way_test = twenty_way("test", Path(best["checkpoint"]), out)
    summary = {"main_job_seconds": wall_seconds, "test_5way": five_way_test, "test_20way": twenty_way_test,
               "test_20way_step": best["step"], "curve": rows}
    (out / "time_to_accuracy.json").write_text(json.dumps(summary, indent=2))
    print(f"./main.sh: {wall_seconds:.0f} s wall time; 5-way 1-shot test {five_way_test}; 20-way 1-shot test "
          f"{twenty_way_test} (checkpoint of step {best['step']}, best 20-way validation accuracy)")
    print("| step | seconds since fit started | val acc 5-way 1-shot (200 episodes) | val acc 20-way 1-shot |")
    print("|---|---|---|---|")
    for row in rows:
        twenty = "-" if row["val_acc_20way"] is None else f"{100 * row['val_acc_20way']:.2f}%"
        print(f"| {row['step']} | {row['seconds']:.0f} | {100 * row['val_acc']:.2f}% | {twenty} |")


if __name__ == "__main__":
    main()
