"""Baseline (Chen, Liu, Kira, Wang & Huang, ICLR 2019, "A Closer Look at Few-Shot Classification")."""

from __future__ import annotations

from fsl_lightning.methods.episode_classifiers import EpisodeClassifier, LinearProbe
from fsl_lightning.methods.registry import registered
from fsl_lightning.methods.transfer import Transfer


@registered
class Baseline(Transfer):
    """Pre-train backbone + linear classifier on the base classes; for each episode, train a new linear layer
    on the support features (:class:`LinearProbe`: 100 epochs of SGD in mini-batches of 4, as Chen et al.).
    Arguments as :class:`Transfer` (``base_classifier: linear``)."""

    def default_episode_classifier(self) -> EpisodeClassifier:
        return LinearProbe()
