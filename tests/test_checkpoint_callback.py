"""``last.ckpt`` follows the run even when the monitored metric stops improving (Lightning 2.6's does not)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint

from fsl_lightning.backbones import Conv4
from fsl_lightning.callbacks import ModelCheckpoint
from fsl_lightning.data import EpisodicDataModule
from fsl_lightning.episode import EpisodeSpec
from fsl_lightning.methods import ProtoNet


def _fit_and_read_last(checkpoint_class, omniglot, folder) -> dict:
    spec = EpisodeSpec(way=2, shot=1, query=2)
    datamodule = EpisodicDataModule(omniglot, train=spec, evaluation=spec, train_episodes_per_epoch=3, val_episodes=2)
    # "epoch", lowest first: the first validation is the best and no later one improves on it
    checkpoints = checkpoint_class(dirpath=folder, monitor="epoch", mode="min", save_last=True)
    trainer = L.Trainer(
        max_steps=9,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[checkpoints],
    )
    trainer.fit(ProtoNet(Conv4(in_channels=1, hidden_channels=8)), datamodule=datamodule)
    return torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)


@pytest.mark.usefixtures("one_thread")
def test_last_checkpoint_holds_the_last_step_after_the_best_one(omniglot, tmp_path):
    assert _fit_and_read_last(ModelCheckpoint, omniglot, tmp_path / "ours")["global_step"] == 9
    # the behaviour this class exists for: Lightning's own last.ckpt stays at the best step
    assert _fit_and_read_last(LightningModelCheckpoint, omniglot, tmp_path / "lightning")["global_step"] == 3
