"""A short real training run on Omniglot must beat chance by a wide margin."""

from __future__ import annotations

import lightning as L
import torch

from fsl_lightning.backbones import Conv4
from fsl_lightning.data import EpisodicDataModule
from fsl_lightning.episode import EpisodeSpec
from fsl_lightning.methods import ProtoNet


def test_protonet_learns_omniglot_in_a_few_hundred_episodes(omniglot, tmp_path):
    L.seed_everything(0)
    datamodule = EpisodicDataModule(
        omniglot,
        train=EpisodeSpec(way=20, shot=1, query=5),
        evaluation=EpisodeSpec(way=5, shot=1, query=15),
        train_episodes_per_epoch=150,
        val_episodes=20,
        test_episodes=200,
    )
    method = ProtoNet(backbone=Conv4(in_channels=1), optimizer=lambda params: torch.optim.Adam(params, lr=1e-3))
    trainer = L.Trainer(
        max_steps=150,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    untrained = trainer.test(method, datamodule=datamodule, verbose=False)[0]["test/acc"]
    trainer.fit(method, datamodule=datamodule)
    trained = trainer.test(method, datamodule=datamodule, verbose=False)[0]
    # chance is 20%; an untrained Conv4 already does better than chance, training must add a lot
    assert trained["test/acc"] > 0.85, trained
    assert trained["test/acc"] > untrained + 0.1
    assert 0 < trained["test/acc_ci95"] < 0.03
