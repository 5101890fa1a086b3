"""DN4 (Li, Wang, Xu, Huo, Gao & Luo, CVPR 2019, "Revisiting Local Descriptor based Image-to-Class Measure for
Few-shot Learning"): images as sets of local descriptors, classes scored by an image-to-class k-NN measure."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fsl_lightning.episode import Episode, SupportSet
from fsl_lightning.methods.base import EmbeddingMethod, LabelledFeatures, check_embedding_batches
from fsl_lightning.methods.registry import registered


def local_descriptors(feature_maps: Tensor) -> Tensor:
    """The feature map's positions as descriptors: [B, C, h, w] -> [B, h * w, C]."""
    return feature_maps.flatten(2).transpose(1, 2)


def image_to_class_similarity(
    query_descriptors: Tensor, support_descriptors: Tensor, support_labels: Tensor, way: int, neighbours: int
) -> Tensor:
    """DN4's image-to-class measure (Li et al. 2019, eq. 1-2).

    For each query and class: the sum, over the query's local descriptors, of the cosine similarities to their
    ``neighbours`` nearest descriptors (by cosine) among all the local descriptors of the class's support images.
    Descriptors are L2-normalised one by one, as in the reference ``ImgtoClass_Metric`` (query and support alike).

    query_descriptors [Q, L, C], support_descriptors [S, M, C], support_labels [S] in ``0..way-1`` (any number of
    images per class) -> [Q, way].
    """
    queries = F.normalize(query_descriptors, dim=-1)
    support = F.normalize(support_descriptors, dim=-1)
    scores = []
    for label in range(way):  # a class's descriptors pooled over its images: the "class" of the measure
        class_descriptors = support[support_labels == label].flatten(0, 1)  # [n_c * M, C]
        if len(class_descriptors) < neighbours:
            raise ValueError(
                f"DN4 looks for {neighbours} nearest descriptors, but class {label} has {len(class_descriptors)} "
                "support descriptors: lower neighbours or give each class support images."
            )
        cosines = queries @ class_descriptors.T  # [Q, L, n_c * M]
        scores.append(cosines.topk(neighbours, dim=-1).values.sum(dim=(1, 2)))
    return torch.stack(scores, dim=1)


@registered
class DN4(EmbeddingMethod):
    """Deep Nearest Neighbor Neural Network: no global pooling, each image is the set of its local descriptors
    (the positions of the backbone's last feature map), and a query's score for a class is the image-to-class
    measure :func:`image_to_class_similarity`, trained end to end with cross-entropy on these scores (as the
    reference code, WenbinLee/DN4, without a temperature). :meth:`fit_support` keeps the support set's
    normalised descriptors (:class:`~fsl_lightning.methods.base.LabelledFeatures`, features [S, h*w, C]); each
    query is scored alone.

    The backbone must give feature maps [B, C, h, w]: the reference's Conv64F is
    ``fsl_lightning.backbones.Conv4`` with ``flatten: false, pooled_blocks: 2, negative_slope: 0.2`` (four
    conv-BN-LeakyReLU blocks, max pooling after the first two only: 7x7 descriptors on 28x28 Omniglot, 21x21 on
    84x84 images).

    Named departures from the reference code (the configs say which apply): convolutions keep PyTorch's default
    initialisation and bias (theirs: N(0, 0.02) weights, no bias before batch norm); batch norm keeps training
    after the first 10000 episodes (they switch the network to eval mode from their second epoch on);
    descriptors of norm 0 score 0 instead of NaN (``F.normalize``'s epsilon).

    Args:
        backbone, optimizer, lr_scheduler, scheduler_interval: see :class:`FewShotMethod`.
        neighbours: k, the nearest support descriptors each query descriptor counts (3, the paper's default).
        embedding_batches: in training, ``reference`` (default) embeds the queries in one backbone pass and each
            class's support images in a pass of their own, as the reference's ``forward`` (its batch norm
            normalises each pass by its own statistics); ``episode``: the whole episode in one pass, what this
            method did before 2026-12-07.
    """

    def __init__(
        self,
        *args: Any,
        neighbours: int = 3,
        embedding_batches: Literal["reference", "episode"] = "reference",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if neighbours < 1:
            raise ValueError(f"neighbours must be at least 1 (the paper's k = 3), got {neighbours}.")
        self.neighbours = neighbours
        self.embedding_batches = check_embedding_batches(embedding_batches, "DN4")

    def reference_training_logits(self, tasks: list[Episode]) -> list[Tensor]:
        return [self._logits_from_class_passes(task) for task in tasks]

    def _logits_from_class_passes(self, task: Episode) -> Tensor:
        """The queries in one backbone pass, then each class's support images in one pass each."""
        query_features = self.embed(task.query_images)
        by_class = [torch.nonzero(task.support_labels == label).flatten() for label in range(task.way)]
        class_features = torch.cat([self.embed(task.support_images[indices]) for indices in by_class])
        support_features = torch.empty_like(class_features)
        support_features[torch.cat(by_class)] = class_features  # back in the support set's order
        return self.score_features(self.fit_features(support_features, SupportSet.of(task)), query_features)

    def embed(self, images: Tensor) -> Tensor:
        feature_maps = self.backbone(images)
        if feature_maps.dim() != 4:
            raise ValueError(
                f"DN4 needs feature maps [B, C, h, w] from the backbone, got {tuple(feature_maps.shape)}: use a "
                "backbone that keeps them (Conv4 with flatten: false and pooled_blocks: 2, DN4's Conv64F)."
            )
        # Cosines in fp32 even under mixed precision: the measure sums hundreds of them.
        return local_descriptors(feature_maps.float())

    def fit_features(self, support_features: Tensor, support: SupportSet) -> LabelledFeatures:
        return LabelledFeatures(F.normalize(support_features, dim=-1), support.labels, support.way)

    def score_features(self, state: LabelledFeatures, query_features: Tensor) -> Tensor:
        return image_to_class_similarity(query_features, state.features, state.labels, state.way, self.neighbours)
