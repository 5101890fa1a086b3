"""Pure maths shared by metric-based methods: prototypes and distances."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def class_prototypes(support_embeddings: Tensor, support_labels: Tensor, way: int) -> Tensor:
    """Mean embedding of each class (Snell et al. 2017, eq. 1).

    support_embeddings [S, D], support_labels [S] in ``0..way-1`` (any order, any number per class)
    -> prototypes [way, D].
    """
    one_hot = F.one_hot(support_labels, way).to(support_embeddings.dtype)  # [S, way]
    sums = one_hot.T @ support_embeddings
    return sums / one_hot.sum(dim=0).clamp_min(1).unsqueeze(1)


def squared_euclidean_distance(queries: Tensor, centres: Tensor) -> Tensor:
    """||q - c||^2 for every pair: queries [Q, D], centres [N, D] -> [Q, N].

    Computed as a difference (not by expanding the square), which stays exact and non-negative.
    """
    return (queries.unsqueeze(1) - centres.unsqueeze(0)).pow(2).sum(dim=-1)
