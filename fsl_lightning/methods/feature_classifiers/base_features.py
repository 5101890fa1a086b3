"""How an episode classifier receives the features of the base classes (SimpleShot's CL2N centring).

A classifier that needs them says so with :attr:`~EpisodeClassifier.needs_base_features` and takes them in
``prepare(base_features)``; the methods that evaluate with episode classifiers (FrozenFeatures, Transfer) call
:func:`prepare_with_base_features` when an evaluation starts, embedding the training split with the current
backbone. Other classifiers are left alone, at no cost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from fsl_lightning.data.datasets.base import ClassImages
from fsl_lightning.data.images import as_model_input
from fsl_lightning.data.method_data import MethodData
from fsl_lightning.methods.episode_classifiers import EpisodeClassifier
from fsl_lightning.run.errors import UserError


def prepare_with_base_features(
    classifier: EpisodeClassifier, data: MethodData | None, embed_split: Callable[[ClassImages], Tensor]
) -> None:
    """Calls ``classifier.prepare`` with ``embed_split(training split)`` if the classifier needs base features."""
    if classifier.needs_base_features:
        classifier.prepare(embed_split(base_class_split(data, type(classifier).__name__)))


class EpisodeClassifierHooks:
    """For methods that score episodes with ``self.episode_classifier`` (FrozenFeatures, Transfer): the classifier
    gets the base classes' features when an evaluation starts, and its transductive flag is the method's.
    Subclasses say how the training split is embedded (:meth:`embed_base_split`)."""

    if TYPE_CHECKING:  # what the mixin reads of the FewShotMethod it is mixed into
        episode_classifier: EpisodeClassifier

        @property
        def data(self) -> MethodData | None: ...

    def on_validation_start(self) -> None:
        self.prepare_episode_classifier()

    def on_test_start(self) -> None:
        self.prepare_episode_classifier()

    def on_predict_start(self) -> None:
        self.prepare_episode_classifier()

    def prepare_episode_classifier(self) -> None:
        prepare_with_base_features(self.episode_classifier, self.data, self.embed_base_split)

    def embed_base_split(self, split: ClassImages) -> Tensor:
        """Features [M, D] of the training split's images (computed only for classifiers that need them)."""
        raise NotImplementedError

    @property
    def transductive(self) -> bool:
        return self.episode_classifier.transductive


def base_class_split(data: MethodData | None, classifier_name: str) -> ClassImages:
    """The training split of the run's data module: the one already loaded, else loaded now (``test`` and
    ``predict`` load only what they score)."""
    if data is not None and "train" in data.splits:
        return data.splits["train"]
    if data is None:
        raise UserError(
            f"{classifier_name} centres features on the mean of the base classes, which it computes from the data "
            "module's training split, and this data module has none: use an EpisodicDataModule with its dataset, or "
            "set the classifier's feature_transform: L2N."
        )
    return data.dataset.load_split("train")


@torch.no_grad()
def embed_in_batches(backbone: nn.Module, images: Tensor, device: torch.device, batch_size: int = 256) -> Tensor:
    """Features [M, D] (float32) of images [M, C, H, W] (uint8, or floats in [0, 1]), with the backbone in eval mode (no batch-norm
    statistic moves), then the backbone's mode restored."""
    was_training = backbone.training
    backbone.eval()
    try:
        return torch.cat(
            [backbone(as_model_input(batch.to(device))).float().flatten(1) for batch in images.split(batch_size)]
        )
    finally:
        backbone.train(was_training)
