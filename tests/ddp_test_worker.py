"""Runs ``python -m fsl_lightning test`` for several checkpoints in one 2-process DDP launch on the CPU.

Usage: ``python tests/ddp_test_worker.py jobs.json``, where the file holds a list of command lines (lists of
CLI arguments after ``test``). Lightning re-launches this same script for rank 1; both ranks then run the jobs in
the same order, each ``Trainer`` joining the process group the first one created, so the import and process
start-up cost is paid once for all jobs. Each job writes its ``test/acc`` to the ``metrics.csv`` of its logger.
"""

from __future__ import annotations

import json
import sys

from fsl_lightning.cli import main

DDP = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]


def run_jobs(path: str) -> None:
    with open(path) as handle:
        jobs = json.load(handle)
    for arguments in jobs:
        main(["test", *arguments, *DDP])


if __name__ == "__main__":
    run_jobs(sys.argv[1])
