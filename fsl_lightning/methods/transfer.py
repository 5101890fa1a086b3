"""Transfer: pre-train a classifier over all base classes, then solve each episode on the frozen features.

The two stages of Chen et al. 2019 ("A Closer Look") and Tian et al. 2020 ("Rethinking Few-Shot"), inside one
LightningModule: ``fit`` is stage 1 (standard mini-batches over the training classes, from a data module with
``pretrain_batch_size``; validated on few-shot episodes of the validation classes), and every evaluation
(``validate``, ``test``, ``predict``, the validation during ``fit``) is stage 2: the backbone embeds the
episode and an :mod:`~fsl_lightning.methods.episode_classifiers` classifier is fitted on its support set (the
fitted classifier is the state of :meth:`~fsl_lightning.methods.base.FewShotMethod.fit_support`).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsl_lightning.checkpoint_io import load_checkpoint_file
from fsl_lightning.data.augment import BatchAugmentation
from fsl_lightning.data.datasets.base import ClassImages
from fsl_lightning.episode import Episode, LabelledBatch, SupportSet
from fsl_lightning.methods.base import EmbeddingMethod
from fsl_lightning.methods.episode_classifiers import (
    EpisodeClassifier,
    LogisticRegression,
    chen_cosine_scale,
    weight_normalised_cosine,
)
from fsl_lightning.methods.feature_classifiers.base_features import EpisodeClassifierHooks, embed_in_batches
from fsl_lightning.methods.registry import registered
from fsl_lightning.run.errors import UserError


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


@registered
class Transfer(EpisodeClassifierHooks, EmbeddingMethod):
    """Supervised pre-training over the base classes, an episode classifier on frozen features at test.

    Used as it is, this is transfer learning: e.g. a torchvision backbone with ImageNet weights
    (:class:`~fsl_lightning.backbones.TorchvisionBackbone`), fine-tuned on the base classes, or frozen and
    only evaluated (``python -m fsl_lightning test`` without a checkpoint). Baseline, Baseline++, RFS and SKD
    are this method with their own heads, classifiers and losses.

    Args:
        backbone: the feature extractor, images -> [B, feature_dim].
        num_base_classes: classes of the training split; default: counted from the data module when ``fit``
            starts (a value given is checked against it). Saved with the weights, so that a checkpoint loads alone.
        feature_dim: the backbone's output size; default its ``out_features`` attribute, or else measured by a
            forward pass of two blank training-size images when ``fit`` starts.
        optimizer, lr_scheduler, scheduler_interval: see :class:`FewShotMethod`.
        base_classifier: ``linear`` or ``cosine`` (:class:`CosineClassifier`, scaled by ``cosine_scale``; default
            Chen et al.'s rule, 2 up to 200 base classes) head over the base classes.
        episode_classifier: fitted on each episode's support features; default :class:`LogisticRegression`.
        teacher_checkpoint: a checkpoint of the same network to distil from (born-again networks, RFS-distill;
            the shipped configs name the teacher run's ``last.ckpt``): the loss becomes
            ``(1 - w) * CE + w * T^2 * KL(teacher || student)`` at temperature T.
        distillation_weight: ``w`` above.
        temperature: ``T`` above.
        support_augmentation: at evaluation (validate, test, predict), the support set the episode classifier is
            fitted on becomes ``augmented_support_copies`` copies of each support image, each through this
            augmentation (seeded by the episode: the same episode gives the same copies), and no original: RFS's
            ``eval_fewshot.py`` (``--n_aug_support_samples 5``, its training transform), which SKD's evaluation
            uses too. Give it the training augmentation of the config. ``null``: the support images as they are.
        augmented_support_copies: the copies above (5, RFS's default).
    """

    trains_on_episodes = False
    base_head: nn.Module  # built by build_heads once the sizes are known (absent until then: hasattr tells)
    cpu_bf16_by_default = (
        True  # measured: pre-training keeps its accuracy (BENCHMARKS.md, "bf16 training keeps accuracy")
    )

    def __init__(
        self,
        *args: Any,
        num_base_classes: int | None = None,
        feature_dim: int | None = None,
        base_classifier: Literal["linear", "cosine"] = "linear",
        cosine_scale: float | None = None,
        episode_classifier: EpisodeClassifier | None = None,
        teacher_checkpoint: str | None = None,
        distillation_weight: float = 0.5,
        temperature: float = 4.0,
        support_augmentation: BatchAugmentation | None = None,
        augmented_support_copies: int = 5,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.num_base_classes = num_base_classes
        self.feature_dim = feature_dim or getattr(self.backbone, "out_features", None)
        self.base_classifier, self.cosine_scale = base_classifier, cosine_scale
        if base_classifier not in ("linear", "cosine"):
            raise ValueError(f"Unknown base_classifier {base_classifier!r}: use 'linear' or 'cosine'.")
        if num_base_classes is not None and self.feature_dim is not None:
            self.build_heads()
        self.episode_classifier = episode_classifier or self.default_episode_classifier()
        self.teacher_checkpoint = teacher_checkpoint
        self.distillation_weight = distillation_weight
        self.temperature = temperature
        if augmented_support_copies < 1:
            raise UserError(
                f"augmented_support_copies must be at least 1 (RFS uses 5), got {augmented_support_copies}."
            )
        self.support_augmentation, self.augmented_support_copies = support_augmentation, augmented_support_copies
        self._teacher: tuple[nn.Module, ...] = ()  # a tuple keeps it out of the state dict and the optimiser

    # a read-only property over FewShotMethod's class flag (read on classes too): mypy rejects that, though nothing
    # assigns the flag on an instance
    @property
    def needs_trained_weights(self) -> bool:  # type: ignore[override]
        """A frozen pretrained backbone evaluates as it is (the base-class head is for training only)."""
        return not getattr(self.backbone, "frozen", False)

    def default_episode_classifier(self) -> EpisodeClassifier:
        return LogisticRegression()

    # ----- stage 1: supervised pre-training ---------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = self.data
        if stage != "fit" or datamodule is None:
            return
        if not datamodule.pretrain_batch_size:
            raise UserError(
                f"{type(self).__name__} pre-trains on plain mini-batches of the training classes: set "
                "`data.pretrain_batch_size` (for example 64)."
            )
        if self.num_base_classes is not None and datamodule.num_train_classes != self.num_base_classes:
            raise UserError(
                f"num_base_classes is {self.num_base_classes} but the training split has "
                f"{datamodule.num_train_classes} classes: set `model.init_args.num_base_classes: "
                f"{datamodule.num_train_classes}` or leave it out (it is counted from the data)."
            )
        if not hasattr(self, "base_head"):  # built here, before the optimiser is made and the model moves
            self.num_base_classes = datamodule.num_train_classes
            self.feature_dim = self.feature_dim or measured_feature_dim(self.backbone, datamodule.splits["train"])
            self.build_heads()

    def base_head_sizes(self) -> tuple[int, int]:
        """``(feature_dim, num_base_classes)``, which every caller of :meth:`build_heads` knows first."""
        if self.feature_dim is None or self.num_base_classes is None:
            raise RuntimeError(
                f"{type(self).__name__}: the heads are built once feature_dim and num_base_classes are known, got "
                f"{self.feature_dim} and {self.num_base_classes}."
            )
        return self.feature_dim, self.num_base_classes

    def build_heads(self) -> None:
        """The head over the base classes (subclasses add theirs); the sizes are saved with the hyper-parameters."""
        feature_dim, num_base_classes = self.base_head_sizes()
        self.hparams.update(num_base_classes=self.num_base_classes, feature_dim=self.feature_dim)
        if self.base_classifier == "linear":
            self.base_head = nn.Linear(feature_dim, num_base_classes)
        else:
            self.base_head = CosineClassifier(feature_dim, num_base_classes, self.cosine_scale)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Builds the heads of a model made without their sizes, from the checkpoint's own weights (called before
        the weights load): ``test --ckpt_path`` needs neither ``num_base_classes`` nor ``feature_dim``."""
        super().on_load_checkpoint(checkpoint)
        weight = checkpoint["state_dict"].get("base_head.weight", checkpoint["state_dict"].get("base_head.direction"))
        if not hasattr(self, "base_head") and weight is not None:
            self.num_base_classes, self.feature_dim = weight.shape
            self.build_heads()

    def on_fit_start(self) -> None:
        if self.teacher_checkpoint and not self._teacher:
            self._teacher = (self._load_teacher(),)

    def training_step(self, batch: Episode | LabelledBatch, batch_idx: int) -> Tensor:
        if not isinstance(batch, LabelledBatch):  # setup() requires data.pretrain_batch_size: never an episode
            raise TypeError(f"{type(self).__name__} pre-trains on labelled mini-batches, got {type(batch).__name__}.")
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
        return (
            F.kl_div(
                F.log_softmax(student_logits / t, dim=-1),
                F.log_softmax(teacher_logits / t, dim=-1),
                reduction="batchmean",
                log_target=True,
            )
            * t
            * t
        )

    # ----- stage 2: episodes on frozen features -----------------------------------------------------------------
    def embed_base_split(self, split: ClassImages) -> Tensor:
        """The training split's features under the current weights (for classifiers that centre on base classes)."""
        return embed_in_batches(self.backbone, split.images, self.device)

    def embed(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            return self.backbone(images).float()

    def fit_support(self, support: SupportSet) -> Any:
        return super().fit_support(self.augmented_support(support))

    def episode_logits(self, episode: Episode) -> Tensor:
        if self.training or self.support_augmentation is None:
            return super().episode_logits(episode)
        # the augmented support set and the queries go through the backbone apart (eval mode: the same features)
        return self.score(self.fit_support(SupportSet.of(episode)), episode.query_images, episode.query_indices)

    def augmented_support(self, support: SupportSet) -> SupportSet:
        """At evaluation with a ``support_augmentation``: ``augmented_support_copies`` augmented copies of each
        support image (seeded by the episode's seed), with their labels; otherwise the support set unchanged."""
        if self.training or self.support_augmentation is None or not len(support.images):
            return support
        generator = torch.Generator(device=support.images.device).manual_seed(support.seed or 0)
        copies = [self.support_augmentation(support.images, generator) for _ in range(self.augmented_support_copies)]
        return replace(
            support, images=torch.cat(copies), labels=support.labels.repeat(self.augmented_support_copies), indices=None
        )

    def fit_features(self, support_features: Tensor, support: SupportSet) -> Any:
        """The episode classifier fitted on the support features; the episode's own seed drives any randomness of
        the fit (probe initialisation, mini-batch order)."""
        return self.episode_classifier.fit(support_features, support.labels, support.way, seed=support.seed)

    def score_features(self, state: Any, query_features: Tensor) -> Tensor:
        return self.episode_classifier.score(state, query_features)

    # ----- helpers ----------------------------------------------------------------------------------------------
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
        if not self.teacher_checkpoint:  # the teacher is loaded only when one is given
            raise ValueError(f"{type(self).__name__} has no teacher_checkpoint to load weights from.")
        path = Path(self.teacher_checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"teacher_checkpoint {path} does not exist: train the teacher first (e.g. the RFS-simple config) and "
                "point teacher_checkpoint at its checkpoint (the configs use its last.ckpt)."
            )
        state = load_checkpoint_file(path)["state_dict"]
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


def measured_feature_dim(backbone: nn.Module, training_split: ClassImages) -> int:
    """The size of ``backbone``'s output for two blank images of the training split's size (in eval mode, so that
    no batch-norm statistic moves)."""
    was_training = backbone.training
    blank = torch.zeros(2, *training_split.images.shape[1:])
    with torch.no_grad():
        size = backbone.eval()(blank).flatten(1).shape[1]
    backbone.train(was_training)
    return int(size)
