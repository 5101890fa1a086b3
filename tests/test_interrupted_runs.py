"""Runs killed for real (SIGKILL, in a subprocess) and resumed: no checkpoint is ever lost, and the resumed run
logs exactly what an uninterrupted run logs."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from fsl_lightning.cli import main
from fsl_lightning.run.composed_configs import load_config

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "experiments" / "omniglot" / "protonet_5w1s.yaml")
RUN = "omniglot_protonet_5w1s"
# 2-way episodes of 28x28 Omniglot, validation every 5 steps: a whole run takes seconds on one thread.
TINY = [
    "--data.train.way=2",
    "--data.train.query=2",
    "--data.evaluation.way=2",
    "--data.evaluation.query=2",
    "--data.train_episodes_per_epoch=5",
    "--data.val_episodes=3",
    "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.log_every_n_steps=2",
    "--test_after_fit=false",
]
# The checkpoint callback of the experiment (the same state key, so that a resumed run restores its state).
BEST_AND_LAST = load_config(CONFIG)["trainer"]["callbacks"][0]


def _fit(save_dir: Path, *arguments: str, extra_config: dict | None = None, env: dict | None = None, wait=True):
    configs = ["--config", CONFIG]
    if extra_config is not None:
        path = save_dir.parent / f"{save_dir.name}.yaml"
        path.write_text(yaml.safe_dump(extra_config))
        configs += ["--config", str(path)]
    command = [
        sys.executable,
        "-m",
        "fsl_lightning",
        "fit",
        *configs,
        *TINY,
        f"--trainer.logger.init_args.save_dir={save_dir}",
        *arguments,
    ]
    environment = {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}",
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    process = subprocess.Popen(
        command, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if not wait:
        return process
    output, _ = process.communicate()
    return process.returncode, output


def _rows(metrics_csv: Path) -> list[dict]:
    with open(metrics_csv, newline="") as file:
        return list(csv.DictReader(file))


@pytest.mark.usefixtures("data_root")
@pytest.mark.slow
def test_a_killed_and_resumed_run_logs_what_an_uninterrupted_run_logs(tmp_path):
    code, output = _fit(tmp_path / "straight", "--trainer.max_steps=20")
    assert code == 0, output
    # Killed at step 13, mid-epoch: its newest checkpoint is from step 5 (the best; Lightning 2.6 writes last.ckpt
    # only with a new best), and the CSV logger had written nothing since (it flushes every 100 steps).
    killer = {
        "trainer": {"callbacks": [BEST_AND_LAST, {"class_path": "interruptions.KillAtStep", "init_args": {"step": 13}}]}
    }
    code, output = _fit(tmp_path / "killed", "--trainer.max_steps=20", extra_config=killer)
    assert code == -9, output
    code, output = _fit(tmp_path / "killed", "--trainer.max_steps=20", "--ckpt_path", "last")
    assert code == 0, output

    straight = tmp_path / "straight" / RUN / "version_0"
    resumed = tmp_path / "killed" / RUN / "version_1"
    assert _rows(resumed / "metrics.csv") == _rows(straight / "metrics.csv")
    # best-so-far carried over: the resumed run's first validation (worse than step 5's) is not taken as the best
    assert sorted(p.name for p in (resumed / "checkpoints").glob("step*.ckpt")) == sorted(
        p.name for p in (straight / "checkpoints").glob("step*.ckpt")
    )
    resumed_last = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    straight_last = torch.load(straight / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    (resumed_state,) = [s for key, s in resumed_last["callbacks"].items() if key.startswith("ModelCheckpoint")]
    (straight_state,) = [s for key, s in straight_last["callbacks"].items() if key.startswith("ModelCheckpoint")]
    assert resumed_state["best_model_score"] == straight_state["best_model_score"]
    assert Path(resumed_state["best_model_path"]).parent == resumed / "checkpoints"


def _other_filesystem_folder(than: Path) -> Path:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == than.stat().st_dev:
        pytest.skip("needs /dev/shm on a filesystem other than the test's temporary folder")
    return Path(tempfile.mkdtemp(dir=shm, prefix="fsl-tmpdir-"))


def _snapshot(folder: Path) -> set:
    """Name, inode, size and time of each file: any write shows."""
    files = folder.iterdir() if folder.is_dir() else ()
    return {(p.name, p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns) for p in files}


@pytest.mark.usefixtures("data_root")
@pytest.mark.slow
def test_a_kill_while_saving_a_checkpoint_leaves_a_checkpoint_to_resume_from(tmp_path):
    temporary_dir = _other_filesystem_folder(tmp_path)
    try:
        _kill_during_second_save_and_resume(tmp_path, temporary_dir)
    finally:
        for leftover in temporary_dir.iterdir():
            leftover.unlink()
        temporary_dir.rmdir()


def _kill_during_second_save_and_resume(tmp_path: Path, temporary_dir: Path) -> None:
    # last.ckpt written at every step, 100 MB larger than the model, with TMPDIR on another filesystem (tmpfs)
    every_step = {
        "trainer": {
            "callbacks": [
                {
                    "class_path": "fsl_lightning.callbacks.ModelCheckpoint",
                    "init_args": {"every_n_train_steps": 1, "save_top_k": 0, "save_last": True},
                },
                {"class_path": "interruptions.CheckpointBallast", "init_args": {"megabytes": 100}},
            ]
        }
    }
    env = {"TMPDIR": str(temporary_dir)}
    run = _fit(tmp_path / "out", "--trainer.max_steps=40", extra_config=every_step, env=env, wait=False)
    folder = tmp_path / "out" / RUN / "version_0" / "checkpoints"
    last = folder / "last.ckpt"
    try:
        while not (last.is_file() and zipfile.is_zipfile(last)):  # the first save, complete
            assert run.poll() is None, run.communicate()[0]
            time.sleep(0.01)
        first_save = _snapshot(folder)
        while _snapshot(folder) == first_save:  # the second save has begun
            assert run.poll() is None, run.communicate()[0]
        run.kill()
    finally:
        run.kill()
        run.communicate()
    code, output = _fit(tmp_path / "out", "--trainer.max_steps=5", "--ckpt_path", str(last), env=env)
    assert code == 0, output
    assert "Restored all states" in output


# left empty by a kill and given by path; cut short and found by `--ckpt_path last` (read by the Trainer, not the CLI)
@pytest.mark.usefixtures("data_root")
@pytest.mark.parametrize(("kept_bytes", "by_name"), [(0, False), (5000, True)])
def test_a_truncated_checkpoint_is_named_with_what_to_do(tmp_path, kept_bytes, by_name):
    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"weight": torch.randn(100, 100)}, "global_step": 5}, whole)
    broken = tmp_path / "out" / RUN / "version_0" / "checkpoints" / "last.ckpt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(whole.read_bytes()[:kept_bytes])
    with pytest.raises(SystemExit, match=rf"^error: Checkpoint {broken} is truncated or corrupt.*--ckpt_path"):
        main(
            [
                "fit",
                "--config",
                CONFIG,
                *TINY,
                "--trainer.max_steps=1",
                "--ckpt_path",
                "last" if by_name else str(broken),
                f"--trainer.logger.init_args.save_dir={tmp_path / 'out'}",
            ]
        )
