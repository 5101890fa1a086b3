"""Light classifiers fitted on one episode's support features, for methods that pre-train their features.

Each is a callable ``classifier(support, support_labels, queries, way) -> logits [Q, way]`` on fixed
(detached) features; fitting runs with autograd enabled even inside Lightning's inference-mode evaluation
loops. Chosen in config by class path, e.g.
``episode_classifier: {class_path: fsl_lightning.methods.episode_classifiers.LogisticRegression}``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor

from fsl_lightning.adaptation.context import gradients_enabled
from fsl_lightning.methods.functional import class_prototypes, cosine_similarity_matrix


class EpisodeClassifier(ABC):
    """Fits a classifier on the support features and scores the queries."""

    def __call__(self, support: Tensor, support_labels: Tensor, queries: Tensor, way: int) -> Tensor:
        # Fitting works on fp32 copies made outside inference mode: features from Lightning's evaluation loops
        # are inference tensors, which autograd refuses to save.
        with gradients_enabled(), torch.autocast(support.device.type, enabled=False):
            support = support.detach().float().clone()
            queries = queries.detach().float().clone()
            support_labels = support_labels.clone()
            return self.fit_predict(support, support_labels, queries, way)

    @abstractmethod
    def fit_predict(self, support: Tensor, support_labels: Tensor, queries: Tensor, way: int) -> Tensor:
        """support [S, D], support_labels [S] in ``0..way-1``, queries [Q, D] -> logits [Q, way]."""


class LinearProbe(EpisodeClassifier):
    """A new linear layer trained on the support features (Baseline, Chen et al. 2019).

    Chen et al. train it for 100 epochs of SGD (lr 0.01, momentum 0.9, weight decay 1e-3) in mini-batches of 4;
    here each of ``steps`` is a full-batch step with the same optimiser settings, which is deterministic and
    launches far fewer kernels.
    """

    def __init__(self, steps: int = 100, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 1e-3) -> None:
        self.steps, self.lr, self.momentum, self.weight_decay = steps, lr, momentum, weight_decay

    def fit_predict(self, support: Tensor, support_labels: Tensor, queries: Tensor, way: int) -> Tensor:
        layer = torch.nn.Linear(support.shape[1], way, device=support.device)
        optimiser = torch.optim.SGD(layer.parameters(), self.lr, self.momentum, weight_decay=self.weight_decay)
        for _ in range(self.steps):
            optimiser.zero_grad(set_to_none=True)
            F.cross_entropy(self.scores(layer, support), support_labels).backward()
            optimiser.step()
        with torch.no_grad():
            return self.scores(layer, queries)

    def scores(self, layer: torch.nn.Linear, features: Tensor) -> Tensor:
        return layer(features)


class CosineProbe(LinearProbe):
    """Baseline++'s classifier (Chen et al. 2019): scaled cosine similarity between features and class weights.

    Trained on the support set like :class:`LinearProbe`; ``scale`` sharpens the softmax over cosines in [-1, 1].
    """

    def __init__(self, steps: int = 100, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 1e-3,
                 scale: float = 10.0) -> None:
        super().__init__(steps, lr, momentum, weight_decay)
        self.scale = scale

    def scores(self, layer: torch.nn.Linear, features: Tensor) -> Tensor:
        return self.scale * cosine_similarity_matrix(features, layer.weight)


class LogisticRegression(EpisodeClassifier):
    """Multinomial logistic regression on L2-normalised features (RFS, Tian et al. 2020).

    Minimises ``sum_i CE(W x_i + b, y_i) + ||W||^2 / (2 C)`` (bias not penalised): the objective of
    scikit-learn's ``LogisticRegression(C=C)`` that the RFS code uses. The optimum is unique, so any exact solver
    gives the same classifier; this one is fast on a GPU and never waits on the host:

    * the optimal ``W`` lies in the span of the support features (a component orthogonal to them adds to the
      penalty and nothing to the data term), so ``W = B X`` with ``B`` [way, S]: ``way * (S + 1)`` unknowns
      (130 for 5-way 5-shot) instead of ``way * (D + 1)``;
    * in those few unknowns, ``newton_steps`` Newton steps with the exact Hessian (float64, a small ridge
      keeping it invertible along directions that do not change the classifier) converge to machine precision;
      a fixed count keeps the fit free of data-dependent control flow.
    """

    def __init__(self, C: float = 1.0, normalize: bool = True, newton_steps: int = 20) -> None:
        if C <= 0:
            raise ValueError(f"The inverse regularisation strength C must be positive, got {C}.")
        if newton_steps < 1:
            raise ValueError(f"newton_steps must be at least 1, got {newton_steps}.")
        self.C, self.normalize, self.newton_steps = C, normalize, newton_steps

    def fit_predict(self, support: Tensor, support_labels: Tensor, queries: Tensor, way: int) -> Tensor:
        if self.normalize:
            support, queries = F.normalize(support, dim=-1), F.normalize(queries, dim=-1)
        support64 = support.double()
        gram = support64 @ support64.T  # [S, S]
        coefficients = self.fit_coefficients(gram, support_labels, way)
        weights, bias = coefficients[:, :-1] @ support64, coefficients[:, -1]  # W = B X
        return (queries.double() @ weights.T + bias).to(queries.dtype)

    def fit_coefficients(self, gram: Tensor, labels: Tensor, way: int) -> Tensor:
        """``[B | b]`` [way, S + 1] minimising the objective written in the span of the support features.

        With ``Phi = [K | 1]`` [S, S + 1] the logits are ``Phi [B | b]^T``; gradient and Hessian are written out
        (softmax cross-entropy: ``(P - Y)^T Phi`` and ``sum_i (diag p_i - p_i p_i^T) (x) phi_i phi_i^T``; the
        penalty ``tr(B K B^T) / 2C`` adds ``B K / C`` and ``K / C`` on each class's block).
        """
        count = len(gram)
        targets = F.one_hot(labels, way).to(gram.dtype)
        design = torch.cat([gram, torch.ones(count, 1, dtype=gram.dtype, device=gram.device)], dim=1)  # Phi
        penalty = torch.zeros(count + 1, count + 1, dtype=gram.dtype, device=gram.device)
        penalty[:count, :count] = gram / self.C
        penalty_hessian = torch.block_diag(*[penalty] * way)
        ridge = 1e-9 * torch.eye(way * (count + 1), dtype=gram.dtype, device=gram.device)
        theta = torch.zeros(way, count + 1, dtype=gram.dtype, device=gram.device)
        for _ in range(self.newton_steps):
            probabilities = (design @ theta.T).softmax(dim=-1)  # [S, way]
            gradient = (probabilities - targets).T @ design + theta @ penalty
            curvature = torch.diag_embed(probabilities) - probabilities.unsqueeze(2) * probabilities.unsqueeze(1)
            hessian = torch.einsum("ikl,ij,im->kjlm", curvature, design, design).reshape(ridge.shape)
            step = torch.linalg.solve(hessian + penalty_hessian + ridge, gradient.reshape(-1))
            theta = theta - step.view(way, count + 1)
        return theta


class NearestCentroid(EpisodeClassifier):
    """Cosine similarity to the class means of L2-normalised support features (no fitting at all)."""

    def __init__(self, scale: float = 10.0) -> None:
        self.scale = scale

    def fit_predict(self, support: Tensor, support_labels: Tensor, queries: Tensor, way: int) -> Tensor:
        prototypes = class_prototypes(F.normalize(support, dim=-1), support_labels, way)
        return self.scale * cosine_similarity_matrix(queries, prototypes)
