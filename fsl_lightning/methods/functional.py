"""Pure maths shared by metric-based methods: prototypes and distances."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def class_prototypes(support_embeddings: Tensor, support_labels: Tensor, way: int) -> Tensor:
    """Mean embedding of each class (Snell et al. 2017, eq. 1).

    support_embeddings [S, D], support_labels [S] in ``0..way-1`` (any order, any number per class)
    -> prototypes [way, D].
    """
    counts = F.one_hot(support_labels, way).sum(dim=0).clamp_min(1).to(support_embeddings.dtype)
    return class_sums(support_embeddings, support_labels, way) / counts.unsqueeze(1)


def squared_euclidean_distance(queries: Tensor, centres: Tensor) -> Tensor:
    """||q - c||^2 for every pair: queries [Q, D], centres [N, D] -> [Q, N].

    Computed as a difference (not by expanding the square), which stays exact and non-negative.
    """
    return (queries.unsqueeze(1) - centres.unsqueeze(0)).pow(2).sum(dim=-1)


def class_sums(support_features: Tensor, support_labels: Tensor, way: int) -> Tensor:
    """Sum of the support features of each class (Sung et al. 2018: the class feature map for K > 1).

    support_features [S, ...] (any trailing shape, e.g. feature maps [S, C, h, w]), support_labels [S] in
    ``0..way-1`` (any order) -> [way, ...].
    """
    one_hot = F.one_hot(support_labels, way).to(support_features.dtype)  # [S, way]
    sums = one_hot.T @ support_features.flatten(1)
    return sums.view(way, *support_features.shape[1:])


def cosine_similarity_matrix(queries: Tensor, keys: Tensor, eps: float = 1e-8) -> Tensor:
    """Cosine similarity of every pair: queries [Q, D], keys [S, D] -> [Q, S], each in [-1, 1]."""
    return F.normalize(queries, dim=-1, eps=eps) @ F.normalize(keys, dim=-1, eps=eps).T


def attention_class_log_probabilities(scores: Tensor, support_labels: Tensor, way: int) -> Tensor:
    """log P(class | query) under softmax attention over the support set (Vinyals et al. 2016, eq. 1-2).

    P(k | q) = sum_{i: y_i = k} softmax_i(scores[q, i]); computed in log space as
    ``logsumexp_{i in k} scores - logsumexp_i scores``, which stays exact when an attention weight underflows.
    scores [Q, S], support_labels [S] in ``0..way-1`` -> [Q, way] (a class without support gets ``-inf``).
    """
    in_class = F.one_hot(support_labels, way).T.bool()  # [way, S]
    masked = scores.unsqueeze(1).masked_fill(~in_class, float("-inf"))  # [Q, way, S]
    return masked.logsumexp(dim=-1) - scores.logsumexp(dim=-1, keepdim=True)


def nearest_in_class(distances: Tensor, support_labels: Tensor, way: int) -> Tensor:
    """Distance of each query to the nearest support item of each class.

    distances [Q, S], support_labels [S] in ``0..way-1`` -> [Q, way] (``inf`` for a class without support).
    """
    in_class = F.one_hot(support_labels, way).T.bool()  # [way, S]
    return distances.unsqueeze(1).masked_fill(~in_class, float("inf")).amin(dim=-1)


def class_log_mean_exp(log_scores: Tensor, support_labels: Tensor, way: int) -> Tensor:
    """log of the mean over each class's support items of ``exp(log_scores)``, computed in log space.

    For log-probabilities of "same class" (Koch et al. 2015, K > 1) this is the log of the mean probability
    per class, without underflow: ``logsumexp_{i in k} log_scores - log n_k``.
    log_scores [Q, S], support_labels [S] in ``0..way-1`` -> [Q, way] (``-inf`` for a class without support).
    """
    one_hot = F.one_hot(support_labels, way).T  # [way, S]
    masked = log_scores.unsqueeze(1).masked_fill(~one_hot.bool(), float("-inf"))  # [Q, way, S]
    return masked.logsumexp(dim=-1) - one_hot.sum(dim=-1).to(log_scores.dtype).log()
