"""Training episodes drawn on the compute device: structure, determinism, uniformity, end to end."""

from __future__ import annotations

import lightning as L
import torch

from fsl_lightning.backbones import Conv4
from fsl_lightning.data import EpisodicDataModule
from fsl_lightning.data.sampler import DeviceEpisodeSampler
from fsl_lightning.episode import EpisodeSpec
from fsl_lightning.methods import ProtoNet

CPU = torch.device("cpu")
# 30 classes with 6 to 20 images each
COUNTS = torch.tensor([6 + (c * 7) % 15 for c in range(30)])
OFFSETS = torch.cat([torch.zeros(1, dtype=torch.long), COUNTS.cumsum(0)])


def test_episode_has_distinct_classes_and_distinct_images_of_each_class():
    spec = EpisodeSpec(way=5, shot=2, query=4)
    sampler = DeviceEpisodeSampler(OFFSETS, spec, seed=0, stream=0)
    for key in range(200):
        indices, class_ids = sampler(key, CPU)
        assert indices.shape == (5, 6) and class_ids.shape == (5,)
        assert len(set(class_ids.tolist())) == 5
        for row, class_id in zip(indices, class_ids):
            assert len(set(row.tolist())) == 6  # support and queries never share an image
            assert ((OFFSETS[class_id] <= row) & (row < OFFSETS[class_id + 1])).all()


def test_the_same_key_gives_the_same_episode_and_keys_differ():
    sampler = DeviceEpisodeSampler(OFFSETS, EpisodeSpec(5, 1, 5), seed=3, stream=0)
    first = sampler(7, CPU)
    sampler(8, CPU)
    again = DeviceEpisodeSampler(OFFSETS, EpisodeSpec(5, 1, 5), seed=3, stream=0)(7, CPU)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], sampler(8, CPU)[0])
    assert not torch.equal(first[0], DeviceEpisodeSampler(OFFSETS, EpisodeSpec(5, 1, 5), seed=4, stream=0)(7, CPU)[0])


def test_classes_and_images_are_drawn_uniformly():
    spec = EpisodeSpec(way=5, shot=1, query=1)
    sampler = DeviceEpisodeSampler(OFFSETS, spec, seed=0, stream=0, tasks_per_batch=50)
    class_counts = torch.zeros(30)
    image_counts = torch.zeros(int(OFFSETS[-1]))
    for key in range(40):  # 2000 episodes
        indices, class_ids = sampler(key, CPU)
        class_counts += torch.bincount(class_ids.flatten(), minlength=30)
        image_counts += torch.bincount(indices.flatten(), minlength=len(image_counts))
    expected = 2000 * 5 / 30  # 333 per class
    assert ((class_counts - expected).abs() < 5 * expected**0.5).all()
    # within class 0 (6 images), each image is drawn about 2/6 of the times the class is
    first_class = image_counts[: COUNTS[0]]
    share = class_counts[0] * 2 / COUNTS[0]
    assert ((first_class - share).abs() < 5 * share**0.5).all()


def test_meta_batches_have_a_leading_task_dimension():
    indices, class_ids = DeviceEpisodeSampler(OFFSETS, EpisodeSpec(5, 1, 3), 0, 0, tasks_per_batch=4)(0, CPU)
    assert indices.shape == (4, 5, 4) and class_ids.shape == (4, 5)


def test_protonet_trains_on_device_drawn_episodes(omniglot):
    datamodule = EpisodicDataModule(
        omniglot,
        train=EpisodeSpec(20, 1, 5),
        evaluation=EpisodeSpec(5, 1, 5),
        train_episodes_per_epoch=60,
        val_episodes=20,
        test_episodes=100,
        sample_on_device=True,
    )
    datamodule.setup("fit")
    assert isinstance(next(iter(datamodule.train_dataloader())), int)  # the loader yields only keys
    torch.manual_seed(0)
    model = ProtoNet(Conv4(in_channels=1))
    trainer = L.Trainer(
        max_steps=60,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule)
    trainer.test(model, datamodule, verbose=False)
    assert float(model.last_accuracy["test"].mean) > 0.6  # chance is 0.2
