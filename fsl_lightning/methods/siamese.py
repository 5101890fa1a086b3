"""Siamese Neural Networks for one-shot image recognition (Koch, Zemel & Salakhutdinov, ICML DL Workshop 2015)."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsl_lightning.data.pairs import balanced_pairs, random_affine
from fsl_lightning.episode import Episode, SupportSet
from fsl_lightning.methods.base import EmbeddingMethod, LabelledFeatures
from fsl_lightning.methods.functional import class_log_mean_exp
from fsl_lightning.methods.registry import registered
from fsl_lightning.run.errors import UserError


@registered
class Siamese(EmbeddingMethod):
    """Twin embeddings with shared weights; ``p(same) = sigmoid(sum_j alpha_j |h1_j - h2_j| + b)`` (eq. 1).

    Training is verification, not episode classification: the images of each training episode (support
    and queries) form balanced same/different pairs (:func:`fsl_lightning.data.pairs.balanced_pairs`),
    optionally distorted (:func:`fsl_lightning.data.pairs.random_affine`), scored with binary cross-entropy
    (``train/loss``); ``train/acc`` is the pair verification accuracy at ``p = 0.5``.

    N-way K-shot classification (section 4.2): each query is scored against every support image; a class
    gets the mean ``p(same)`` of its support images (K = 1: its one image, the paper's rule). The logits are
    the log of that mean, so the argmax is the paper's highest score and ``val/loss``/``test/loss`` are the
    cross-entropy of the normalised scores. :meth:`fit_support` keeps the support embeddings
    (:class:`~fsl_lightning.methods.base.LabelledFeatures`).

    Args:
        backbone, optimizer, lr_scheduler, scheduler_interval: see :class:`FewShotMethod`. The paper's twin is
            ``fsl_lightning.backbones.KochNet`` (105x105 images); ``Conv4`` is the 28x28 variant.
        embedding_dim: size of the backbone's flat embeddings (4096 for KochNet, 64 for Conv4 on 28x28).
        distort: draw Koch et al.'s random affine distortion for each image of each training pair.
        head_initialisation: ``koch`` (default): the prediction layer's weights alpha from N(0, 0.2) and its bias
            from N(0.5, 0.01), as section 3.2 initialises every fully connected layer; ``pytorch``: PyTorch's
            default for ``nn.Linear`` (uniform in +-1/sqrt(embedding_dim)), what this method used before
            2026-12-07 (the Omniglot figures of BENCHMARKS.md measured before then used it).
    """

    #: ``predict`` writes the verification probability p(same) of eq. 1 (mean over the class's support images)
    score_name = "same_class_probability"
    cpu_bf16_by_default = True  # measured: same accuracy (BENCHMARKS.md, "bf16 training keeps accuracy")

    def __init__(
        self,
        *args: Any,
        embedding_dim: int = 4096,
        distort: bool = False,
        head_initialisation: Literal["koch", "pytorch"] = "koch",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.embedding_dim = embedding_dim
        self.distort = distort
        # the learned weights alpha_j of the component-wise L1 distance, and the bias, before the sigmoid
        self.head = nn.Linear(embedding_dim, 1)
        if head_initialisation == "koch":
            nn.init.normal_(self.head.weight, 0.0, 0.2)
            nn.init.normal_(self.head.bias, 0.5, 0.01)
        elif head_initialisation != "pytorch":
            raise UserError(f"Siamese head_initialisation={head_initialisation!r}: use koch or pytorch.")

    def pair_logits(self, first: Tensor, second: Tensor) -> Tensor:
        """Logit of p(same) for pairs of embeddings: first and second [..., D] -> [...]."""
        return self.head((first - second).abs()).squeeze(-1)

    def fit_features(self, support_features: Tensor, support: SupportSet) -> LabelledFeatures:
        return LabelledFeatures(support_features, support.labels, support.way)

    def score_features(self, state: LabelledFeatures, query_features: Tensor) -> Tensor:
        logits = self.pair_logits(query_features.unsqueeze(1), state.features.unsqueeze(0))  # [Q, S]
        # log p(same) in log space (logsigmoid), so that very unlikely matches still rank
        return class_log_mean_exp(F.logsigmoid(logits.float()), state.labels, state.way)

    def prediction_scores(self, logits: Tensor) -> Tensor:
        """p(same) of each query and class (eq. 1; for K > 1 the mean over the class's support images), each in
        (0, 1) and not normalised over the classes: logits [Q, way] (its log) -> [Q, way]."""
        return logits.float().exp()

    def training_step(self, episode: Episode, batch_idx: int) -> Tensor:
        """Binary cross-entropy over balanced pairs of one episode, or of each episode of a meta-batch of T
        (``data.train_tasks_per_batch: T``): labels are episode-local, so pairs never cross episodes, and each
        episode goes through the backbone on its own, as one episode does."""
        tasks = [episode] if episode.num_tasks is None else [episode.task(t) for t in range(episode.num_tasks)]
        pairs = [self.training_pairs(*_images_and_labels(task)) for task in tasks]
        logits, same = torch.cat([logits for logits, _ in pairs]), torch.cat([same for _, same in pairs])
        # every episode gives the same number of pairs, so this is also the mean of the per-episode losses
        loss = F.binary_cross_entropy_with_logits(logits.float(), same)
        self.train_accuracy(((logits > 0).float() == same).float().mean())
        self.log("train/loss", loss, batch_size=len(same))
        self.log("train/acc", self.train_accuracy, batch_size=len(same))
        return loss

    def training_pairs(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Balanced pairs of the given images and their same-class targets.

        images [N, C, H, W], labels [N] -> (logits [2N], same [2N] in {0., 1.}). With ``distort``, the first
        and the second image of a pair get independent distortions.
        """
        first, second, same = balanced_pairs(labels)
        if self.distort:
            views = self.embed(torch.cat([random_affine(images), random_affine(images)]))
            first_embeddings, second_embeddings = views[: len(images)][first], views[len(images) :][second]
        else:  # one forward pass per image: an undistorted image has the same embedding in every pair
            embeddings = self.embed(images)
            first_embeddings, second_embeddings = embeddings[first], embeddings[second]
        return self.pair_logits(first_embeddings, second_embeddings), same

    def embed(self, images: Tensor) -> Tensor:
        embeddings = self.backbone(images)
        if embeddings.dim() != 2 or embeddings.shape[-1] != self.embedding_dim:
            raise ValueError(
                f"Siamese was built for flat embeddings of size embedding_dim={self.embedding_dim}, but the backbone "
                f"gives {tuple(embeddings.shape[1:])}: set embedding_dim to the backbone's output size "
                "(4096 for KochNet, 64 for Conv4 on 28x28 images)."
            )
        return embeddings


def _images_and_labels(episode: Episode) -> tuple[Tensor, Tensor]:
    """All images of one episode, support then queries, and their labels: [N, C, H, W] and [N]."""
    return (
        torch.cat([episode.support_images, episode.query_images]),
        torch.cat([episode.support_labels, episode.query_labels]),
    )
