"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from fsl_lightning.episode import SupportSet
from fsl_lightning.methods.base import EmbeddingMethod, Prototypes
from fsl_lightning.methods.functional import class_prototypes, squared_euclidean_distance
from fsl_lightning.methods.registry import registered


@registered
class ProtoNet(EmbeddingMethod):
    """Each class is the mean of its support embeddings; a query scores ``-||f(q) - prototype||^2``.

    :meth:`fit_support` keeps the prototypes (:class:`~fsl_lightning.methods.base.Prototypes`), :meth:`score`
    measures queries against them. In training and evaluation support and query images go through the backbone in
    one batch (batch norm sees the whole episode, as in the paper's code; see
    :class:`~fsl_lightning.methods.base.EmbeddingMethod`). Training and test way/shot are independent (set in the
    data module).

    Args:
        distance: ``squared_euclidean`` (the paper's, default) or ``euclidean``, a named departure: scores
            ``-||f(q) - prototype||``, as easyfsl's ``PrototypicalNetworks`` (``torch.cdist``). The ranking, so
            the accuracy of a given network, is the same; only training differs (BENCHMARKS.md: the plain distance
            learns faster over the first few hundred episodes on Omniglot).
        other arguments: see :class:`FewShotMethod`.
    """

    cpu_bf16_by_default = True  # measured: same accuracy (BENCHMARKS.md, "bf16 training keeps accuracy")

    def __init__(
        self, *args: Any, distance: Literal["squared_euclidean", "euclidean"] = "squared_euclidean", **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        if distance not in ("squared_euclidean", "euclidean"):
            raise ValueError(f"Unknown distance {distance!r}: use 'squared_euclidean' (the paper's) or 'euclidean'.")
        self.distance = distance

    def embed(self, images: Tensor) -> Tensor:
        # Distances in fp32 even under mixed precision: bf16 differences of near-equal embeddings lose the ranking.
        return self.backbone(images).float()

    def fit_features(self, support_features: Tensor, support: SupportSet) -> Prototypes:
        return Prototypes(class_prototypes(support_features, support.labels, support.way))

    def score_features(self, state: Prototypes, query_features: Tensor) -> Tensor:
        if self.distance == "euclidean":
            return -torch.cdist(query_features, state.prototypes)
        return -squared_euclidean_distance(query_features, state.prototypes)
