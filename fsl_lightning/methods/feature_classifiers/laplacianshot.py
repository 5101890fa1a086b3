"""LaplacianShot (Ziko, Dolz, Granger & Ben Ayed 2020, "Laplacian Regularized Few-Shot Learning", ICML;
arXiv:2006.15486).

Transductive: the queries of the episode are used together, so its accuracy assumes all of them arrive at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fsl_lightning.methods.feature_classifiers.bd_cspn import shift_queries
from fsl_lightning.methods.feature_classifiers.feature_transforms import TransformedFeatureClassifier
from fsl_lightning.methods.functional import class_prototypes, cosine_similarity_matrix, squared_euclidean_distance

#: the relative change of the bound below which the updates stop (the authors' code)
BOUND_TOLERANCE = 1e-6


def rectified_prototypes(
    support: Tensor, support_labels: Tensor, queries: Tensor, way: int, temperature: float
) -> Tensor:
    """The authors' code's prototype rectification (their ``proto_rect``, BD-CSPN's idea): every support feature and
    (shifted) query x takes the class n of the support prototype ``P_n`` nearest in cosine, and
    ``m_n = mean over the x of class n of w_xn x`` with ``w_x = softmax_n(temperature cos(x, P_n))`` (a softmax over
    the classes, then a plain mean; BD-CSPN's paper normalises the weights within each class instead). A class that
    receives no member keeps ``P_n`` (the code would drop it)."""
    prototypes = class_prototypes(support, support_labels, way)
    members = torch.cat([support, queries])
    similarity = cosine_similarity_matrix(members, prototypes)  # [S + Q, way]
    weights = (temperature * similarity).softmax(dim=-1)
    in_class = F.one_hot(similarity.argmax(dim=-1), way).to(members.dtype)
    counts = in_class.sum(dim=0)
    rectified = ((in_class * weights).T @ members) / counts.clamp_min(1).unsqueeze(1)
    return torch.where((counts > 0).unsqueeze(1), rectified, prototypes)


def knn_affinity(features: Tensor, knn: int) -> Tensor:
    """``W`` [N, N]: ``W_qp = 1`` when p is among the ``knn - 1`` nearest other points of q (Euclidean), else 0.

    As the authors' code, a point counts among its own ``knn`` nearest neighbours, so ``knn = 3`` links each query
    to 2 others; ``W`` is not symmetrised.
    """
    distances = torch.cdist(features, features)
    distances.fill_diagonal_(float("inf"))
    neighbours = distances.topk(min(knn - 1, len(features) - 1), dim=1, largest=False).indices
    return torch.zeros_like(distances).scatter_(1, neighbours, 1.0)


def bound_energy(assignments: Tensor, unary: Tensor, affinity: Tensor, laplacian_weight: float) -> float:
    """The bound being minimised (Sec. 2.2): ``sum_q y_q^T log y_q + a_q^T y_q - lambda sum_p w_qp y_q^T y_p``."""
    entropy = assignments * assignments.clamp_min(1e-20).log()
    pairwise = laplacian_weight * (affinity @ assignments) * assignments
    return float((entropy + unary * assignments - pairwise).sum())


def bound_updates(unary: Tensor, affinity: Tensor, laplacian_weight: float, max_iterations: int) -> Tensor:
    """Algorithm 1: ``y_q <- softmax(-a_q + lambda sum_p w_qp y_p)`` from ``y_q = softmax(-a_q)``, until the bound's
    relative change falls under :data:`BOUND_TOLERANCE`. Returns the logits [Q, way] of the last update (their
    softmax is the assignments)."""
    logits = -unary
    previous = float("inf")
    for iteration in range(max_iterations):
        logits = -unary + laplacian_weight * affinity @ logits.softmax(dim=-1)
        energy = bound_energy(logits.softmax(dim=-1), unary, affinity, laplacian_weight)
        if iteration > 1 and abs(energy - previous) <= BOUND_TOLERANCE * abs(previous):
            break
        previous = energy
    return logits


class LaplacianShot(TransformedFeatureClassifier):
    """Nearest prototype with a Laplacian term that pulls neighbouring queries to the same class (transductive).

    Minimises over the soft query assignments ``y_q`` (eq. 2)

        ``E(Y) = sum_q sum_c y_qc ||x_q - m_c||^2 + lambda/2 sum_{q,p} w_qp ||y_q - y_p||^2``

    by the bound optimisation of Algorithm 1 (:func:`bound_updates`, at most ``iterations`` updates
    ``y_q <- softmax(-a_q + lambda sum_p w_qp y_p)``), with the unary ``a_qc = ||x_q - m_c||^2`` and the kNN
    affinity ``W`` of the queries (:func:`knn_affinity`). Logits are those of the last update.

    As the authors' code: features ``CL2N`` (centred on the base classes' mean, L2-normalised), prototypes ``m_c``
    rectified with the queries (``rectify_prototypes``: queries shifted by the support-query mean difference,
    pseudo-labelled and weighted by a softmax of ``10 cos`` over the classes, :func:`rectified_prototypes`) and the
    shifted queries scored. Defaults: ``knn = 3``, 20 iterations, ``laplacian_weight`` (lambda) 1.0, the code's
    default; the paper tunes lambda on the validation classes.

    easyfsl 1.5's ``LaplacianShot`` rectifies as its BD-CSPN (weights ``exp(cos)`` normalised within each class),
    scores the unshifted queries and takes
    lambda = 0.7.
    """

    transductive = True  # every query's scores depend on the episode's other queries

    def __init__(
        self,
        feature_transform: str = "CL2N",
        laplacian_weight: float = 1.0,
        knn: int = 3,
        iterations: int = 20,
        rectify_prototypes: bool = True,
        rectification_temperature: float = 10.0,
    ) -> None:
        super().__init__(feature_transform)
        if knn < 2:
            raise ValueError(f"knn counts the query itself and must be at least 2, got {knn}.")
        self.laplacian_weight, self.knn, self.iterations = laplacian_weight, knn, iterations
        self.rectify_prototypes, self.rectification_temperature = rectify_prototypes, rectification_temperature

    def fit_predict(
        self, support: Tensor, support_labels: Tensor, queries: Tensor, way: int, generator: torch.Generator
    ) -> Tensor:
        support, queries = self.transform(support), self.transform(queries)
        if self.rectify_prototypes:
            queries = shift_queries(support, queries)
            prototypes = rectified_prototypes(support, support_labels, queries, way, self.rectification_temperature)
        else:
            prototypes = class_prototypes(support, support_labels, way)
        unary = squared_euclidean_distance(queries, prototypes)
        return bound_updates(unary, knn_affinity(queries, self.knn), self.laplacian_weight, self.iterations)
