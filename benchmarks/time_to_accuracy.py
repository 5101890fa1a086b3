"""The main job's accuracy against wall-clock time, for 5-way 1-shot and 20-way 1-shot.

    python benchmarks/time_to_accuracy.py [--out time_to_accuracy] [-- <extra arguments for ./main.sh>]
    python benchmarks/time_to_accuracy.py --out time_to_accuracy --reuse     # the evaluations again, no training

Runs ``./main.sh`` as a newcomer would (install check, cold decode, fit on the train + val classes as Snell et al.'s
final runs do, test of the last weights on the 1000 fixed 5-way 1-shot test episodes), timing it from the outside,
with one callback added: a checkpoint every 1000 steps. The main job has no validation (its schedule was chosen
beforehand on validation episodes, with ``protonet_5w1s.yaml``), so its weights are fixed before any test episode
is read; the 1000 fixed test episodes (``eval_seed: 0``) are read once, by ``./main.sh``.

The curve: each saved checkpoint scored on *other* episodes of the test classes (``eval_seed: 1``: 1000 5-way
1-shot episodes, 300 20-way 1-shot), so that drawing it reads nothing the reported number depends on; the seconds
are those from the start of ``./main.sh`` to the checkpoint's file. Snell et al. train their 5-way and 20-way
1-shot Omniglot models the same way (60-way 1-shot 5-query episodes), so the run's last weights are also tested
once on the 1000 fixed 20-way 1-shot test episodes of ``experiments/omniglot/protonet_20w1s.yaml``, and on a second
sample of 1000 5-way 1-shot test episodes (``eval_seed: 1``), the weights it tested being fixed before either is read.
The header names the CPU and its vector units; the log line of the time budget gives the step count it chose.

Prints a markdown table and the two test results, and writes them to ``<out>/time_to_accuracy.json``.
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
from fsl_lightning.run.cpu_features import this_cpu

REPO = Path(__file__).resolve().parents[1]
LOCAL_DATA = REPO.parent / "shared" / "data"  # main.sh's default data root, beside the checkout
FIVE_WAY = REPO / "experiments" / "omniglot" / "protonet_5w1s.yaml"
TWENTY_WAY = REPO / "experiments" / "omniglot" / "protonet_20w1s.yaml"
TEST_LINE = re.compile(r"Test accuracy: ([\d.]+)% ± ([\d.]+)%")
PLANNED_STEPS = re.compile(r"Time budget: training (\d+) steps")
TESTED_CHECKPOINT = re.compile(r"Loaded model weights from the checkpoint at (\S+\.ckpt)")
CURVE_EPISODES = {"5-way": 1000, "20-way": 300}


def run_main_job(out: Path, extra: list[str]) -> dict:
    """./main.sh with a checkpoint every 1000 steps; returns its start time, wall time, printed test result and
    tested checkpoint."""
    callbacks = [
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={out / 'checkpoints'}",
        "--trainer.callbacks.filename={step}",
        "--trainer.callbacks.every_n_train_steps=1000",
        "--trainer.callbacks.save_top_k=-1",
        f"--trainer.logger.init_args.save_dir={out / 'outputs'}",
    ]
    started_at = time.time()
    started = time.perf_counter()
    process = subprocess.run(
        [str(REPO / "main.sh"), *callbacks, *extra],
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    seconds = time.perf_counter() - started
    (out / "main_job.log").write_text(process.stdout)
    if process.returncode != 0:
        sys.exit(f"./main.sh failed (exit {process.returncode}); its output is in {out / 'main_job.log'}")
    run = {"started_at": started_at, "main_job_seconds": seconds}
    (out / "main_job.json").write_text(json.dumps(run))
    return run


def printed_results(log: str) -> tuple[str, Path]:
    """The 5-way test line ./main.sh printed, and the checkpoint it tested."""
    found, tested = TEST_LINE.findall(log), TESTED_CHECKPOINT.findall(log)
    if not found or not tested:
        sys.exit("./main.sh printed no test accuracy or tested checkpoint; see main_job.log")
    return f"{found[-1][0]}% ± {found[-1][1]}%", Path(tested[-1])


def test_accuracy(config: Path, checkpoint: Path, out: Path, *overrides: str) -> tuple[float, float]:
    """``test`` of one checkpoint with one config, in this process: (mean, 95% CI) as fractions."""
    cli = cli_main(
        [
            "test",
            "--config",
            str(config),
            "--ckpt_path",
            str(checkpoint),
            *overrides,
            f"--trainer.logger.init_args.save_dir={out / 'outputs_eval'}",
            "--trainer.enable_progress_bar=false",
        ]
    )
    summary = cli.model.last_accuracy["test"]
    return float(summary.mean), float(summary.ci95)


def curve(out: Path, started_at: float) -> list[dict]:
    rows = []
    for checkpoint in sorted((out / "checkpoints").glob("step=*.ckpt"), key=lambda path: int(path.stem[5:])):
        row = {"step": int(checkpoint.stem[5:]), "seconds": checkpoint.stat().st_mtime - started_at}
        for name, config in (("5-way", FIVE_WAY), ("20-way", TWENTY_WAY)):
            mean, ci95 = test_accuracy(
                config, checkpoint, out, "--data.eval_seed=1", f"--data.test_episodes={CURVE_EPISODES[name]}"
            )
            row[name] = {"mean": mean, "ci95": ci95}
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("time_to_accuracy"))
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="skip ./main.sh and evaluate the run already in --out (its log and checkpoints)",
    )
    parser.add_argument("extra", nargs="*", help="arguments for ./main.sh (after --)")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not os.environ.get("FSL_DATA_ROOT") and LOCAL_DATA.is_dir():
        os.environ["FSL_DATA_ROOT"] = str(LOCAL_DATA)  # as main.sh does, for the evaluations in this process
    print(f"CPU: {this_cpu().description()}", flush=True)
    run = json.loads((out / "main_job.json").read_text()) if args.reuse else run_main_job(out, args.extra)
    log = (out / "main_job.log").read_text()
    five_way_test, tested = printed_results(log)
    planned = PLANNED_STEPS.findall(log)
    mean, ci95 = test_accuracy(TWENTY_WAY, tested, out)
    twenty_way_test = f"{100 * mean:.2f}% ± {100 * ci95:.2f}%"
    mean, ci95 = test_accuracy(FIVE_WAY, tested, out, "--data.eval_seed=1", "--data.test_episodes=1000")
    second_sample = f"{100 * mean:.2f}% ± {100 * ci95:.2f}%"
    rows = curve(out, run["started_at"])
    summary = {
        **run,
        "cpu": this_cpu().description(),
        "planned_steps": int(planned[-1]) if planned else None,
        "test_5way": five_way_test,
        "test_5way_eval_seed_1": second_sample,
        "test_20way": twenty_way_test,
        "tested_checkpoint": str(tested),
        "curve": rows,
    }
    (out / "time_to_accuracy.json").write_text(json.dumps(summary, indent=2))
    print(
        f"./main.sh: {run['main_job_seconds']:.0f} s wall time, {summary['planned_steps']} steps (time budget's "
        f"plan); tested {tested.name}: 5-way 1-shot {five_way_test} (printed by ./main.sh), {second_sample} on the "
        f"second 1000 (eval_seed 1); 20-way 1-shot {twenty_way_test} (1000 fixed test episodes)"
    )
    print("| step | seconds since ./main.sh started | 5-way 1-shot, 1000 other test episodes | 20-way 1-shot, 300 |")
    print("|---|---|---|---|")
    for row in rows:
        cells = [f"{100 * row[name]['mean']:.2f}% ± {100 * row[name]['ci95']:.2f}%" for name in CURVE_EPISODES]
        print(f"| {row['step']} | {row['seconds']:.0f} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
