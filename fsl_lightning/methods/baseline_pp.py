"""Baseline++ (Chen et al., ICLR 2019): cosine-similarity classifiers in both stages."""

from __future__ import annotations

from typing import Any

from fsl_lightning.methods.episode_classifiers import CosineProbe, EpisodeClassifier
from fsl_lightning.methods.transfer import Transfer


class BaselinePlusPlus(Transfer):
    """Baseline with a scaled cosine-similarity classifier, for the base classes in pre-training and for each
    episode (:class:`CosineProbe`): class weights compared by angle, which reduces intra-class variation.
    Arguments as :class:`Transfer`; ``base_classifier`` is ``cosine`` by default."""

    def __init__(self, *args: Any, base_classifier: str = "cosine", **kwargs: Any) -> None:
        super().__init__(*args, base_classifier=base_classifier, **kwargs)

    def default_episode_classifier(self) -> EpisodeClassifier:
        return CosineProbe(scale=getattr(self.base_head, "scale", 10.0))  # the same sharpness as pre-training
