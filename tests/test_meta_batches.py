"""``data.train_tasks_per_batch > 1`` for every metric method that trains on episodes: a meta-batch of T episodes
(one Episode with a leading task dimension) is one optimiser step, on real Omniglot."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from fsl_lightning.backbones import Conv4
from fsl_lightning.backbones.relation_conv4 import RelationConv4
from fsl_lightning.data import EpisodicDataModule
from fsl_lightning.episode import EpisodeSpec
from fsl_lightning.methods import R2D2, MatchingNet, ProtoNet, RelationNet, Siamese

METHODS = {
    "ProtoNet": lambda: ProtoNet(Conv4(in_channels=1)),
    "MatchingNet-fce": lambda: MatchingNet(Conv4(in_channels=1), fce=True, embedding_dim=64),
    "RelationNet": lambda: RelationNet(RelationConv4(in_channels=1)),
    "R2D2": lambda: R2D2(Conv4(in_channels=1)),
    "Siamese": lambda: Siamese(Conv4(in_channels=1), embedding_dim=64),
}
STEPS = 3


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", METHODS)
def test_meta_batches_of_two_episodes_train_on_omniglot(name, omniglot, tmp_path):
    L.seed_everything(0)
    method = METHODS[name]()
    datamodule = EpisodicDataModule(
        omniglot,
        train=EpisodeSpec(way=5, shot=1, query=2),
        evaluation=EpisodeSpec(way=5, shot=1, query=2),
        train_tasks_per_batch=2,
        train_episodes_per_epoch=STEPS,
        val_episodes=1,
        test_episodes=1,
    )
    before = [parameter.detach().clone() for parameter in method.backbone.parameters()]
    trainer = L.Trainer(
        max_steps=STEPS,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(method, datamodule=datamodule)
    assert trainer.global_step == STEPS
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert any(not torch.equal(old, new) for old, new in zip(before, method.backbone.parameters()))
