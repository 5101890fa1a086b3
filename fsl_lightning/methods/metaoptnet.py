"""MetaOptNet-SVM (Lee, Maji, Ravichandran & Soatto, CVPR 2019, "Meta-Learning with Differentiable Convex
Optimization"): a Crammer-Singer multi-class linear SVM fitted on the support features of each episode by solving
its dual quadratic program, differentiated through the solver's optimality conditions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsl_lightning.episode import Episode, SupportSet
from fsl_lightning.methods.base import EmbeddingMethod, check_embedding_batches
from fsl_lightning.methods.qp import solve_qp
from fsl_lightning.methods.registry import registered


def crammer_singer_dual(
    features: Tensor, labels: Tensor, way: int, c_reg: float, diagonal: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The dual of the Crammer-Singer SVM as the QP (Q, p, G, h, A, b) of :func:`~fsl_lightning.methods.qp.solve_qp`,
    one problem (batch of 1), variables alpha [S, way] flattened support-major (alpha[i, m] at i * way + m):

        min_alpha  1/2 sum_m ||sum_i alpha[i, m] x_i||^2 - sum_i alpha[i, y_i]
        s.t.       alpha[i, m] <= C [m = y_i]   and   sum_m alpha[i, m] = 0      for every support item i

    so Q = (X X^T) kron I_way (+ ``diagonal`` I), p = -onehot(y), G = I, h = C onehot(y), A = I_S kron 1_way^T,
    b = 0 (Lee et al., eq. 11; liblinear's notation, as the reference code). The class weights are then
    w_m = sum_i alpha[i, m] x_i. Only Q depends on the features (the others carry no gradient).
    """
    support = len(features)
    dtype, device = features.dtype, features.device
    one_hot = F.one_hot(labels, way).to(dtype).reshape(1, support * way)
    identity = torch.eye(support * way, dtype=dtype, device=device)
    Q = torch.kron(features @ features.T, torch.eye(way, dtype=dtype, device=device)) + diagonal * identity
    A = torch.kron(torch.eye(support, dtype=dtype, device=device), torch.ones(1, way, dtype=dtype, device=device))
    b = one_hot.new_zeros(1, support)
    return Q.unsqueeze(0), -one_hot, identity.unsqueeze(0), c_reg * one_hot, A.unsqueeze(0), b


@registered
class MetaOptNet(EmbeddingMethod):
    """MetaOptNet-SVM: per episode, the Crammer-Singer SVM on the support features, its dual QP solved by a
    differentiable interior-point solver (:mod:`fsl_lightning.methods.qp`, the algorithm of the ``qpth`` solver the
    reference code calls); query logits ``scale * (w_m . f(q))`` with a learned scale (initial 1, as the reference
    ``ClassificationHead``). :meth:`fit_support` keeps the SVM's class weights (:class:`SVMWeights`).

    The defaults are the reference code's (kjunelee/MetaOptNet, ``MetaOptNetHead_SVM_CS``): C = 0.1, 1.0 added to
    the diagonal of the block kernel matrix ("to help avoid PSD errors from the QP solver"), the QP in float32,
    15 solver iterations in training (its default ``maxIter``, which train.py keeps) and 3 at test (test.py), and
    label smoothing 0.1 on the training loss (train.py ``--eps``).

    Args:
        backbone, optimizer, lr_scheduler, scheduler_interval: see :class:`FewShotMethod`; the backbone's output is
            flattened (the reference's ResNet-12 keeps its final feature maps, no average pooling).
        c_reg: the SVM's C.
        qp_diagonal: added to the diagonal of the dual's Q; 0 gives the exact Crammer-Singer dual of the paper's
            eq. 11 (a named departure from the reference code, which adds 1.0).
        max_iter: solver iterations in training (qpth's ``maxIter``).
        test_max_iter: solver iterations outside training (validation, test, predict). The reference's test.py
            uses 3; its validation inside train.py uses the training 15 (a departure: here validation uses this).
        double_precision: solve the QP in float64 (the reference's ``double_precision`` option, off by default).
        label_smoothing: epsilon of the training loss's smoothed targets, the reference's: 1 - eps on the true
            class and eps / (way - 1) on each other class (not ``F.cross_entropy``'s eps / way spread). Evaluation
            losses use plain cross-entropy, as the reference's validation.
        initial_scale: starting logit scale.
        embedding_batches: in training, ``reference`` (default) embeds the support images of all the
            meta-batch's episodes in one backbone pass and their queries in another, as the reference's train.py
            (its batch norm normalises each side by its own statistics); ``episode``: each episode's support and
            queries in one pass, what this method did before 2026-12-07.
    """

    #: the solver's float32 products need full precision: TF32 would blur the residuals the interior point reads
    tf32_by_default = False

    def __init__(
        self,
        *args: Any,
        c_reg: float = 0.1,
        qp_diagonal: float = 1.0,
        max_iter: int = 15,
        test_max_iter: int = 3,
        double_precision: bool = False,
        label_smoothing: float = 0.1,
        initial_scale: float = 1.0,
        embedding_batches: Literal["reference", "episode"] = "reference",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.embedding_batches = check_embedding_batches(embedding_batches, "MetaOptNet")
        if c_reg <= 0:
            raise ValueError(f"c_reg must be positive (the reference's 0.1), got {c_reg}.")
        if max_iter < 1 or test_max_iter < 1:
            raise ValueError(f"max_iter and test_max_iter must be at least 1, got {max_iter} and {test_max_iter}.")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
        self.c_reg, self.qp_diagonal = c_reg, qp_diagonal
        self.max_iter, self.test_max_iter = max_iter, test_max_iter
        self.double_precision, self.label_smoothing = double_precision, label_smoothing
        self.scale = nn.Parameter(torch.tensor(float(initial_scale)))

    def embed(self, images: Tensor) -> Tensor:
        return self.backbone(images).flatten(1).float()

    def fit_features(self, support_features: Tensor, support: SupportSet) -> SVMWeights:
        dtype = torch.float64 if self.double_precision else torch.float32
        # The solve stays out of autocast: an interior point needs its residuals in full precision.
        with torch.autocast(support_features.device.type, enabled=False):
            features = support_features.to(dtype)
            qp = crammer_singer_dual(features, support.labels, support.way, self.c_reg, self.qp_diagonal)
            iterations = self.max_iter if self.training else self.test_max_iter
            alpha = solve_qp(*qp, max_iter=iterations).view(len(features), support.way)
            return SVMWeights((alpha.T @ features).float())

    def score_features(self, state: SVMWeights, query_features: Tensor) -> Tensor:
        return self.scale * (query_features @ state.weights.T)

    def episode_loss(self, episode: Episode, logits: Tensor) -> Tensor:
        if not self.training or self.label_smoothing == 0:
            return F.cross_entropy(logits, episode.query_labels)
        way, eps = logits.shape[-1], self.label_smoothing
        targets = F.one_hot(episode.query_labels, way).to(logits.dtype)
        targets = targets * (1 - eps) + (1 - targets) * eps / (way - 1)
        return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


@dataclass(frozen=True)
class SVMWeights:
    """A fitted support set of MetaOptNet: the SVM's class weights w_m = sum_i alpha[i, m] x_i, [way, D]."""

    weights: Tensor


#: training steps in one epoch of the reference's schedule (train.py: 1000 batches of 8 episodes)
REFERENCE_STEPS_PER_EPOCH = 1000


def reference_lr_factor(step: int) -> float:
    """The reference's learning-rate factor at a training step (``LambdaLR(lr_lambda=...)``, stepped per step):
    train.py multiplies the initial 0.1 by 1 until epoch 20, 0.06 until 40, 0.012 until 50 and 0.0024 after,
    stepping its LambdaLR at the start of each epoch (epoch e, counted from 1, gets the factor of e)."""
    epoch = step // REFERENCE_STEPS_PER_EPOCH + 1
    return 1.0 if epoch < 20 else 0.06 if epoch < 40 else 0.012 if epoch < 50 else 0.0024
