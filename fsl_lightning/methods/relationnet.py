"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr & Hospedales, CVPR 2018)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsl_lightning.backbones.conv4 import conv_block
from fsl_lightning.episode import Episode, SupportSet
from fsl_lightning.methods.base import EmbeddingMethod, check_embedding_batches
from fsl_lightning.methods.functional import class_sums
from fsl_lightning.methods.registry import registered
from fsl_lightning.run.errors import UserError


def reference_initialisation(module: nn.Module) -> None:
    """The reference code's ``weights_init`` for one module: convolutions N(0, sqrt(2 / n)) with n = k_h * k_w *
    out_channels and zero bias; batch norm weight 1, bias 0; linear layers N(0, 0.01) with bias 1."""
    if isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0.0, 0.01)
        nn.init.ones_(module.bias)


class RelationModule(nn.Module):
    """g_phi: two conv blocks and two fully connected layers, ending in a sigmoid relation score (fig. 2).

    pairs [P, 2 * feature_channels, s, s] (class map and query map concatenated on channels) -> scores [P]
    in (0, 1).

    Args:
        feature_channels: channels C of the embedding's feature maps (64).
        feature_size: side s of the embedding's feature maps (5 for RelationConv4 on 28x28 images).
        hidden_channels: filters of the two conv blocks (64).
        hidden_units: width of the first fully connected layer (8 in the paper).
    """

    def __init__(
        self, feature_channels: int = 64, feature_size: int = 5, hidden_channels: int = 64, hidden_units: int = 8
    ) -> None:
        super().__init__()
        pooled = feature_size // 2 // 2
        if pooled < 1:
            raise ValueError(f"feature_size={feature_size} is too small for two 2x2 poolings (needs at least 4).")
        self.feature_channels = feature_channels
        self.feature_size = feature_size
        self.convolutions = nn.Sequential(
            conv_block(2 * feature_channels, hidden_channels),
            conv_block(hidden_channels, hidden_channels),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(hidden_channels * pooled * pooled, hidden_units),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_units, 1),
        )

    def forward(self, pairs: Tensor) -> Tensor:
        return self.classifier(self.convolutions(pairs)).squeeze(-1).sigmoid()


@registered
class RelationNet(EmbeddingMethod):
    """Learned comparison: a relation module scores each (class, query) pair of feature maps (eq. 1-3).

    The class map is the sum of its support feature maps (eq. 2, K > 1), concatenated on channels with
    each query's map; scores are regressed to one-hot targets with a mean squared error (eq. 3), and the
    scores themselves are the logits for accuracy. :meth:`fit_support` keeps the class maps
    (:class:`ClassFeatureMaps`); in training and evaluation support and queries go through the backbone in one
    batch (:class:`~fsl_lightning.methods.base.EmbeddingMethod`). The backbone must return feature maps
    [B, C, s, s] with s >= 4 (``fsl_lightning.backbones.relation_conv4.RelationConv4``: 5x5 on 28x28 images; ``Conv4``
    with ``flatten: false`` keeps only 1x1 maps there, 5x5 on 84x84 images).

    As the reference code (floodsung/LearningToCompare_FSL, ``omniglot_train_one_shot.py``), the gradients of the
    embedding module and of the relation module are each clipped to norm 0.5 before every step, and both modules
    start from its ``weights_init``: convolutions N(0, sqrt(2 / (k * k * out_channels))) with zero bias, batch norm
    1 and 0, linear layers N(0, 0.01) with bias 1. A departure, named: evaluation here runs batch norm on its
    running statistics (eval mode), where the reference never leaves training mode and so normalises each
    evaluation batch (the support images, then the queries) by its own statistics; that would make every
    prediction depend on the other images of its batch (a single query could not be classified).

    Args:
        backbone, optimizer, lr_scheduler, scheduler_interval: see :class:`FewShotMethod`.
        feature_channels, feature_size, hidden_channels, hidden_units: see :class:`RelationModule`.
        module_gradient_clip_norm: the norm each module's gradient is clipped to (``null``: none), on top of any
            ``trainer.gradient_clip_val``.
        initialisation: ``reference`` (the reference's ``weights_init``, default) or ``pytorch`` (PyTorch's
            defaults, what this method used before 2026-12-07).
        embedding_batches: in training, ``reference`` (default) embeds the support images in one backbone
            pass and the queries in another, as the reference (its batch norm normalises each side by its own
            statistics); ``episode``: both in one pass, what this method did before 2026-12-07.
    """

    #: ``predict`` writes the relation score itself: a sigmoid output regressed to 0/1, not a normalised probability
    score_name = "relation_score"

    def __init__(
        self,
        *args: Any,
        feature_channels: int = 64,
        feature_size: int = 5,
        hidden_channels: int = 64,
        hidden_units: int = 8,
        module_gradient_clip_norm: float | None = 0.5,
        initialisation: Literal["reference", "pytorch"] = "reference",
        embedding_batches: Literal["reference", "episode"] = "reference",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.relation = RelationModule(feature_channels, feature_size, hidden_channels, hidden_units)
        self.module_gradient_clip_norm = module_gradient_clip_norm
        self.embedding_batches = check_embedding_batches(embedding_batches, "RelationNet")
        if initialisation == "reference":
            for module in (*self.backbone.modules(), *self.relation.modules()):
                reference_initialisation(module)
        elif initialisation != "pytorch":
            raise UserError(f"RelationNet initialisation={initialisation!r}: use reference or pytorch.")

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """The trainer's clipping (if any), then each module's gradient clipped to ``module_gradient_clip_norm``, as
        the reference clips the embedding and the relation module separately."""
        if gradient_clip_val is not None:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        if self.module_gradient_clip_norm is not None:
            for module in (self.backbone, self.relation):
                torch.nn.utils.clip_grad_norm_(module.parameters(), self.module_gradient_clip_norm)

    def embed(self, images: Tensor) -> Tensor:
        features = self.backbone(images)
        self._check_feature_maps(features)
        return features

    def fit_features(self, support_features: Tensor, support: SupportSet) -> ClassFeatureMaps:
        return ClassFeatureMaps(class_sums(support_features, support.labels, support.way))  # [way, C, s, s]

    def score_features(self, state: ClassFeatureMaps, query_features: Tensor) -> Tensor:
        way = len(state.maps)
        return self.relation(concatenate_pairs(state.maps, query_features)).view(len(query_features), way)

    def episode_loss(self, episode: Episode, logits: Tensor) -> Tensor:
        """Mean squared error of the relation scores to the one-hot query labels (eq. 3)."""
        targets = F.one_hot(episode.query_labels, episode.way).to(logits.dtype)
        return F.mse_loss(logits, targets)

    def prediction_scores(self, logits: Tensor) -> Tensor:
        """The relation scores r_{i,j} in (0, 1) (eq. 1), unchanged: logits [Q, way] -> [Q, way]. They do not sum
        to 1 over the classes, and a softmax of them would squash every score towards 1 / way."""
        return logits.float()

    def _check_feature_maps(self, features: Tensor) -> None:
        expected = (self.relation.feature_channels, self.relation.feature_size, self.relation.feature_size)
        if features.dim() != 4 or tuple(features.shape[1:]) != expected:
            raise ValueError(
                f"RelationNet expects backbone feature maps [B, {expected[0]}, {expected[1]}, {expected[2]}] "
                f"(feature_channels, feature_size), got {tuple(features.shape)}: use a backbone that keeps spatial "
                "maps of side 4 or more (RelationConv4; Conv4 with flatten: false on 84x84 images) and set "
                "feature_size to its output side."
            )


@dataclass(frozen=True)
class ClassFeatureMaps:
    """A fitted support set of RelationNet: the sum of each class's support feature maps, [way, C, s, s] (eq. 2)."""

    maps: Tensor


def concatenate_pairs(classes: Tensor, queries: Tensor) -> Tensor:
    """Every (query, class) pair of maps, concatenated on channels as [class, query] (eq. 1).

    classes [N, C, s, s], queries [Q, C, s, s] -> [Q * N, 2C, s, s], query-major (row q * N + n).
    """
    num_queries, num_classes = len(queries), len(classes)
    classes = classes.unsqueeze(0).expand(num_queries, -1, -1, -1, -1)
    queries = queries.unsqueeze(1).expand(-1, num_classes, -1, -1, -1)
    return torch.cat([classes, queries], dim=2).flatten(0, 1)
