"""Training episodes under gradient accumulation and resumption: each episode of the stream is seen once, in order."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from fsl_lightning.backbones import Conv4
from fsl_lightning.data import EpisodicDataModule
from fsl_lightning.episode import EpisodeSpec
from fsl_lightning.methods import ProtoNet

pytestmark = pytest.mark.usefixtures("one_thread")
EPISODES_PER_EPOCH = 6


class RecordEpisodes(Callback):
    """Keeps the image indices of every training episode, in the order training sees them."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, ...]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append(tuple(torch.cat([batch.support_indices, batch.query_indices]).tolist()))


def _datamodule(omniglot, sample_on_device: bool) -> EpisodicDataModule:
    return EpisodicDataModule(
        omniglot,
        train=EpisodeSpec(5, 1, 1),
        evaluation=EpisodeSpec(5, 1, 1),
        train_episodes_per_epoch=EPISODES_PER_EPOCH,
        val_episodes=1,
        sample_on_device=sample_on_device,
    )


def _fit(omniglot, sample_on_device=False, ckpt_path=None, callbacks=(), **trainer_arguments) -> list[tuple[int, ...]]:
    recorder = RecordEpisodes()
    torch.manual_seed(0)
    trainer = L.Trainer(
        accelerator="cpu",
        accumulate_grad_batches=2,
        logger=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder, *callbacks],
        enable_checkpointing=bool(callbacks),
        **trainer_arguments,
    )
    trainer.fit(
        ProtoNet(Conv4(in_channels=1, hidden_channels=8)), _datamodule(omniglot, sample_on_device), ckpt_path=ckpt_path
    )
    return recorder.seen


@pytest.mark.parametrize("sample_on_device", [False, True])
def test_no_training_episode_repeats_under_gradient_accumulation(omniglot, sample_on_device):
    seen = _fit(omniglot, sample_on_device, max_epochs=3)
    assert len(seen) == 3 * EPISODES_PER_EPOCH
    assert len(set(seen)) == len(seen), "an episode was drawn twice"


@pytest.mark.parametrize("steps_before_kill", [4, 3])  # in the middle of the second epoch; at the end of the first
def test_a_resumed_run_continues_the_episode_stream_without_repeats_or_gaps(omniglot, tmp_path, steps_before_kill):
    uninterrupted = _fit(omniglot, max_epochs=3)
    # stopped after a checkpoint at this optimiser step (2 episodes each), then resumed from that checkpoint
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=steps_before_kill, save_top_k=-1)
    before = _fit(omniglot, max_steps=steps_before_kill, callbacks=[checkpoint])
    (saved,) = tmp_path.glob(f"*step={steps_before_kill}.ckpt")
    after = _fit(omniglot, max_epochs=3, ckpt_path=str(saved))
    assert len(before) == 2 * steps_before_kill
    assert before + after == uninterrupted
