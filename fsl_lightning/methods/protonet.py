"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from fsl_lightning.episode import Episode
from fsl_lightning.methods.base import FewShotMethod
from fsl_lightning.methods.functional import class_prototypes, squared_euclidean_distance


class ProtoNet(FewShotMethod):
    """Each class is the mean of its support embeddings; a query scores ``-||f(q) - prototype||^2``.

    Support and query images go through the backbone in one batch (batch norm sees the whole episode,
    as in the paper's code). Training and test way/shot are independent (set in the data module).

    Args:
        distance: ``squared_euclidean`` (the paper's, default) or ``euclidean``, a named departure: scores
            ``-||f(q) - prototype||``, as easyfsl's ``PrototypicalNetworks`` (``torch.cdist``). The ranking, so
            the accuracy of a given network, is the same; only training differs (BENCHMARKS.md: the plain distance
            learns faster over the first few hundred episodes on Omniglot).
        other arguments: see :class:`FewShotMethod`.
    """

    def __init__(self, *args: Any, distance: Literal["squared_euclidean", "euclidean"] = "squared_euclidean",
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if distance not in ("squared_euclidean", "euclidean"):
            raise ValueError(f"Unknown distance {distance!r}: use 'squared_euclidean' (the paper's) or 'euclidean'.")
        self.distance = distance

    def episode_logits(self, episode: Episode) -> Tensor:
        num_support = len(episode.support_images)
        embeddings = self.backbone(torch.cat([episode.support_images, episode.query_images]))
        # Distances in fp32 even under mixed precision: bf16 differences of near-equal embeddings lose the ranking.
        embeddings = embeddings.float()
        support, queries = embeddings[:num_support], embeddings[num_support:]
        prototypes = class_prototypes(support, episode.support_labels, episode.way)
        if self.distance == "euclidean":
            return -torch.cdist(queries, prototypes)
        return -squared_euclidean_distance(queries, prototypes)
