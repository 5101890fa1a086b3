"""DDP overhead: training steps/s of one process against N DDP processes, ProtoNet Conv4 on Omniglot.

    python benchmarks/ddp_overhead.py [--processes 2] [--steps 200] [--accelerator cpu|gpu]

Each configuration runs ``python -m fsl_lightning fit`` in its own process tree (DDP re-launches its command
line) and reports the steps/s that the EpisodeThroughput callback measured on rank 0 after a warm-up. On CPU the
cores are split between the processes (``OMP_NUM_THREADS``), so the comparison is at equal hardware. On one GPU,
``--processes 1`` compares the plain run with the same run wrapped in DDP.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "omniglot" / "protonet_5w1s.yaml"


def steps_per_second(accelerator: str, devices: int, strategy: str, steps: int, threads: int, way: int) -> float:
    warmup = 20
    with tempfile.TemporaryDirectory() as out:
        timing = Path(out) / "timing.json"
        command = [
            sys.executable,
            "-m",
            "fsl_lightning",
            "fit",
            "--config",
            str(CONFIG),
            f"--data.train.way={way}",
            f"--trainer.max_steps={warmup + steps}",
            f"--data.train_episodes_per_epoch={warmup + steps}",
            "--trainer.limit_val_batches=0",
            "--test_after_fit=false",
            "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_progress_bar=false",
            f"--trainer.accelerator={accelerator}",
            f"--trainer.devices={devices}",
            f"--trainer.strategy={strategy}",
            f"--trainer.logger.init_args.save_dir={out}",
            "--trainer.callbacks+=fsl_lightning.callbacks.EpisodeThroughput",
            f"--trainer.callbacks.warmup_steps={warmup}",
            f"--trainer.callbacks.output_path={timing}",
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise RuntimeError(result.stderr[-3000:])
        return json.loads(timing.read_text())["episodes_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--way", type=int, default=20, help="training way (60 is the paper's)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    single_threads = cores if args.accelerator == "cpu" else 1
    ddp_threads = max(1, cores // args.processes) if args.accelerator == "cpu" else 1
    single = steps_per_second(args.accelerator, 1, "auto", args.steps, single_threads, args.way)
    ddp = steps_per_second(args.accelerator, args.processes, "ddp", args.steps, ddp_threads, args.way)
    print(f"\n{args.accelerator}, {cores} cores, ProtoNet Conv4, {args.way}-way 1-shot 5-query training episodes")
    print("| run | steps/s | episodes/s (all ranks) | time per step |")
    print("|---|---|---|---|")
    print(f"| 1 process, {single_threads} threads | {single:.2f} | {single:.2f} | {1000 / single:.0f} ms |")
    print(
        f"| {args.processes} DDP processes, {ddp_threads} threads each | {ddp:.2f} | {ddp * args.processes:.2f} "
        f"| {1000 / ddp:.0f} ms |"
    )


if __name__ == "__main__":
    main()
