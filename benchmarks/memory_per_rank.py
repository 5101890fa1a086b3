"""Peak memory of a short `fit` on 1 and 2 DDP processes (CPU): the sum over the run's processes of PSS (each
shared page counted once across them, divided among its sharers) and of RSS (a shared page counted in every
process that maps it), sampled from /proc every 0.2 s.

    FSL_DATA_ROOT=... python benchmarks/memory_per_rank.py --config experiments/omniglot/protonet_5w1s.yaml \
        --devices 1 2 [--steps 30] [--code <another checkout>]

``--code`` runs another checkout of the project (for example a ``git worktree`` of an older commit) with this
environment's Python, to compare before and after. Each run uses its own empty decoded-image cache, filled by a
first run that is not measured, so that the measured runs read the cache as a user's second run does.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fsl_lightning.run.cpu_features import this_cpu  # noqa: E402


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (from /proc/<pid>/task/<tid>/children)."""
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        found.append(pid)
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                pending.extend(int(child) for child in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def rollup_kib(pid: int) -> dict[str, int]:
    """Rss and Pss (KiB) of one process, from /proc/<pid>/smaps_rollup."""
    values = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("Rss", "Pss"):
                values[name] = int(rest.split()[0])
    except OSError:
        pass
    return values


def measure(command: list[str], cwd: Path, env: dict[str, str]) -> dict[str, float]:
    """Runs ``command`` and returns the peaks (MiB) of the summed PSS and RSS of its processes, and its wall time."""
    start = time.time()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak_pss = peak_rss = 0
    most_processes = 0
    while process.poll() is None:
        pids = process_tree(process.pid)
        rollups = [rollup_kib(pid) for pid in pids]
        python = [r for r in rollups if r.get("Rss", 0) > 50 * 1024]  # the Python processes, not shells or helpers
        most_processes = max(most_processes, len(python))
        peak_pss = max(peak_pss, sum(r.get("Pss", 0) for r in rollups))
        peak_rss = max(peak_rss, sum(r.get("Rss", 0) for r in rollups))
        time.sleep(0.2)
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{process.stderr.read()[-3000:]}")
    return {"pss": peak_pss / 1024, "rss": peak_rss / 1024, "processes": most_processes, "seconds": time.time() - start}


def fit_command(config: str, devices: int, steps: int) -> list[str]:
    strategy = ["--trainer.strategy=ddp"] if devices > 1 else []
    return [
        sys.executable,
        "-m",
        "fsl_lightning",
        "fit",
        "--config",
        config,
        "--trainer.accelerator=cpu",
        f"--trainer.devices={devices}",
        *strategy,
        f"--trainer.max_steps={steps}",
        "--trainer.logger=false",
        "--data.val_episodes=20",
        "--data.test_episodes=20",
        "--trainer.limit_val_batches=0",
    ]


def run_folder(scratch: str, name: str) -> Path:
    """A fresh working folder per run (each run saves its config.yaml there)."""
    folder = Path(scratch) / name
    folder.mkdir()
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--code", type=Path, default=REPO, help="the checkout to run (default: this one)")
    args = parser.parse_args()
    code = args.code.resolve()
    config = str((code / args.config) if not Path(args.config).is_absolute() else args.config)
    print(f"CPU: {this_cpu().description()}; code: {code}; config: {args.config}, {args.steps} steps")
    with tempfile.TemporaryDirectory() as scratch:
        env = {
            **os.environ,
            "FSL_CACHE_DIR": str(Path(scratch) / "cache"),
            "PYTHONPATH": str(code),
            "OMP_NUM_THREADS": "1",
        }
        subprocess.run(
            fit_command(config, 1, 1),
            cwd=run_folder(scratch, "fill"),
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fills the cache, not measured
        print("| processes | peak PSS, summed (MiB) | peak RSS, summed (MiB) | wall (s) |")
        print("|---|---|---|---|")
        for devices in args.devices:
            result = measure(fit_command(config, devices, args.steps), run_folder(scratch, f"run{devices}"), env)
            print(f"| {devices} | {result['pss']:.0f} | {result['rss']:.0f} | {result['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
