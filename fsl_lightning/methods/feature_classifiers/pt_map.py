"""PT-MAP (Hu, Gripon & Pateux 2021, "Leveraging the Feature Distribution in Transfer-based Few-Shot Learning",
ICANN; arXiv:2006.03806).

Transductive: the queries of the episode are used together, so its accuracy assumes all of them arrive at once; the
Sinkhorn step also assumes they are spread evenly over the classes (as in standard episodes).

Negative features: the power transform ``(x + 1e-6)^beta`` is written for the non-negative features of a backbone
that ends in a ReLU (the authors' WRN: ``relu(bn(out))`` before the average pool; on a negative value their
``torch.pow`` gives NaN). This project's ResNet12 ends in a leaky ReLU, as the RFS / MetaOptNet ResNet-12, so its
features can be negative. ``negative_features: clip`` (the default) sets them to 0 first, which is what a ReLU
would have done and changes nothing for non-negative features, so PT-MAP on a ReLU backbone is the authors' exactly;
``refuse`` ends the episode with a message instead.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fsl_lightning.methods.episode_classifiers import EpisodeClassifier
from fsl_lightning.methods.functional import class_prototypes, squared_euclidean_distance
from fsl_lightning.run.errors import UserError

#: added before the power so that a zero feature has a finite derivative (the paper's epsilon)
POWER_EPSILON = 1e-6


def power_transform(features: Tensor, power: float, negative_features: Literal["clip", "refuse"] = "clip") -> Tensor:
    """``(x + 1e-6)^beta`` (eq. 1), then each vector L2-normalised. The transform is for non-negative features (the
    ReLU outputs the method is written for): negative values are set to 0 first (``clip``) or refused."""
    if negative_features == "refuse" and bool((features < 0).any()):
        raise UserError(
            "PT-MAP's power transform is for non-negative features (a backbone ending in a ReLU, e.g. Conv4, or "
            "the torchvision ResNets), and these have negative values (a leaky ReLU, as this project's ResNet12, or "
            "no activation at the end): set the classifier's negative_features: clip to set them to 0 first, or use "
            "another episode classifier."
        )
    return F.normalize((features.clamp_min(0) + POWER_EPSILON).pow(power), dim=-1)


def centred_on_own_mean(features: Tensor) -> Tensor:
    """Features minus their mean, L2-normalised again (the authors' code does it for the support and the query
    sets separately)."""
    return F.normalize(features - features.mean(dim=0), dim=-1)


def sinkhorn(cost: Tensor, regularisation: float, tolerance: float, max_iterations: int) -> Tensor:
    """The entropy-regularised transport plan [Q, way] of the queries to the classes (eq. 3): ``P = diag(u)
    exp(-lambda C) diag(v)`` with every row summing to 1 and every column to ``Q / way`` (balanced classes),
    by Sinkhorn-Knopp iterations until the row sums change by less than ``tolerance``."""
    plan = torch.exp(-regularisation * cost)
    plan = plan / plan.sum()
    column_sum = len(cost) / cost.shape[1]
    row_sums = torch.zeros(len(cost), dtype=cost.dtype, device=cost.device)
    for _ in range(max_iterations):
        if float((row_sums - plan.sum(dim=1)).abs().max()) <= tolerance:
            break
        row_sums = plan.sum(dim=1)
        plan = plan / row_sums.unsqueeze(1)
        plan = plan * (column_sum / plan.sum(dim=0)).unsqueeze(0)
    return plan


class PTMAP(EpisodeClassifier):
    """Power transform, then class centres estimated with the queries' optimal-transport assignments (transductive).

    Preprocessing (Sec. 3.2, and the authors' code): ``(x + 1e-6)^beta`` with beta = ``power``, L2 normalisation,
    then the support and the query features each centred on their own mean and normalised again (the code's QR
    reduction, a rotation that changes no distance, is left out). The MAP
    estimation (Sec. 3.3, Algorithm 1) starts the centres ``c_k`` at the support means and repeats ``iterations``
    times: the queries' soft assignments ``M*`` are the Sinkhorn plan of the cost ``||f - c_k||^2`` (entropy weight
    ``sinkhorn_regularisation`` = lambda, rows summing to 1, columns to Q / way); the support samples keep their
    labels; the centres move towards the assignment-weighted means of support and queries by ``alpha``:
    ``c_k <- c_k + alpha (mu_k - c_k)``. A query goes to its largest final assignment (logits: their log).
    Defaults as the authors' code: beta = 0.5, lambda = 10, alpha = 0.2, 20 iterations. ``negative_features``:
    what the power transform does with negative features (the module docstring): ``clip`` them to 0 (default) or
    ``refuse`` the episode.

    easyfsl 1.5's ``PTMAP`` neither L2-normalises after the power transform nor centres per set (it powers
    ``relu(x) + 1e-6``) and runs 10 iterations by default.
    """

    transductive = True  # every query's scores depend on the episode's other queries

    def __init__(
        self,
        power: float = 0.5,
        sinkhorn_regularisation: float = 10.0,
        alpha: float = 0.2,
        iterations: int = 20,
        sinkhorn_tolerance: float = 1e-6,
        sinkhorn_max_iterations: int = 1000,
        negative_features: Literal["clip", "refuse"] = "clip",
    ) -> None:
        if negative_features not in ("clip", "refuse"):
            raise UserError(f"PTMAP negative_features={negative_features!r}: use clip or refuse.")
        self.negative_features = negative_features
        self.power, self.sinkhorn_regularisation, self.alpha, self.iterations = (
            power,
            sinkhorn_regularisation,
            alpha,
            iterations,
        )
        self.sinkhorn_tolerance, self.sinkhorn_max_iterations = sinkhorn_tolerance, sinkhorn_max_iterations

    def fit_predict(
        self, support: Tensor, support_labels: Tensor, queries: Tensor, way: int, generator: torch.Generator
    ) -> Tensor:
        support, queries = self.preprocess(support), self.preprocess(queries)
        support_assignments = F.one_hot(support_labels, way).to(support.dtype)
        samples = torch.cat([support, queries])
        centres = class_prototypes(support, support_labels, way)
        for _ in range(self.iterations):
            assignments = torch.cat([support_assignments, self.query_assignments(queries, centres)])
            estimates = (assignments.T @ samples) / assignments.sum(dim=0).unsqueeze(1)
            centres = centres + self.alpha * (estimates - centres)
        return self.query_assignments(queries, centres).clamp_min(1e-30).log()

    def preprocess(self, features: Tensor) -> Tensor:
        return centred_on_own_mean(power_transform(features, self.power, self.negative_features))

    def query_assignments(self, queries: Tensor, centres: Tensor) -> Tensor:
        cost = squared_euclidean_distance(queries, centres)
        return sinkhorn(cost, self.sinkhorn_regularisation, self.sinkhorn_tolerance, self.sinkhorn_max_iterations)
