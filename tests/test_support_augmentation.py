"""RFS's evaluation (WangYueFt/rfs eval_fewshot.py, --n_aug_support_samples 5, used by SKD too): the episode
classifier is fitted on 5 copies of each support image, each through the training augmentation, and no original."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from fsl_lightning.data.augment import BatchAugmentation
from fsl_lightning.episode import Episode, SupportSet
from fsl_lightning.methods import RFSSimple
from fsl_lightning.methods.episode_classifiers import NearestCentroid
from fsl_lightning.methods.functional import class_prototypes
from fsl_lightning.run.composed_configs import load_config

REPO = Path(__file__).resolve().parents[1]
AUGMENTATION = BatchAugmentation(random_resized_crop=False, crop_padding=2, color_jitter=0.4, horizontal_flip=True)


def episode(seed: int = 7) -> Episode:
    torch.manual_seed(0)
    return Episode(
        torch.rand(3, 3, 8, 8),
        torch.tensor([0, 1, 2]),
        torch.rand(6, 3, 8, 8),
        torch.tensor([0, 0, 1, 1, 2, 2]),
        torch.arange(3),
        seed=seed,
    )


def rfs(**kwargs) -> RFSSimple:
    return RFSSimple(
        nn.Flatten(),
        num_base_classes=4,
        feature_dim=192,
        episode_classifier=NearestCentroid(),
        support_augmentation=AUGMENTATION,
        **kwargs,
    ).eval()


def test_the_classifier_is_fitted_on_five_augmented_copies_of_each_support_image_seeded_by_the_episode():
    task = episode()
    generator = torch.Generator().manual_seed(7)
    copies = torch.cat([AUGMENTATION(task.support_images, generator) for _ in range(5)])
    assert not torch.equal(copies[:3], task.support_images)  # no original among them
    method = rfs()
    augmented = method.augmented_support(SupportSet.of(task))
    assert torch.equal(augmented.images, copies) and augmented.labels.tolist() == [0, 1, 2] * 5
    prototypes = class_prototypes(torch.nn.functional.normalize(copies.flatten(1), dim=-1), augmented.labels, 3)
    torch.testing.assert_close(method.fit_support(SupportSet.of(task)).prototypes, prototypes)
    torch.testing.assert_close(method.episode_logits(task), method.episode_logits(task))  # same episode, same copies
    other_seed = episode(seed=8)
    assert not torch.equal(method.augmented_support(SupportSet.of(other_seed)).images, copies)


def test_training_and_a_method_without_support_augmentation_fit_the_support_images_as_they_are():
    task = episode()
    support = SupportSet.of(task)
    assert rfs().train().augmented_support(support) is support
    plain = RFSSimple(nn.Flatten(), num_base_classes=4, feature_dim=192, episode_classifier=NearestCentroid()).eval()
    assert plain.augmented_support(support) is support
    with pytest.raises(ValueError, match="augmented_support_copies must be at least 1"):
        rfs(augmented_support_copies=0)


@pytest.mark.parametrize(
    "config",
    sorted((REPO / "experiments").rglob("rfs_*.yaml")) + sorted((REPO / "experiments").rglob("skd_*.yaml")),
    ids=lambda path: path.stem,
)
def test_rfs_and_skd_configs_evaluate_with_their_training_augmentation(config):
    sections = load_config(config)
    assert sections["model"]["init_args"]["support_augmentation"] == sections["data"]["augmentation"]
