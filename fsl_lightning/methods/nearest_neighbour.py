"""1-nearest-neighbour baseline, the reference of Lake et al. (Science 2015) and Koch et al. (2015)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fsl_lightning.episode import Episode
from fsl_lightning.methods.base import FewShotMethod
from fsl_lightning.methods.functional import nearest_in_class, squared_euclidean_distance


class NearestNeighbour(FewShotMethod):
    """Each query takes the class of its nearest support image in Euclidean distance; nothing is trained.

    With ``backbone: torch.nn.Flatten`` the distance is in pixel space (the baseline of Lake et al.; our
    measurements are in BENCHMARKS.md); any other backbone gives nearest neighbour on its (fixed) embeddings.
    logits [Q, way] = minus the distance to the nearest support image of each class.

    There are no parameters to fit: evaluate with ``python -m fsl_lightning test --config <yaml>`` (no
    checkpoint). ``fit`` stops at once with an error saying so (see :meth:`configure_optimizers`).
    """

    #: ``predict`` writes the Euclidean distance to the nearest support image of the predicted class
    score_name = "distance"
    needs_trained_weights = False

    def episode_logits(self, episode: Episode) -> Tensor:
        num_support = len(episode.support_images)
        # fp32 distances: in bf16, near-equal pixel distances would tie
        embeddings = self.backbone(torch.cat([episode.support_images, episode.query_images])).float()
        support, queries = embeddings[:num_support], embeddings[num_support:]
        distances = squared_euclidean_distance(queries, support).sqrt()
        return -nearest_in_class(distances, episode.support_labels, episode.way)

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

