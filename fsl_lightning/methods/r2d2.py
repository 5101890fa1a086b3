"""R2D2 (Bertinetto, Henriques, Torr & Vedaldi, ICLR 2019, "Meta-learning with differentiable closed-form
solvers"): a ridge-regression head solved in closed form for each episode, differentiated through."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsl_lightning.episode import SupportSet
from fsl_lightning.methods.base import EmbeddingMethod
from fsl_lightning.methods.registry import registered


def ridge_regression_weights(features: Tensor, targets: Tensor, regulariser: Tensor | float) -> Tensor:
    """argmin_W ||X W - Y||^2 + lambda ||W||^2 = X^T (X X^T + lambda I)^-1 Y.

    The Woodbury form solves an [S, S] system (S support images) instead of [D, D]: few-shot episodes have far
    fewer images than feature dimensions, which is what makes the head cheap (Bertinetto et al., Sec. 3.2).
    features X [S, D], targets Y [S, way] -> W [D, way].
    """
    gram = features @ features.T
    identity = torch.eye(len(features), device=features.device, dtype=features.dtype)
    return features.T @ torch.linalg.solve(gram + regulariser * identity, targets)


@registered
class R2D2(EmbeddingMethod):
    """Ridge regression from the support features to one-hot labels, solved in closed form per episode;
    query logits ``scale * (x W) + bias`` with a learned scale and bias calibrating them for the cross-entropy.
    Features get a constant 1 appended, so that the regression has an intercept (as in the paper).
    :meth:`fit_support` solves for W (:class:`RidgeWeights`); in training and evaluation support and queries go
    through the backbone in one batch (:class:`~fsl_lightning.methods.base.EmbeddingMethod`).

    The defaults are those of the authors' code (bertinetto/r2d2, ``fewshots/models/r2d2.py`` and
    ``scripts/train/conf/fewshots.yaml``): it divides the support features and the one-hot targets by sqrt(S),
    S the number of support images, before solving, which makes the ridge term S * lambda in the unscaled problem
    (``regulariser_scaling: per_support_image``); lambda is fixed at 50 (``learn_lambda: false``); the scale starts
    at 1e-4 (their miniImageNet runs; 10 on Omniglot and CIFAR-FS, set by ``initial_scale``) and the bias at 0.

    Args:
        backbone, optimizer, lr_scheduler, scheduler_interval: see :class:`FewShotMethod`; the backbone's
            output is flattened (feature maps welcome: the paper regresses on them; its network is
            :class:`~fsl_lightning.backbones.R2D2Conv`).
        initial_lambda: the ridge regulariser lambda (its start when learned); 50 in the reference.
        learn_lambda: meta-learn lambda (in log space, so that it stays positive). The reference fixes it
            (``learn_lambda: False``), although the paper describes lambda as learnable; ``true`` was this
            project's default before it followed the reference.
        initial_scale: starting logit scale (the reference's ``init_adj_scale``).
        regulariser_scaling: ``per_support_image`` (the reference: ridge term S * lambda) or ``plain`` (ridge
            term lambda whatever the episode's size, this project's former behaviour, as the paper's Eq. 6 reads;
            with lambda 50 it regularises a 5-way 1-shot episode 5 times less than the reference).
    """

    def __init__(
        self,
        *args: Any,
        initial_lambda: float = 50.0,
        learn_lambda: bool = False,
        initial_scale: float = 1e-4,
        regulariser_scaling: Literal["per_support_image", "plain"] = "per_support_image",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if initial_lambda <= 0:
            raise ValueError(f"initial_lambda must be positive (default 50), got {initial_lambda}.")
        self.log_lambda = nn.Parameter(torch.tensor(math.log(initial_lambda)), requires_grad=learn_lambda)
        self.scale = nn.Parameter(torch.tensor(float(initial_scale)))
        self.bias = nn.Parameter(torch.tensor(0.0))
        if regulariser_scaling not in ("per_support_image", "plain"):
            raise ValueError(f"regulariser_scaling must be per_support_image or plain, got {regulariser_scaling!r}.")
        self.regulariser_scaling = regulariser_scaling

    def ridge_regulariser(self, support_size: int) -> Tensor:
        """The ridge term of the unscaled problem: lambda, times the number of support images S when scaled per
        support image (the reference solves with features and targets divided by sqrt(S), which is the same)."""
        factor = support_size if self.regulariser_scaling == "per_support_image" else 1
        return factor * self.log_lambda.exp()

    def embed(self, images: Tensor) -> Tensor:
        features = self.backbone(images).flatten(1).float()
        return F.pad(features, (0, 1), value=1.0)  # the intercept column

    def fit_features(self, support_features: Tensor, support: SupportSet) -> RidgeWeights:
        targets = F.one_hot(support.labels, support.way).float()
        # The solve stays in fp32 under mixed precision: a bf16 Gram matrix is far too ill-conditioned.
        with torch.autocast(support_features.device.type, enabled=False):
            regulariser = self.ridge_regulariser(len(support_features))
            return RidgeWeights(ridge_regression_weights(support_features, targets, regulariser))

    def score_features(self, state: RidgeWeights, query_features: Tensor) -> Tensor:
        return self.scale * (query_features @ state.weights) + self.bias


@dataclass(frozen=True)
class RidgeWeights:
    """A fitted support set of R2D2: the closed-form ridge-regression weights W [D + 1, way] (intercept row last)."""

    weights: Tensor
