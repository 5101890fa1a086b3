"""EpisodeThroughput: meta-iterations/s and episodes/s are told apart when a batch holds several tasks."""

from __future__ import annotations

import json

import lightning as L
import pytest

from fsl_lightning.backbones.maml_conv4 import MAMLConv4
from fsl_lightning.callbacks import EpisodeThroughput
from fsl_lightning.data import EpisodicDataModule
from fsl_lightning.episode import EpisodeSpec
from fsl_lightning.methods.maml import FOMAML

TASKS_PER_BATCH, WARMUP, STEPS = 3, 2, 4


@pytest.mark.usefixtures("one_thread")
def test_a_meta_batch_of_three_tasks_counts_one_step_and_three_episodes(omniglot, tmp_path, capsys):
    spec = EpisodeSpec(way=5, shot=1, query=1)
    datamodule = EpisodicDataModule(
        omniglot,
        train=spec,
        evaluation=spec,
        train_episodes_per_epoch=WARMUP + STEPS,
        train_tasks_per_batch=TASKS_PER_BATCH,
        val_episodes=1,
        test_episodes=1,
    )
    throughput = EpisodeThroughput(warmup_steps=WARMUP, output_path=str(tmp_path / "timing.json"))
    trainer = L.Trainer(
        max_steps=WARMUP + STEPS,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[throughput],
        default_root_dir=tmp_path,
    )
    trainer.fit(FOMAML(MAMLConv4(way=5, hidden_channels=4, downsampling="stride")), datamodule=datamodule)
    timing = json.loads((tmp_path / "timing.json").read_text())
    # the same timed window of STEPS optimiser steps, each on TASKS_PER_BATCH episodes
    assert timing["episodes_per_s"] == pytest.approx(TASKS_PER_BATCH * timing["steps_per_s"], rel=1e-9)
    assert (
        f"meta-iterations/s ({timing['episodes_per_s']:.1f} episodes/s) over {STEPS} steps" in capsys.readouterr().out
    )
