"""TIM (Boudiaf, Ziko, Rony, Dolz, Piantanida & Ben Ayed 2020, "Transductive Information Maximization for
Few-Shot Learning", NeurIPS; arXiv:2008.11297), in its gradient-descent form TIM-GD.

Transductive: the queries of the episode are used together, so its accuracy assumes all of them arrive at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fsl_lightning.methods.feature_classifiers.feature_transforms import TransformedFeatureClassifier
from fsl_lightning.methods.functional import class_prototypes, squared_euclidean_distance


class TIM(TransformedFeatureClassifier):
    """TIM-GD: class weights fitted on the support labels and on the mutual information of the query predictions.

    On L2-normalised features z (``feature_transform``, default ``L2N`` as the authors' evaluation), class weights
    W start at the support prototypes and the posteriors are ``p_ik = softmax_k(-tau/2 ||z_i - w_k||^2)`` (Sec. 3,
    tau = ``temperature``). W minimises

        ``lambda_ce * CE(support) - (lambda_H * H(Y_Q) - lambda_HYX * H(Y_Q | X_Q))``

    with the support cross-entropy averaged over the support set, the marginal entropy ``H(Y_Q) = -sum_k p_k log
    p_k`` of the mean query posterior ``p_k``, and the conditional entropy ``H(Y_Q | X_Q)`` averaged over the queries
    (maximising their mutual information: confident, class-balanced query predictions). ``steps`` Adam steps at
    ``lr``. Defaults are TIM-GD's (the paper and the authors' evaluation scripts): tau = 15, weights (0.1, 1,
    0.1), 1000 steps of Adam at 1e-4.

    easyfsl 1.5's ``TIM`` defaults differ (50 steps, cross-entropy weight 1, temperature 10) and it scores cosines
    ``temperature * cos(z, w_k)`` rather than ``-tau/2 ||z - w_k||^2``; ``benchmarks/transductive_reference.py``
    measures both.
    """

    transductive = True  # every query's scores depend on the episode's other queries

    def __init__(
        self,
        feature_transform: str = "L2N",
        temperature: float = 15.0,
        cross_entropy_weight: float = 0.1,
        marginal_entropy_weight: float = 1.0,
        conditional_entropy_weight: float = 0.1,
        steps: int = 1000,
        lr: float = 1e-4,
    ) -> None:
        super().__init__(feature_transform)
        if steps < 0:
            raise ValueError(f"steps must be at least 0, got {steps}.")
        self.temperature, self.steps, self.lr = temperature, steps, lr
        self.loss_weights = (cross_entropy_weight, marginal_entropy_weight, conditional_entropy_weight)

    def fit_predict(
        self, support: Tensor, support_labels: Tensor, queries: Tensor, way: int, generator: torch.Generator
    ) -> Tensor:
        support, queries = self.transform(support), self.transform(queries)
        weights = class_prototypes(support, support_labels, way).requires_grad_()
        optimiser = torch.optim.Adam([weights], lr=self.lr)
        for _ in range(self.steps):
            optimiser.zero_grad(set_to_none=True)
            self.loss(weights, support, support_labels, queries).backward()
            optimiser.step()
        with torch.no_grad():
            return self.logits(weights, queries)

    def logits(self, weights: Tensor, features: Tensor) -> Tensor:
        """``-tau/2 ||z - w_k||^2``: features [N, D], weights [way, D] -> [N, way]."""
        return -0.5 * self.temperature * squared_euclidean_distance(features, weights)

    def loss(self, weights: Tensor, support: Tensor, support_labels: Tensor, queries: Tensor) -> Tensor:
        cross_entropy_weight, marginal_weight, conditional_weight = self.loss_weights
        cross_entropy = F.cross_entropy(self.logits(weights, support), support_labels)
        posteriors = self.logits(weights, queries).softmax(dim=-1)  # [Q, way]
        conditional_entropy = -(posteriors * torch.log(posteriors + 1e-12)).sum(dim=-1).mean()
        marginal = posteriors.mean(dim=0)
        marginal_entropy = -(marginal * torch.log(marginal + 1e-12)).sum()
        return cross_entropy_weight * cross_entropy - (
            marginal_weight * marginal_entropy - conditional_weight * conditional_entropy
        )
