"""After a NaN loss, the printed advice works when followed: a new fit from the named checkpoint's weights,
with a fresh optimiser that uses the new learning rate (``--weights_from``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fsl_lightning.cli import main
from fsl_lightning.run.errors import UserError

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "experiments" / "omniglot" / "protonet_5w1s.yaml")
TINY = [
    "--config",
    CONFIG,
    "--data.train.way=5",
    "--data.train_episodes_per_epoch=10",
    "--data.val_episodes=5",
    "--data.test_episodes=20",
    "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]
# Adam at 1e-3 for 12 steps (a checkpoint is written at step 10), then a learning rate of 1e30: the loss goes NaN.
DIVERGING = [
    *TINY,
    "--trainer.max_steps=30",
    "--model.init_args.lr_scheduler.class_path=torch.optim.lr_scheduler.MultiStepLR",
    "--model.init_args.lr_scheduler.init_args.milestones=[12]",
    "--model.init_args.lr_scheduler.init_args.gamma=1e33",
]


def run_fit(*args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    environment.pop("FSL_TRACEBACK", None)
    return subprocess.run(
        [sys.executable, "-m", "fsl_lightning", "fit", *args], capture_output=True, text=True, env=environment
    )


@pytest.mark.usefixtures("data_root")
@pytest.mark.slow
def test_following_the_nan_advice_trains_from_the_named_weights_with_the_new_learning_rate(tmp_path):
    save_dir = f"--trainer.logger.init_args.save_dir={tmp_path}"
    diverged = run_fit(*DIVERGING, save_dir)
    assert diverged.returncode == 1 and "Traceback" not in diverged.stderr
    advice = diverged.stderr.strip().splitlines()[-1]
    assert advice.startswith("error: The training loss became NaN or infinite at step 13"), advice
    assert all(Path(named).is_file() for named in re.findall(r"(/\S+\.ckpt)", advice)), advice
    checkpoint = Path(re.search(r"--weights_from (\S+)`", advice).group(1))

    # The advice: the same command with a lower learning rate and --weights_from (the schedule that raised the
    # rate is fixed as well). --ckpt_path would restore Adam's and MultiStepLR's state: a rate of 1e30 again.
    followed = run_fit(
        *DIVERGING,
        save_dir,
        "--model.init_args.optimizer.init_args.lr=1e-4",
        "--model.init_args.lr_scheduler.init_args.gamma=1.0",
        "--weights_from",
        str(checkpoint),
    )
    assert followed.returncode == 0, followed.stderr
    assert f"Starting from the weights of {checkpoint}" in followed.stdout
    (new_run,) = (path for path in tmp_path.rglob("version_*") if path != checkpoint.parents[1])
    last = torch.load(new_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 30  # a new run counts its own steps (a resumed one would reach 30 from 10)
    assert [group["lr"] for group in last["optimizer_states"][0]["param_groups"]] == [1e-4]
    assert all(torch.isfinite(weight).all() for weight in last["state_dict"].values())

    # The new run starts from exactly those weights (0 steps: the model as fit received it); `best` and `last`
    # name the newest run's best and last checkpoints.
    for choice, expected in (
        (str(checkpoint), checkpoint),
        ("best", Path(last["callbacks"][_checkpoint_key(last)]["best_model_path"])),
        ("last", new_run / "checkpoints" / "last.ckpt"),
    ):
        cli = main(
            ["fit", *TINY, save_dir, "--trainer.max_steps=0", "--test_after_fit=false", "--weights_from", choice]
        )
        wanted = torch.load(expected, map_location="cpu", weights_only=False)["state_dict"]
        loaded = cli.model.state_dict()
        assert all(torch.equal(loaded[name].cpu(), weight) for name, weight in wanted.items()), choice


def _checkpoint_key(checkpoint: dict) -> str:
    return next(key for key in checkpoint["callbacks"] if key.startswith("ModelCheckpoint"))


@pytest.mark.usefixtures("data_root")
def test_nan_before_any_checkpoint_names_no_checkpoint(tmp_path):
    """With lr=1e30 the loss is NaN from step 1; ModelCheckpoint records the step-10 file's name before the guard
    keeps it from being written, so the message must not name it."""
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                *TINY,
                "--trainer.max_steps=20",
                "--model.init_args.optimizer.init_args.lr=1e30",
                f"--trainer.logger.init_args.save_dir={tmp_path}",
            ]
        )
    message = str(exit_info.value.code)
    assert "at step 1 " in message and "No checkpoint was written before that step" in message, message
    assert ".ckpt" not in message and not list(tmp_path.rglob("*.ckpt"))
    assert "--model.init_args.optimizer.init_args.lr=<lower>" in message


def test_weights_from_is_refused_where_it_does_not_apply(tmp_path):
    save_dir = f"--trainer.logger.init_args.save_dir={tmp_path}"
    with pytest.raises(
        UserError, match="--weights_from starts a new fit; for test, pass the checkpoint with --ckpt_path"
    ):
        main(["test", *TINY, save_dir, "--weights_from=some.ckpt", "--print_traceback"])
    with pytest.raises(UserError, match="either --ckpt_path .* or --weights_from"):
        main(["fit", *TINY, save_dir, "--weights_from=a.ckpt", "--ckpt_path=b.ckpt", "--print_traceback"])
    with pytest.raises(UserError, match=r"--weights_from: no checkpoint file .*missing\.ckpt"):
        main(["fit", *TINY, save_dir, f"--weights_from={tmp_path / 'missing.ckpt'}", "--print_traceback"])
