"""SimpleShot (Wang, Chao, Weinberger & van der Maaten 2019, "SimpleShot: Revisiting Nearest-Neighbor
Classification for Few-Shot Learning", arXiv:1911.04623)."""

from __future__ import annotations

import torch
from torch import Tensor

from fsl_lightning.methods.feature_classifiers.feature_transforms import TransformedFeatureClassifier
from fsl_lightning.methods.functional import class_prototypes


class SimpleShot(TransformedFeatureClassifier):
    """Nearest centroid, by Euclidean distance, on transformed features.

    Each feature is transformed (Sec. 3.2; default ``CL2N``: minus the mean feature of the base classes, then
    divided by its norm; ``L2N`` and ``UN`` are the paper's other two rows), each class's centroid is the mean of its
    transformed support features (for one shot, the support feature itself), and a query goes to the class at the
    smallest Euclidean distance ``||x - c_k||`` (eq. 1 with the nearest-centroid rule, as the authors' code does
    it). Logits are ``-||x - c_k||``.

    The centroids are not normalised again: with several shots, distance and cosine to the centroid can rank
    classes differently (easyfsl 1.5's ``SimpleShot`` scores the cosine).
    """

    def __init__(self, feature_transform: str = "CL2N") -> None:
        super().__init__(feature_transform)

    def fit_predict(
        self, support: Tensor, support_labels: Tensor, queries: Tensor, way: int, generator: torch.Generator
    ) -> Tensor:
        centroids = class_prototypes(self.transform(support), support_labels, way)
        return -torch.cdist(self.transform(queries), centroids)
