"""Transfer: pre-train a classifier over all base classes, then solve each episode on the frozen features.

The two stages of Chen et al. 2019 ("A Closer Look") and Tian et al. 2020 ("Rethinking Few-Shot"), inside one
LightningModule: ``fit`` is stage 1 (standard mini-batches over the training classes, from a data module with
``pretrain_batch_size``; validated on few-shot episodes of the validation classes), and every evaluation
(``validate``, ``test``, ``predict``, the validation during ``fit``) is stage 2: the backbone embeds the
episode and an :mod:`~fsl_lightning.methods.episode_classifiers` classifier is fitted on its support set.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from fsl_lightning.episode import Episode, LabelledBatch
from fsl_lightning.errors import UserError
from fsl_lightning.methods.base import FewShotMethod
from fsl_lightning.methods.episode_classifiers import (
    EpisodeClassifier,
    LogisticRegression,
    chen_cosine_scale,
    weight_normalised_cosine,
)


class CosineClassifier(nn.Module):
    """Baseline++'s classifier over the base classes (Chen et al. 2019, their ``distLinear``).

    Scores ``scale * g_c * cos(x, v_c)`` (:func:`weight_normalised_cosine`): a direction ``v_c`` initialised as
    ``nn.Linear``'s weight and a learned norm ``g_c`` starting at ``||v_c||`` (weight normalisation); features
    [B, D] -> [B, num_classes]. ``scale`` defaults to their rule (:func:`chen_cosine_scale`: 2 up to 200 classes).
    """

    def __init__(self, in_features: int, num_classes: int, scale: float | None = None) -> None:
        super().__init__()
        bound = 1 / in_features**0.5
        direction = torch.empty(num_classes, in_features).uniform_(-bound, bound)
        self.direction = nn.Parameter(direction)
        self.gain = nn.Parameter(direction.norm(dim=1))
        self.scale = chen_cosine_scale(num_classes) if scale is None else scale

    def forward(self, features: Tensor) -> Tensor:
        return weight_normalised_cosine(features, self.direction, self.gain, self.scale)


class Transfer(FewShotMethod):
    """Supervised pre-training over the base classes, an episode classifier on frozen features at test.

    Used as it is, this is transfer learning: e.g. a torchvision backbone with ImageNet weights
    (:class:`~fsl_lightning.backbones.TorchvisionBackbone`), fine-tuned on the base classes, or frozen and
    only evaluated (``python -m fsl_lightning test`` without a checkpoint). Baseline, Baseline++, RFS and SKD
    are this method with their own heads, classifiers and losses.

    Args:
        backbone: the feature extractor, images -> [B, feature_dim].
        num_base_classes: classes of the training split (checked against the data module).
        feature_dim: the backbone's output size; default its ``out_features`` attribute.
        optimizer, lr_scheduler, scheduler_interval: see :class:`FewShotMethod`.
        base_classifier: ``linear`` or ``cosine`` (:class:`CosineClassifier`, scaled by ``cosine_scale``; default
            Chen et al.'s rule, 2 up to 200 base classes) head over the base classes.
        episode_classifier: fitted on each episode's support features; default :class:`LogisticRegression`.
        teacher_checkpoint: a checkpoint of the same network to distil from (born-again networks, RFS-distill;
            the shipped configs name the teacher run's ``last.ckpt``): the loss becomes
            ``(1 - w) * CE + w * T^2 * KL(teacher || student)`` at temperature T.
        distillation_weight: ``w`` above.
        temperature: ``T`` above.
    """

    trains_on_episodes = False

    def __init__(
        self,
        backbone: nn.Module,
        num_base_classes: int,
        feature_dim: int | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["step", "epoch"] = "step",
        base_classifier: Literal["linear", "cosine"] = "linear",
        cosine_scale: float | None = None,
        episode_classifier: EpisodeClassifier | None = None,
        teacher_checkpoint: str | None = None,
        distillation_weight: float = 0.5,
        temperature: float = 4.0,
    ) -> None:
        super().__init__(backbone, optimizer, lr_scheduler, scheduler_interval)
        self.num_base_classes = num_base_classes
        self.feature_dim = feature_dim or _out_features(backbone)
        self.base_head = self._base_head(base_classifier, cosine_scale)
        self.episode_classifier = episode_classifier or self.default_episode_classifier()
        self.teacher_checkpoint = teacher_checkpoint
        self.distillation_weight = distillation_weight
        self.temperature = temperature
        self._teacher: tuple[nn.Module, ...] = ()  # a tuple keeps it out of the state dict and the optimiser

    def default_episode_classifier(self) -> EpisodeClassifier:
        return LogisticRegression()

    # ----- stage 1: supervised pre-training ---------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if stage != "fit" or datamodule is None or not hasattr(datamodule, "num_train_classes"):
            return
        if not datamodule.pretrain_batch_size:
            raise UserError(
                f"{type(self).__name__} pre-trains on plain mini-batches of the training classes: set "
                "`data.pretrain_batch_size` (for example 64)."
            )
        if datamodule.num_train_classes != self.num_base_classes:
            raise UserError(
                f"num_base_classes is {self.num_base_classes} but the training split has "
                f"{datamodule.num_train_classes} classes: set `model.init_args.num_base_classes: "
                f"{datamodule.num_train_classes}`."
            )

    def on_fit_start(self) -> None:
        if self.teacher_checkpoint and not self._teacher:
            self._teacher = (self._load_teacher(),)

    def training_step(self, batch: LabelledBatch, batch_idx: int) -> Tensor:
        loss, logits = self.pretraining_loss_and_logits(batch)
        self.train_accuracy((logits.argmax(dim=-1) == batch.labels).float().mean())
        self.log("train/loss", loss, batch_size=len(batch.labels))
        self.log("train/acc", self.train_accuracy, batch_size=len(batch.labels))
        return loss

    def pretraining_loss_and_logits(self, batch: LabelledBatch) -> tuple[Tensor, Tensor]:
        """The training loss of a mini-batch and its base-class logits [B, num_base_classes]."""
        logits = self.base_head(self.backbone(batch.images).float())
        return self.pretraining_loss(batch, logits), logits

    def pretraining_loss(self, batch: LabelledBatch, logits: Tensor) -> Tensor:
        """Cross-entropy over the base classes, mixed with distillation when a teacher is given."""
        loss = F.cross_entropy(logits, batch.labels)
        if not self._teacher:
            return loss
        with torch.no_grad():
            teacher_logits = self._teacher[0](batch.images).float()
        return (1 - self.distillation_weight) * loss + self.distillation_weight * self.distillation_loss(
            logits, teacher_logits
        )

    def distillation_loss(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        """Hinton et al.'s KL divergence between softened distributions, scaled by T^2 to keep gradients comparable."""
        t = self.temperature
        return F.kl_div(
            F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
            reduction="batchmean", log_target=True,
        ) * t * t

    # ----- stage 2: episodes on frozen features -----------------------------------------------------------------
    def episode_logits(self, episode: Episode) -> Tensor:
        num_support = len(episode.support_images)
        with torch.no_grad():
            features = self.backbone(torch.cat([episode.support_images, episode.query_images])).float()
        support, queries = features[:num_support], features[num_support:]
        # the episode's own seed drives any randomness of the fit (probe initialisation, mini-batch order)
        return self.episode_classifier(support, episode.support_labels, queries, episode.way, seed=episode.seed)

    # ----- helpers ----------------------------------------------------------------------------------------------
    def _base_head(self, kind: str, cosine_scale: float | None) -> nn.Module:
        if kind == "linear":
            return nn.Linear(self.feature_dim, self.num_base_classes)
        if kind == "cosine":
            return CosineClassifier(self.feature_dim, self.num_base_classes, cosine_scale)
        raise ValueError(f"Unknown base_classifier {kind!r}: use 'linear' or 'cosine'.")

    def _load_teacher(self) -> nn.Module:
        """The same network (backbone + base head) with the teacher checkpoint's weights, frozen, in eval mode."""
        # named like the student's own modules, so that the checkpoint's keys load as they are
        teacher = nn.Sequential(
            OrderedDict(backbone=copy.deepcopy(self.backbone), base_head=copy.deepcopy(self.base_head))
        )
        self._load_from_teacher_checkpoint(teacher, ("backbone.", "base_head."))
        return teacher.to(self.device).eval().requires_grad_(False)

    def _load_from_teacher_checkpoint(self, module: nn.Module, prefixes: tuple[str, ...]) -> None:
        """Load the teacher checkpoint's weights whose names start with ``prefixes`` into ``module``."""
        path = Path(self.teacher_checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"teacher_checkpoint {path} does not exist: train the teacher first (e.g. the RFS-simple config) and "
                "point teacher_checkpoint at its checkpoint (the configs use its last.ckpt)."
            )
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        wanted = {key: value for key, value in state.items() if key.startswith(prefixes)}
        try:
            result = module.load_state_dict(wanted, strict=False)  # other modules of ``module`` keep their weights
            missing = [key for key in result.missing_keys if key.startswith(prefixes)]
            if missing or result.unexpected_keys:
                raise RuntimeError(f"missing keys {missing}, unexpected keys {result.unexpected_keys}")
        except RuntimeError as error:
            raise ValueError(
                f"teacher_checkpoint {path} does not fit this network (born-again distillation needs the same "
                f"backbone and number of base classes): {error}"
            ) from error


def _out_features(backbone: nn.Module) -> int:
    size = getattr(backbone, "out_features", None)
    if not isinstance(size, int):
        raise ValueError(
            f"{type(backbone).__name__} does not say its output size (no `out_features`): set `feature_dim` "
            "(for example 1600 for Conv4 on 84x84 images)."
        )
    return size
