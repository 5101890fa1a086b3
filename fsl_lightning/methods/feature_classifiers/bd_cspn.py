"""BD-CSPN (Liu, Song & Qin 2020, "Prototype Rectification for Few-Shot Learning", ECCV; arXiv:1911.10713).

Transductive: the queries of the episode are used together, so its accuracy assumes all of them arrive at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fsl_lightning.methods.feature_classifiers.feature_transforms import TransformedFeatureClassifier
from fsl_lightning.methods.functional import class_prototypes, cosine_similarity_matrix


def shift_queries(support: Tensor, queries: Tensor) -> Tensor:
    """Cross-class bias diminishing (Sec. 3.2): every query moved by ``xi = mean(support) - mean(queries)``, so that
    the two sets share their mean."""
    return queries + (support.mean(dim=0) - queries.mean(dim=0))


def rectified_prototypes(
    support: Tensor, support_labels: Tensor, queries: Tensor, way: int, temperature: float
) -> Tensor:
    """Intra-class bias diminishing (Sec. 3.2): prototypes [way, D] from the support set augmented with the
    pseudo-labelled queries.

    Each query takes the class of the support prototype ``P_n`` nearest in cosine (its pseudo-label); the rectified
    prototype of class n is ``P'_n = sum_i w_in x_i`` over the class's support features and pseudo-labelled queries,
    ``w_in = exp(eps cos(x_i, P_n)) / sum_j exp(eps cos(x_j, P_n))`` (a softmax within the class), eps =
    ``temperature``.
    """
    prototypes = class_prototypes(support, support_labels, way)
    pseudo_labels = cosine_similarity_matrix(queries, prototypes).argmax(dim=-1)
    members = torch.cat([support, queries])
    labels = torch.cat([support_labels, pseudo_labels])
    scores = temperature * cosine_similarity_matrix(members, prototypes)  # [S + Q, way]
    # the softmax runs over each class's own members: the others are masked out of its column
    in_class = F.one_hot(labels, way).bool()
    weights = scores.masked_fill(~in_class, float("-inf")).softmax(dim=0)
    return weights.T @ members


class BDCSPN(TransformedFeatureClassifier):
    """Prototype rectification: cosine to prototypes corrected with the episode's queries (transductive).

    1. features L2-normalised (``feature_transform``, default ``L2N``: the paper's network scores cosines);
    2. the queries shifted by the difference of the support and query means (:func:`shift_queries`);
    3. prototypes rectified with the shifted, pseudo-labelled queries, weighted by a softmax of
       ``temperature * cos`` within each class (:func:`rectified_prototypes`; eps = 10, the paper's value);
    4. each shifted query scored by ``temperature * cos(x, P'_n)`` (shifted, as the LaplacianShot code scores them).

    Every query is pseudo-labelled (the paper's Z is the number of pseudo-labelled queries a class receives; the
    LaplacianShot code, which carries this rectification, and easyfsl take them all, as here).

    Differences from easyfsl 1.5's ``BDCSPN`` (kept out of this class, measured in
    ``benchmarks/transductive_reference.py``): it weights by ``exp(cos)`` (eps = 1) and scores the unshifted queries.
    BD-CSPN has no official code, and which queries are scored is contested: the LaplacianShot authors score the
    shifted ones (as here), Veilleux et al.'s reimplementation the unshifted ones (as easyfsl). Together the two
    choices account for the whole difference to easyfsl, episode by episode (BENCHMARKS.md).
    """

    transductive = True  # every query's scores depend on the episode's other queries

    def __init__(self, feature_transform: str = "L2N", temperature: float = 10.0) -> None:
        super().__init__(feature_transform)
        self.temperature = temperature

    def fit_predict(
        self, support: Tensor, support_labels: Tensor, queries: Tensor, way: int, generator: torch.Generator
    ) -> Tensor:
        support, queries = self.transform(support), self.transform(queries)
        queries = shift_queries(support, queries)
        prototypes = rectified_prototypes(support, support_labels, queries, way, self.temperature)
        return self.temperature * cosine_similarity_matrix(queries, prototypes)
