"""Baseline++ (Chen et al., ICLR 2019): cosine-similarity classifiers in both stages."""

from __future__ import annotations

from typing import Any, Literal

from fsl_lightning.methods.episode_classifiers import CosineProbe, EpisodeClassifier
from fsl_lightning.methods.registry import registered
from fsl_lightning.methods.transfer import Transfer


@registered
class BaselinePlusPlus(Transfer):
    """Baseline with Chen et al.'s cosine classifier (weight-normalised, ``distLinear`` in their code) for the
    base classes in pre-training (:class:`~fsl_lightning.methods.transfer.CosineClassifier`) and for each episode
    (:class:`CosineProbe`): class weights compared by angle, which reduces intra-class variation. Each head's
    scale follows their rule for its own number of classes (2 up to 200 classes, 10 above). Arguments as
    :class:`Transfer`; ``base_classifier`` is ``cosine`` by default."""

    def __init__(self, *args: Any, base_classifier: Literal["linear", "cosine"] = "cosine", **kwargs: Any) -> None:
        # mypy: *args might reach the keywords; it holds only the base's leading arguments, and jsonargparse
        # reads the signature through this very call
        super().__init__(*args, base_classifier=base_classifier, **kwargs)

    def default_episode_classifier(self) -> EpisodeClassifier:
        return CosineProbe()
