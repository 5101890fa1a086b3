"""SKD (Rajasegaran, Khan, Hayat, Khan & Shah, 2020, "Self-supervised Knowledge Distillation for Few-shot
Learning"): rotation prediction added to pre-training."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsl_lightning.episode import LabelledBatch
from fsl_lightning.methods.rfs import RFSSimple

ROTATIONS = 4  # 0, 90, 180, 270 degrees


def rotated_copies(images: Tensor) -> tuple[Tensor, Tensor]:
    """Every image in its four rotations: images [B, C, H, W] (square) -> [4B, C, H, W] (all 0-degree copies
    first, then 90, 180, 270) and the rotation labels [4B]."""
    copies = torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(ROTATIONS)])
    labels = torch.arange(ROTATIONS, device=images.device).repeat_interleave(len(images))
    return copies, labels


class SKD(RFSSimple):
    """Generation 0: the base-class loss plus ``rotation_loss_weight`` times the cross-entropy of a head that
    predicts each image's rotation from the features of its four rotated copies; the base-class loss is taken
    on the unrotated copies. Generation 1: the same with ``teacher_checkpoint`` set to a generation-0 run
    (distillation, see :class:`~fsl_lightning.methods.transfer.Transfer`). Episodes as RFS: logistic
    regression on normalised features. Images must be square.

    Args:
        rotation_loss_weight: weight of the rotation loss (SKD's ``alpha``).
        other arguments: as :class:`~fsl_lightning.methods.transfer.Transfer`.
    """

    def __init__(self, *args: Any, rotation_loss_weight: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rotation_loss_weight = rotation_loss_weight
        self.rotation_head = nn.Sequential(
            nn.Linear(self.feature_dim, self.feature_dim), nn.ReLU(), nn.Linear(self.feature_dim, ROTATIONS)
        )

    def pretraining_loss_and_logits(self, batch: LabelledBatch) -> tuple[Tensor, Tensor]:
        # One backbone pass over all four rotations; the unrotated copies come first.
        images, rotation_labels = rotated_copies(batch.images)
        features = self.backbone(images).float()
        logits = self.base_head(features[: len(batch.labels)])
        rotation_loss = F.cross_entropy(self.rotation_head(features), rotation_labels)
        self.log("train/rotation_loss", rotation_loss, batch_size=len(batch.labels))
        return self.pretraining_loss(batch, logits) + self.rotation_loss_weight * rotation_loss, logits
