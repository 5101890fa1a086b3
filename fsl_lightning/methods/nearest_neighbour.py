"""1-nearest-neighbour baseline, the reference of Lake et al. (Science 2015) and Koch et al. (2015)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from fsl_lightning.episode import SupportSet
from fsl_lightning.methods.base import EmbeddingMethod, LabelledFeatures
from fsl_lightning.methods.functional import nearest_in_class, squared_euclidean_distance
from fsl_lightning.methods.registry import registered


@registered
class NearestNeighbour(EmbeddingMethod):
    """Each query takes the class of its nearest support image in Euclidean distance; nothing is trained.

    With ``backbone: torch.nn.Flatten`` the distance is in pixel space (the baseline of Lake et al.; our
    measurements are in BENCHMARKS.md); any other backbone gives nearest neighbour on its (fixed) embeddings.
    logits [Q, way] = minus the distance to the nearest support image of each class; :meth:`fit_support` keeps the
    support embeddings (:class:`~fsl_lightning.methods.base.LabelledFeatures`).

    There are no parameters to fit: evaluate with ``python -m fsl_lightning test --config <yaml>`` (no
    checkpoint). ``fit`` stops at once with an error saying so (see :meth:`configure_optimizers`).
    """

    #: ``predict`` writes the Euclidean distance to the nearest support image of the predicted class
    score_name = "distance"
    needs_trained_weights = False

    def embed(self, images: Tensor) -> Tensor:
        # fp32 distances: in bf16, near-equal pixel distances would tie
        return self.backbone(images).float()

    def fit_features(self, support_features: Tensor, support: SupportSet) -> LabelledFeatures:
        return LabelledFeatures(support_features, support.labels, support.way)

    def score_features(self, state: LabelledFeatures, query_features: Tensor) -> Tensor:
        distances = squared_euclidean_distance(query_features, state.features).sqrt()
        return -nearest_in_class(distances, state.labels, state.way)

    def prediction_scores(self, logits: Tensor) -> Tensor:
        """Euclidean distance to the nearest support image of each class (>= 0, smaller is closer):
        logits [Q, way] -> [Q, way]."""
        return -logits.float()

    def configure_optimizers(self) -> Any:
        """Refuses to train: a nearest-neighbour classifier has nothing to learn, and fitting the backbone
        with it would need a loss the method does not define."""
        raise RuntimeError(
            "NearestNeighbour has no training: evaluate it with `python -m fsl_lightning test --config <yaml>` "
            "(no checkpoint needed), or trainer.test(model, datamodule=...)."
        )
