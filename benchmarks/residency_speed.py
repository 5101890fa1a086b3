"""Training speed with the images resident on the device against gathered on the host (``data.resident``), on this
machine's compute device, as a ratio measured in one run: for each residency, `fit` of ``--short`` and ``--long``
steps; the difference of their wall times is the time of the extra steps, without start-up and decoding.

    FSL_DATA_ROOT=... python benchmarks/residency_speed.py [--config experiments/omniglot/protonet_5w1s.yaml]
        [--short 30] [--long 230] [--rounds 2]

On a CPU both keep the split where it is mapped; ``host`` gathers in a background loader process. On a GPU,
``device`` copies each split to it once and ``host`` sends each episode (not measured here: no GPU was lent).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fsl_lightning.run.cpu_features import this_cpu  # noqa: E402


def fit_seconds(config: str, resident: str, steps: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        command = [
            sys.executable,
            "-m",
            "fsl_lightning",
            "fit",
            "--config",
            config,
            f"--trainer.max_steps={steps}",
            f"--data.resident={resident}",
            "--trainer.logger=false",
            "--trainer.limit_val_batches=0",
            "--test_after_fit=false",
        ]
        start = time.perf_counter()
        subprocess.run(command, cwd=folder, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "experiments/omniglot/protonet_5w1s.yaml"))
    parser.add_argument("--short", type=int, default=30)
    parser.add_argument("--long", type=int, default=230)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"CPU: {this_cpu().description()}; {args.config}; steps {args.short} and {args.long}, {args.rounds} rounds")
    rates: dict[str, list[float]] = {"device": [], "host": []}
    for _ in range(args.rounds):
        for resident in rates:  # interleaved, so that a change in the machine's load hits both
            extra = fit_seconds(args.config, resident, args.long) - fit_seconds(args.config, resident, args.short)
            rates[resident].append((args.long - args.short) / extra)
            print(f"  {resident}: {rates[resident][-1]:.2f} steps/s", flush=True)
    device, host = statistics.median(rates["device"]), statistics.median(rates["host"])
    print(
        f"| residency | steps/s (median of {args.rounds}) |\n|---|---|\n| device | {device:.2f} |\n| host | {host:.2f} |"
    )
    print(f"host / device: {host / device:.2f}")


if __name__ == "__main__":
    main()
