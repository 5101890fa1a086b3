"""FEAT (Ye, Hu, Zhan & Sha, CVPR 2020, "Few-Shot Learning via Embedding Adaptation with Set-to-Set Functions"):
class prototypes adapted together by a Transformer, with a contrastive regulariser in training."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsl_lightning.episode import Episode, SupportSet
from fsl_lightning.methods.base import EmbeddingMethod, Prototypes
from fsl_lightning.methods.functional import class_prototypes, squared_euclidean_distance
from fsl_lightning.methods.registry import registered
from fsl_lightning.run.weights_from import load_backbone_weights


class SetToSetAttention(nn.Module):
    """FEAT's set-to-set function: one-head scaled dot-product self-attention over a set, with a residual
    connection, layer norm and dropout, as ``MultiHeadAttention(1, d, d, d, dropout=0.5)`` of the reference
    (Sha-Lab/FEAT, ``model/models/feat.py``)::

        A = dropout_a(softmax(Q K^T / sqrt(d))),   Q, K, V = x W_q, x W_k, x W_v (no bias)
        out = LayerNorm(x + dropout(fc(A V)))

    with the reference's initialisation: W_q, W_k, W_v ~ N(0, 2 / (d + d)), fc's weight Xavier-normal.
    Sets [B, N, d] -> [B, N, d]; each set is adapted on its own, and the function is permutation-equivariant.

    Args:
        dim: d, the embedding size (64 for Conv4 on 28x28 Omniglot, 1600 on 84x84 images).
        attention_dropout: dropout on the attention weights (0.1, the reference's).
        dropout: dropout on fc's output before the residual (0.5, the reference's for FEAT).
    """

    def __init__(self, dim: int, attention_dropout: float = 0.1, dropout: float = 0.5) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        for projection in (self.query, self.key, self.value):
            nn.init.normal_(projection.weight, mean=0.0, std=math.sqrt(2.0 / (dim + dim)))
        self.fc = nn.Linear(dim, dim)
        nn.init.xavier_normal_(self.fc.weight)
        self.layer_norm = nn.LayerNorm(dim)
        self.attention_dropout = nn.Dropout(attention_dropout)
        self.dropout = nn.Dropout(dropout)
        self.scale = math.sqrt(dim)

    def forward(self, sets: Tensor) -> Tensor:
        attention = (self.query(sets) @ self.key(sets).transpose(1, 2) / self.scale).softmax(dim=-1)  # [B, N, N]
        attended = self.attention_dropout(attention) @ self.value(sets)
        return self.layer_norm(sets + self.dropout(self.fc(attended)))


def adapted_class_centres(set_function: nn.Module, features: Tensor, labels: Tensor, way: int) -> Tensor:
    """FEAT's regulariser's centres: all the instances of each class (support and queries) adapted together as one
    set, then averaged. features [N, d], labels [N] in ``0..way-1`` -> [way, d]."""
    return torch.stack([set_function(features[labels == label].unsqueeze(0))[0].mean(dim=0) for label in range(way)])


def contrastive_regulariser(
    set_function: nn.Module, features: Tensor, labels: Tensor, way: int, temperature2: float
) -> Tensor:
    """FEAT's contrastive regulariser (Ye et al. 2020, Sec. 4.3, eq. 9; ``logits_reg`` of the reference):
    cross-entropy of every instance, as embedded (not adapted), against the adapted class centres
    (:func:`adapted_class_centres`), scored by ``-||x - centre||^2 / temperature2``. features [N, d], labels [N]."""
    centres = adapted_class_centres(set_function, features, labels, way)
    return F.cross_entropy(-squared_euclidean_distance(features, centres) / temperature2, labels)


@registered
class FEAT(EmbeddingMethod):
    """Few-shot Embedding Adaptation with Transformer: the class prototypes (support means) are adapted together by
    :class:`SetToSetAttention`, and a query scores ``-||f(q) - adapted prototype||^2 / temperature`` (the
    paper's Euclidean variant, the reference's ``--use_euclidean``). In training the loss adds ``balance`` times
    :func:`contrastive_regulariser` over the episode's support and query instances.

    :meth:`fit_support` keeps the adapted prototypes (:class:`~fsl_lightning.methods.base.Prototypes`); queries
    are scored alone. The Transformer's parameters learn ``head_lr_multiplier`` times faster than the backbone's
    (the reference's ``lr_mul``, 10).

    Starting from pre-trained weights: the reference meta-trains from a backbone pre-trained as a classifier over
    the base classes (``--init_weights``). Here ``backbone_checkpoint`` names a checkpoint of another run (a
    :class:`~fsl_lightning.methods.Transfer` pre-training such as ``experiments/omniglot/feat_pretrain.yaml``, or
    any method with the same backbone): its ``backbone.*`` weights are loaded when ``fit`` starts, the other
    weights (its head; FEAT's Transformer) are not. A run resumed with ``--ckpt_path`` or started with
    ``--weights_from`` (a FEAT checkpoint) keeps the weights it restores; ``backbone_checkpoint: null`` trains
    from scratch.

    Args:
        backbone, optimizer, lr_scheduler, scheduler_interval: see :class:`FewShotMethod`; the backbone's output
            is flattened.
        feature_dim: d, the backbone's output size (64 for Conv4 on 28x28 images).
        temperature: divides the query logits (64, the reference's ConvNet 5-way 1-shot command).
        temperature2: divides the regulariser's logits (16, the same command).
        balance: weight of the regulariser (1, the same command; 0 turns it off, the reference's argparse
            default, which also leaves temperature and temperature2 at 1).
        head_lr_multiplier: the Transformer's learning rate over the backbone's (the reference's ``lr_mul``).
        attention_dropout, dropout: see :class:`SetToSetAttention`.
        backbone_checkpoint: the checkpoint whose ``backbone.*`` weights start the backbone (see above).
    """

    def __init__(
        self,
        *args: Any,
        feature_dim: int = 64,
        temperature: float = 64.0,
        temperature2: float = 16.0,
        balance: float = 1.0,
        head_lr_multiplier: float = 10.0,
        attention_dropout: float = 0.1,
        dropout: float = 0.5,
        backbone_checkpoint: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if temperature <= 0 or temperature2 <= 0:
            raise ValueError(f"temperature and temperature2 must be positive, got {temperature}, {temperature2}.")
        self.set_function = SetToSetAttention(feature_dim, attention_dropout, dropout)
        self.temperature, self.temperature2, self.balance = temperature, temperature2, balance
        self.head_lr_multiplier = head_lr_multiplier
        self.backbone_checkpoint = backbone_checkpoint
        self._weights_restored = False

    # ----- fitting and scoring ----------------------------------------------------------------------------------
    def embed(self, images: Tensor) -> Tensor:
        # Distances in fp32 even under mixed precision, as ProtoNet.
        return self.backbone(images).flatten(1).float()

    def fit_features(self, support_features: Tensor, support: SupportSet) -> Prototypes:
        prototypes = class_prototypes(support_features, support.labels, support.way)
        return Prototypes(self.set_function(prototypes.unsqueeze(0))[0])

    def score_features(self, state: Prototypes, query_features: Tensor) -> Tensor:
        return -squared_euclidean_distance(query_features, state.prototypes) / self.temperature

    # ----- training ---------------------------------------------------------------------------------------------
    def training_step(self, episode: Episode, batch_idx: int) -> Tensor:
        """The mean over the batch's episodes of ``cross-entropy + balance * regulariser`` (one episode unless
        ``data.train_tasks_per_batch``); support and queries of an episode go through the backbone in one batch."""
        tasks = [episode] if episode.num_tasks is None else [episode.task(t) for t in range(episode.num_tasks)]
        losses, regularisers, accuracies = [], [], []
        for task in tasks:
            features = self.embed(torch.cat([task.support_images, task.query_images]))
            support = SupportSet.of(task)
            logits = self.score_features(
                self.fit_features(features[: len(task.support_images)], support), features[len(task.support_images) :]
            )
            labels = torch.cat([task.support_labels, task.query_labels])
            regulariser = contrastive_regulariser(self.set_function, features, labels, task.way, self.temperature2)
            losses.append(self.episode_loss(task, logits) + self.balance * regulariser)
            regularisers.append(regulariser)
            accuracies.append(self._accuracy(logits, task))
        loss = torch.stack(losses).mean()
        self.train_accuracy(torch.stack(accuracies).mean())
        queries = episode.query_labels.numel()
        self.log("train/loss", loss, batch_size=queries)
        self.log("train/regulariser", torch.stack(regularisers).mean(), batch_size=queries)
        self.log("train/acc", self.train_accuracy, batch_size=queries)
        return loss

    def configure_optimizers(self) -> Any:
        """The backbone at the optimiser's learning rate, the Transformer at ``head_lr_multiplier`` times it."""
        head = [parameter for name, parameter in self.named_parameters() if not name.startswith("backbone.")]
        optimizer = self.optimizer_factory([{"params": list(self.backbone.parameters())}, {"params": head}])
        optimizer.param_groups[1]["lr"] = optimizer.param_groups[1]["lr"] * self.head_lr_multiplier
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)  # built after: it records each group's own starting rate
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}

    # ----- starting from pre-trained weights --------------------------------------------------------------------
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self._weights_restored = True  # --weights_from: these weights win over backbone_checkpoint

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and self.backbone_checkpoint and not self._weights_restored:
            load_backbone_weights(
                self.backbone,
                Path(self.backbone_checkpoint).expanduser(),
                "backbone_checkpoint",
                "Run the pre-training config first (its last.ckpt), or set backbone_checkpoint: null to train from "
                "scratch.",
            )
