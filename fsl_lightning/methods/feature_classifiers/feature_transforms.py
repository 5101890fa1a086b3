"""SimpleShot's feature transformations (Wang et al. 2019, Sec. 3.2), shared by the classifiers that use them.

* ``UN``: the features as they are;
* ``L2N``: L2-normalised, ``x / ||x||``;
* ``CL2N``: centred on the mean feature of the base classes (the training split), then L2-normalised,
  ``(x - x_bar) / ||x - x_bar||``.

``CL2N`` needs the base-class mean: a method that evaluates with such a classifier calls :meth:`prepare` with the
features of its training split (see :mod:`fsl_lightning.methods.feature_classifiers.base_features`) before the
first episode; the mean is recomputed whenever an evaluation starts, since the backbone may have changed.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from fsl_lightning.methods.episode_classifiers import EpisodeClassifier
from fsl_lightning.run.errors import UserError

FEATURE_TRANSFORMS = ("UN", "L2N", "CL2N")


class TransformedFeatureClassifier(EpisodeClassifier):
    """An episode classifier that first transforms every feature with ``UN``, ``L2N`` or ``CL2N``."""

    def __init__(self, feature_transform: str) -> None:
        if feature_transform not in FEATURE_TRANSFORMS:
            raise UserError(
                f"feature_transform {feature_transform!r} is not one of {', '.join(FEATURE_TRANSFORMS)}: "
                "use CL2N (centred on the base classes, then L2-normalised), L2N or UN (unchanged)."
            )
        self.feature_transform = feature_transform
        self.base_mean: Tensor | None = None

    @property
    def needs_base_features(self) -> bool:
        """Whether the method must call :meth:`prepare` with the training split's features (``CL2N``)."""
        return self.feature_transform == "CL2N"

    def prepare(self, base_features: Tensor) -> None:
        """Keeps the mean of the base classes' features [M, D] (every image of the training split)."""
        self.base_mean = base_features.detach().double().mean(dim=0).float().cpu()  # summed in float64: M is large

    def transform(self, features: Tensor) -> Tensor:
        """Features [N, D] after the chosen transformation."""
        if self.feature_transform == "CL2N":
            if self.base_mean is None:
                raise UserError(
                    f"{type(self).__name__} with feature_transform CL2N centres features on the base classes' mean, "
                    "which was never given: evaluate through FrozenFeatures or Transfer with a data module that has "
                    "a training split, call prepare(training_split_features) first, or set feature_transform: L2N."
                )
            # a copy: the mean may have been computed under inference mode, which autograd refuses to save
            features = features - self.base_mean.to(features.device).clone()
        if self.feature_transform in ("CL2N", "L2N"):
            features = F.normalize(features, dim=-1)
        return features
