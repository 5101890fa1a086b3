"""Meta-Baseline (Chen, Liu, Xu, Darrell & Wang, ICCV 2021, "Meta-Baseline: Exploring Simple Meta-Learning for
Few-Shot Learning", reference code yinboc/few-shot-meta-baseline).

Two stages, two runs:

1. :class:`ClassifierBaseline`: the transfer family's pre-training (:class:`~fsl_lightning.methods.transfer.
   Transfer`: a linear classifier over all base classes, cross-entropy on plain mini-batches), evaluated by the
   cosine nearest centroid (:class:`CosineCentroid`).
2. :class:`MetaBaseline`: the stage-1 backbone (``classifier_baseline_checkpoint``) meta-trained on episodes with
   that same nearest-centroid rule as its classifier, ``tau * cos(query, class mean)`` with a learned ``tau``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fsl_lightning.episode import Episode, SupportSet
from fsl_lightning.methods.base import EmbeddingMethod, Prototypes
from fsl_lightning.methods.episode_classifiers import EpisodeClassifier
from fsl_lightning.methods.functional import class_prototypes, cosine_similarity_matrix
from fsl_lightning.methods.registry import registered
from fsl_lightning.methods.transfer import Transfer
from fsl_lightning.run.errors import UserError
from fsl_lightning.run.weights_from import load_backbone_weights

#: the reference's initial (and, for the Classifier-Baseline's evaluation, fixed) temperature ``temp``
REFERENCE_TAU = 10.0
#: the config that trains stage 1, named in the errors of stage 2
STAGE_ONE_CONFIG = "experiments/<dataset>/meta_baseline_stage1.yaml"


def centroid_cosine_logits(query_features: Tensor, prototypes: Tensor, tau: Tensor | float) -> Tensor:
    """Meta-Baseline's classifier: ``tau * cos(query, prototype)``; queries [Q, D], prototypes [way, D] -> [Q, way].

    The prototypes are the class means of the raw support features, normalised only when compared (the
    reference's ``method='cos'``: mean, then L2-normalise), unlike
    :class:`~fsl_lightning.methods.episode_classifiers.NearestCentroid`, which averages normalised features
    (the two differ for K > 1).
    """
    return tau * cosine_similarity_matrix(query_features, prototypes)


class CosineCentroid(EpisodeClassifier):
    """The Classifier-Baseline's evaluation: :func:`centroid_cosine_logits` at a fixed ``scale`` (the reference's
    initial 10; the scale does not change which class wins). Nothing to fit but the class means."""

    def __init__(self, scale: float = REFERENCE_TAU) -> None:
        self.scale = scale

    def fit_state(self, support: Tensor, support_labels: Tensor, way: int, generator: torch.Generator) -> Prototypes:
        return Prototypes(class_prototypes(support, support_labels, way))

    def score_state(self, state: Prototypes, queries: Tensor) -> Tensor:
        return centroid_cosine_logits(queries, state.prototypes, self.scale)


@registered
class ClassifierBaseline(Transfer):
    """Stage 1 of Meta-Baseline: a backbone and a linear classifier over all base classes, trained with
    cross-entropy on plain mini-batches (``data.pretrain_batch_size``); each episode is then solved by the cosine
    nearest centroid on the frozen features (:class:`CosineCentroid`). This is :class:`~fsl_lightning.methods.
    transfer.Transfer` (``base_classifier: linear``) with that episode classifier; the reference trains it with
    SGD lr 0.1, momentum 0.9, weight decay 5e-4, batches of 128, 100 epochs with a x0.1 decay at epoch 90
    (their miniImageNet config). Arguments as :class:`~fsl_lightning.methods.transfer.Transfer`.
    """

    def default_episode_classifier(self) -> EpisodeClassifier:
        return CosineCentroid()


@registered
class MetaBaseline(EmbeddingMethod):
    """Stage 2 of Meta-Baseline: the Classifier-Baseline's backbone meta-trained on episodes.

    Prototypes are the class means of the support features; a query scores ``tau * cos(f(q), prototype)``
    (:func:`centroid_cosine_logits`); the loss is the cross-entropy over the queries. ``tau`` is a learned scalar
    starting at 10, as the reference (``temp=10., temp_learnable=True``); it is one of the model's parameters,
    so the optimiser's weight decay applies to it too, as in the reference.

    A training batch of T episodes (``data.train_tasks_per_batch``; the reference's ``ep_per_batch: 4``) is
    embedded in ONE backbone pass, as the reference does: in training mode batch norm normalises with the
    statistics of all T episodes. The loss is the mean over the T episodes. The reference trains with SGD lr
    0.001, momentum 0.9, weight decay 5e-4, no schedule (20 epochs of 200 batches of 4 episodes on
    miniImageNet); the shipped configs say so.

    Args:
        backbone: the embedding network; the same architecture as the stage-1 run's.
        classifier_baseline_checkpoint: the stage-1 checkpoint (a :class:`ClassifierBaseline` run's ``last.ckpt``,
            or any checkpoint whose ``backbone.*`` weights fit this backbone) whose backbone weights ``fit``
            starts from (read when fitting starts). Required by ``fit``, unless the weights come from a checkpoint
            of this method: a resumed run (``--ckpt_path``) or ``--weights_from`` keeps that checkpoint's weights.
        tau: the initial temperature (reference 10).
        learn_tau: whether ``tau`` is learned (reference ``True``); ``False`` keeps it fixed (a buffer).
        optimizer, lr_scheduler, scheduler_interval: see :class:`~fsl_lightning.methods.base.FewShotMethod`.
    """

    def __init__(
        self,
        *args: Any,
        classifier_baseline_checkpoint: str | None = None,
        tau: float = REFERENCE_TAU,
        learn_tau: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.classifier_baseline_checkpoint = classifier_baseline_checkpoint
        if learn_tau:
            self.tau = nn.Parameter(torch.tensor(float(tau)))
        else:
            self.register_buffer("tau", torch.tensor(float(tau)))
        # whether the backbone already holds the weights to train from: a checkpoint's (--weights_from, --ckpt_path)
        # or stage 1's, loaded by an earlier fit of this model
        self._has_starting_weights = False

    # ----- the classifier ---------------------------------------------------------------------------------------
    def embed(self, images: Tensor) -> Tensor:
        # Cosines in fp32 even under mixed precision.
        return self.backbone(images).float()

    def fit_features(self, support_features: Tensor, support: SupportSet) -> Prototypes:
        return Prototypes(class_prototypes(support_features, support.labels, support.way))

    def score_features(self, state: Prototypes, query_features: Tensor) -> Tensor:
        return centroid_cosine_logits(query_features, state.prototypes, self.tau)

    def training_logits(self, episode: Episode, tasks: list[Episode]) -> list[Tensor]:
        """Every image of the T episodes embedded in one backbone pass (the reference's batch-norm statistics),
        then each episode's prototypes and query logits."""
        if episode.num_tasks is None:
            return [self.episode_logits(episode)]
        features = self.embed(torch.cat([torch.cat([task.support_images, task.query_images]) for task in tasks]))
        sizes = [len(task.support_images) + len(task.query_images) for task in tasks]
        logits = []
        for task, task_features in zip(tasks, features.split(sizes)):
            shots = len(task.support_images)
            state = self.fit_features(task_features[:shots], SupportSet.of(task))
            logits.append(self.score_features(state, task_features[shots:]))
        return logits

    # ----- starting from stage 1 --------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        # Called after Lightning restores a resumed run (``--ckpt_path``) and after ``--weights_from``: both load a
        # checkpoint (``on_load_checkpoint``), whose weights then stand. Stage 1 is read once per model.
        if not self._has_starting_weights:
            self.load_classifier_baseline()
            self._has_starting_weights = True

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self._has_starting_weights = True

    def load_classifier_baseline(self) -> None:
        """Copies the stage-1 checkpoint's backbone weights into the backbone; refuses, saying what to pass, when
        the checkpoint is not given, missing, unreadable, or from another backbone."""
        if not self.classifier_baseline_checkpoint:
            raise UserError(
                "MetaBaseline meta-trains the backbone of a Classifier-Baseline: set "
                "`model.init_args.classifier_baseline_checkpoint` to the last.ckpt of a ClassifierBaseline run "
                f"(stage 1, {STAGE_ONE_CONFIG})."
            )
        load_backbone_weights(
            self.backbone,
            Path(self.classifier_baseline_checkpoint).expanduser(),
            "classifier_baseline_checkpoint",
            f"Train stage 1 first ({STAGE_ONE_CONFIG}, `fit`) and point classifier_baseline_checkpoint at its "
            "last.ckpt (edit the version if needed).",
        )
