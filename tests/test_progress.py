"""Progress that can be followed: plain lines in a log file, a bar with training metrics on a terminal."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from fsl_lightning.callbacks import StepProgressBar
from fsl_lightning.callbacks.progress import _trained_items
from fsl_lightning.cli import main
from fsl_lightning.data import EpisodicDataModule
from fsl_lightning.episode import EpisodeSpec

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "experiments" / "omniglot" / "protonet_5w1s.yaml")
TINY = [
    "--data.train.way=5",
    "--data.train_episodes_per_epoch=10",
    "--data.val_episodes=5",
    "--trainer.accelerator=cpu",
    "--trainer.enable_model_summary=false",
    "--test_after_fit=false",
]
NUMBER = r"\d+\.\d{4}"
STEP_LINE = (
    rf"step (\d+)/22 \| loss {NUMBER} \| acc {NUMBER}( \| val_acc {NUMBER})? \| eps/s [\d.]+ \| eta \d+:\d\d:\d\d"
)


@pytest.mark.usefixtures("data_root")
def test_a_fit_written_to_a_file_logs_step_lines_and_a_line_per_validation(tmp_path):
    log = tmp_path / "run.log"
    command = [
        sys.executable,
        "-m",
        "fsl_lightning",
        "fit",
        "--config",
        CONFIG,
        *TINY,
        "--trainer.max_steps=22",
        "--trainer.log_every_n_steps=5",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with log.open("w") as output:
        subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, env=environment, cwd=REPO, check=True)
    text = log.read_text()
    assert "\r" not in text, "a tqdm bar was drawn into the file"
    steps = [int(match.group(1)) for match in re.finditer(rf"^{STEP_LINE}$", text, re.MULTILINE)]
    assert steps == [5, 10, 15, 20, 22], text  # every log_every_n_steps (the default cadence), and the last step
    assert re.search(rf"^step 15/22 .*\| val_acc {NUMBER} \|", text, re.MULTILINE), "the last val_acc is not shown"
    validations = re.findall(rf"^validation at step (\d+)/22: val_acc {NUMBER} ± {NUMBER}$", text, re.MULTILINE)
    assert validations == ["10", "20"], text


@pytest.mark.usefixtures("data_root")
def test_the_terminal_bar_counts_steps_to_max_steps_and_shows_the_training_metrics(tmp_path):
    cli = main(
        [
            "fit",
            "--config",
            CONFIG,
            *TINY,
            "--trainer.max_steps=12",
            "--trainer.log_every_n_steps=4",
            "--progress.plain_lines=false",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
    )
    progress = cli.trainer.progress_bar_callback
    assert isinstance(progress, StepProgressBar) and progress.is_enabled
    bar = progress.train_progress_bar
    assert (bar.n, bar.total) == (12, 12)  # one bar over all steps, not one per epoch of 10
    assert bar.desc.startswith("Training")
    postfix = dict(field.split("=") for field in bar.postfix.split(", "))
    assert list(postfix) == ["loss", "acc", "val_acc", "eps/s", "eta"], bar.postfix
    assert float(postfix["val_acc"]) == pytest.approx(cli.trainer.callback_metrics["val/acc"].item(), abs=1e-4)
    assert "12/12" in str(bar)


@pytest.mark.usefixtures("data_root")
def test_reports_also_come_every_n_seconds(tmp_path, capsys):
    main(
        [
            "fit",
            "--config",
            CONFIG,
            *TINY,
            "--trainer.max_steps=4",
            "--trainer.limit_val_batches=0",
            "--progress.plain_lines=true",
            "--progress.every_n_steps=1000",
            "--progress.every_n_seconds=1e-6",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
    )
    steps = re.findall(r"^step (\d+)/4 \| loss", capsys.readouterr().out, re.MULTILINE)
    assert steps == ["1", "2", "3", "4"]


@pytest.mark.usefixtures("data_root")
def test_the_bar_gives_way_to_enable_progress_bar_false_and_to_a_bar_in_the_callbacks(tmp_path, capsys):
    quick = [
        "fit",
        "--config",
        CONFIG,
        *TINY,
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=0",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]
    assert main([*quick, "--trainer.enable_progress_bar=false"]).trainer.progress_bar_callback is None
    assert "step 2/2" not in capsys.readouterr().out
    chosen = main([*quick, "--trainer.callbacks+=lightning.pytorch.callbacks.TQDMProgressBar"])
    assert type(chosen.trainer.progress_bar_callback) is TQDMProgressBar


def test_episodes_per_second_counts_every_task_of_a_meta_batch_and_images_when_pre_training(omniglot):
    def first_training_batch(**settings):
        spec = EpisodeSpec(way=5, shot=1, query=2)
        data = EpisodicDataModule(dataset=omniglot, train=spec, evaluation=spec, **settings)
        data.setup("fit")
        return data.training_batch(0, torch.device("cpu"))

    assert _trained_items(first_training_batch()) == (1, "eps")
    assert _trained_items(first_training_batch(train_tasks_per_batch=3)) == (3, "eps")
    assert _trained_items(first_training_batch(pretrain_batch_size=16)) == (16, "img")


def test_a_cadence_that_cannot_be_met_is_refused_with_the_setting_to_fix():
    with pytest.raises(ValueError, match="progress.every_n_steps must be at least 1"):
        StepProgressBar(every_n_steps=0)
    with pytest.raises(ValueError, match="progress.every_n_seconds must be above 0"):
        StepProgressBar(every_n_seconds=0)
