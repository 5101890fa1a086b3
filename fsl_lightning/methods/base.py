"""FewShotMethod: what every few-shot method shares (loss, metrics, logging, optimisers, prediction)."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.functional.classification import multiclass_accuracy

from fsl_lightning.backbones.batch_norm_folding import batch_norm_folded
from fsl_lightning.data.method_data import MethodData, method_data
from fsl_lightning.episode import Episode, SupportSet
from fsl_lightning.methods.metrics import AccuracySummary, EpisodeAccuracy
from fsl_lightning.methods.score_calibration import CHECKPOINT_KEY, ScoreCalibration, ScoreCalibrationFit
from fsl_lightning.run.built_by_cli import built_by_cli, drop_live_objects
from fsl_lightning.run.errors import UserError


class FewShotMethod(L.LightningModule):
    """Base class of every method: subclasses implement :meth:`fit_support` and :meth:`score` (and may override the
    loss); :meth:`episode_logits` composes them for training and evaluation.

    ``fit_support(SupportSet) -> state`` fits one support set (the state is a small typed object of the method's
    family: prototypes, adapted fast weights, a fitted probe, support embeddings...), and ``score(state,
    query_images) -> logits [Q, way]`` scores queries against it. Both are pure, nothing is kept on the module
    between calls, so batches of episodes, DDP and ``torch.func`` keep working, and ``predict`` and
    :class:`~fsl_lightning.classifier.FewShotClassifier` fit a support set once and score its queries in batches.
    A method that is not :attr:`transductive` scores each query alone: its queries scored in parts give the
    logits of the queries scored together.

    Args:
        backbone: the embedding network (any ``nn.Module``, e.g. ``fsl_lightning.backbones.Conv4``).
        optimizer: builds the optimiser from the parameters (LightningCLI: ``class_path`` + ``init_args``).
        lr_scheduler: optional; builds a scheduler from the optimiser.
        scheduler_interval: ``step`` (per training episode) or ``epoch``.
    """

    #: whether ``speed.tf32`` is on when the config leaves it unset (see :class:`~fsl_lightning.callbacks.SpeedSettings`)
    tf32_by_default: bool = True
    #: whether training on a CPU with bf16 units (AMX, AVX512-BF16) defaults to bf16 autocast (``speed.cpu_bf16``):
    #: only for methods whose accuracy was measured unchanged by it (BENCHMARKS.md, "bf16 training keeps accuracy")
    cpu_bf16_by_default: bool = False
    #: whether the weights are kept channels-last on the CPU by default (``speed.channels_last``)
    cpu_channels_last_by_default: bool = True
    #: why ``speed.compile`` cannot apply to this method, or ``None`` when it can
    not_compilable_because: str | None = None
    #: whether training batches are episodes; ``False`` for the transfer family, which pre-trains on plain
    #: mini-batches of labelled images (``data.pretrain_batch_size``)
    trains_on_episodes: bool = True
    #: what :meth:`prediction_scores` means: the header of the score column in ``predict``'s CSV
    score_name: str = "probability"
    #: whether ``validate``, ``test`` and ``predict`` need trained weights (``--ckpt_path``); ``False`` for
    #: methods with nothing to train (1-NN, a frozen pretrained backbone), which evaluate as they are built
    needs_trained_weights: bool = True
    #: whether the method can classify from class names alone, without support images (``predict`` with
    #: ``data.predict_class_names``): CLIP's zero-shot and few-shot methods
    supports_zero_shot: bool = False

    def __init__(
        self,
        backbone: nn.Module,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["step", "epoch"] = "step",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=[] if built_by_cli() else ["backbone", "optimizer", "lr_scheduler"])
        if not built_by_cli():
            drop_live_objects(self.hparams)
        self.backbone = backbone
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.scheduler_interval = scheduler_interval
        # No NaN checks and no input validation in the step: each would synchronise the host with the GPU.
        self.train_accuracy = MeanMetric(nan_strategy="disable")
        self.val_accuracy = EpisodeAccuracy(nan_strategy="disable")
        self.test_accuracy = EpisodeAccuracy(nan_strategy="disable")
        # The evaluation loss, mean over queries: a metric updated per episode and logged once per epoch, because a
        # `self.log` per episode was about 5% of the test loop of a Conv4 on the CPU (cProfile of `test`).
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.test_loss = MeanMetric(nan_strategy="disable")
        self.last_accuracy: dict[str, AccuracySummary] = {}
        # The temperature and outlier threshold of the scores, fitted on each validation (score_calibration.py) and
        # saved in checkpoints; None until a validation has run, or for a checkpoint without one.
        self.val_calibration = ScoreCalibrationFit()
        self.score_calibration: ScoreCalibration | None = None
        self._predict_support_state: Any = None  # the user's support set, fitted once per predict run
        # The trained backbone while an evaluation copy stands in for it (a list: not registered as a submodule).
        self._trained_backbone: list[nn.Module] = []

    @property
    def transductive(self) -> bool:
        """Whether :meth:`score` reads the queries it is given together (each query's logits depend on the others),
        so that its numbers assume all the queries of an episode arrive at once. A property: for some methods it
        depends on their settings (MAML's batch norm, the episode classifier of the feature methods)."""
        return False

    @property
    def data(self) -> MethodData | None:
        """The trainer's data module, through the part of it methods may read (:class:`MethodData`); None when the
        method runs without a trainer or with a data module of another kind."""
        return method_data(self._trainer)

    def setup(self, stage: str) -> None:
        batch_size = self.data.pretrain_batch_size if self.data is not None else None
        if stage == "fit" and self.trains_on_episodes and batch_size:
            raise UserError(
                f"{type(self).__name__} trains on episodes, but data.pretrain_batch_size is {batch_size}, which makes "
                "training batches plain mini-batches of images (for the transfer family: Transfer, Baseline, RFS, "
                "SKD). Remove data.pretrain_batch_size."
            )

    @abstractmethod
    def fit_support(self, support: SupportSet) -> Any:
        """Fits the support set: the state that :meth:`score` scores queries against. Pure: keeps nothing on the
        module."""

    @abstractmethod
    def score(self, state: Any, query_images: Tensor, query_indices: Tensor | None = None) -> Tensor:
        """Class scores [Q, way] of query images [Q, C, H, W] against a fitted support set (``state`` of
        :meth:`fit_support`). ``query_indices`` [Q], where the queries sit in the evaluated split, lets methods
        on frozen features look their features up; ``None`` for images that are not from a split."""

    def episode_logits(self, episode: Episode) -> Tensor:
        """Class scores of the queries, [num_queries, way], from the support set of the same episode: the support
        set fitted, then all the episode's queries scored at once."""
        return self.score(self.fit_support(SupportSet.of(episode)), episode.query_images, episode.query_indices)

    def training_logits(self, episode: Episode, tasks: list[Episode]) -> list[Tensor]:
        """The logits of each task of a training batch (``tasks``: ``episode`` itself, or its T tasks); each task
        is scored alone by default. Methods whose reference code embeds a whole meta-batch in one backbone pass
        (batch-norm statistics over all its tasks) override this."""
        return [self.episode_logits(task) for task in tasks]

    def episode_loss(self, episode: Episode, logits: Tensor) -> Tensor:
        """Cross-entropy over the queries; methods with another objective override this."""
        return F.cross_entropy(logits, episode.query_labels)

    def training_step(self, episode: Episode, batch_idx: int) -> Tensor:
        """One optimiser step on one episode, or on the mean loss of a batch of T episodes
        (``data.train_tasks_per_batch: T``, which spreads the Trainer's per-step work over T episodes)."""
        tasks = [episode] if episode.num_tasks is None else [episode.task(t) for t in range(episode.num_tasks)]
        losses, accuracies = [], []
        for task, logits in zip(tasks, self.training_logits(episode, tasks)):
            losses.append(self.episode_loss(task, logits))
            accuracies.append(self._accuracy(logits, task))
        loss = torch.stack(losses).mean()
        self.train_accuracy(torch.stack(accuracies).mean())
        queries = episode.query_labels.numel()
        # Not on the progress bar: that would read the values back from the GPU every step.
        self.log("train/loss", loss, batch_size=queries)
        self.log("train/acc", self.train_accuracy, batch_size=queries)
        return loss

    def validation_step(self, episode: Episode, batch_idx: int) -> None:
        self._evaluate(episode, self.val_accuracy, "val")

    def test_step(self, episode: Episode, batch_idx: int) -> None:
        self._evaluate(episode, self.test_accuracy, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_accuracy(self.val_accuracy, "val")
        fitted = self.val_calibration.compute()
        self.val_calibration.reset()
        if fitted is not None and not (self._trainer is not None and self.trainer.sanity_checking):
            self.score_calibration = fitted
            self.log("val/score_temperature", fitted.temperature)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.score_calibration is not None:
            checkpoint[CHECKPOINT_KEY] = self.score_calibration.to_checkpoint()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.score_calibration = ScoreCalibration.from_checkpoint(checkpoint)

    def on_test_epoch_end(self) -> None:
        summary = self._log_accuracy(self.test_accuracy, "test")
        self.print(
            f"Test accuracy: {100 * float(summary.mean):.2f}% ± {100 * float(summary.ci95):.2f}% "
            f"(95% CI over {summary.episodes} episodes)"
        )

    def prediction_scores(self, logits: Tensor) -> Tensor:
        """Per-class scores that mean what :attr:`score_name` says: logits [Q, way] -> [Q, way].

        The default is the softmax probability, right for methods trained with cross-entropy on their logits, at
        the temperature fitted on validation episodes when the checkpoint has one (:attr:`score_calibration`);
        methods whose logits are something else (relation scores, distances) override both.
        """
        if self.score_calibration is not None:
            return self.score_calibration.probabilities(logits)
        return logits.float().softmax(dim=-1)

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict[str, Any]]:
        """Classifies a batch of the user's query images against their support folder: file, predicted class and
        the predicted class's score (:meth:`prediction_rows`).

        Every batch of a predict loader carries the same support set
        (:func:`~fsl_lightning.data.predict_batches.prediction_batches`): it is fitted at the loader's first batch
        and its state kept for the following ones, until the predict run ends.
        """
        episode = batch["episode"]
        if batch_idx == 0 or self._predict_support_state is None:
            self._predict_support_state = self.fit_support(SupportSet.of(episode, batch["class_names"]))
        logits = self.score(self._predict_support_state, episode.query_images, episode.query_indices)
        return self.prediction_rows(logits, batch["query_files"], batch["class_names"])

    def on_predict_end(self) -> None:
        self._predict_support_state = None

    def prediction_rows(
        self, logits: Tensor, query_files: Sequence[str | None], class_names: Sequence[str]
    ) -> list[dict[str, Any]]:
        """One row per query: its file, the predicted class, that class's score (:meth:`prediction_scores`, in
        a column named :attr:`score_name`) and whether the query is an outlier, far from every class (``yes`` /
        ``no``; empty without a :attr:`score_calibration`); the rows of ``predict``'s CSV."""
        predicted = logits.argmax(dim=-1)
        scores = self.prediction_scores(logits).gather(-1, predicted.unsqueeze(-1)).squeeze(-1)
        if self.score_calibration is None:
            outliers = [""] * len(predicted)
        else:
            outliers = ["yes" if far else "no" for far in self.score_calibration.outliers(logits).tolist()]
        return [
            {"query_file": file, "predicted_class": class_names[label], self.score_name: score, "outlier": outlier}
            for file, label, score, outlier in zip(query_files, predicted.tolist(), scores.tolist(), outliers)
        ]

    def refuse_untrained_weights(self, action: str, how_to_load: str) -> None:
        """Stops ``action`` (``test``, ``predict``...) of a method that needs trained weights and was given none
        (the CLI without ``--ckpt_path``, the Python API without a checkpoint): a fresh network gives confident
        nonsense. ``how_to_load`` says how to pass trained weights."""
        if self.needs_trained_weights:
            raise UserError(f"{type(self).__name__} has no trained weights to {action} with: {how_to_load}.")

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}

    def _evaluate(self, episode: Episode, metric: EpisodeAccuracy, stage: str) -> Tensor:
        """Scores one validation or test episode into the stage's accuracy and loss; returns its logits."""
        logits = self.episode_logits(episode)
        getattr(self, f"{stage}_loss").update(self.episode_loss(episode, logits), len(episode.query_labels))
        metric.update(self._accuracy(logits, episode))
        if stage == "val":
            self.val_calibration.update(logits, episode.query_labels)
        return logits

    def _log_accuracy(self, metric: EpisodeAccuracy, stage: str) -> AccuracySummary:
        summary = metric.compute()
        metric.reset()
        losses = getattr(self, f"{stage}_loss")
        self.log(f"{stage}/loss", losses.compute().float())  # gathered from every rank by the metric
        losses.reset()
        self.log(f"{stage}/acc", summary.mean.float())
        self.log(f"{stage}/acc_ci95", summary.ci95.float())
        self.last_accuracy[stage] = summary  # for callbacks (histograms of per-episode accuracy)
        return summary

    @staticmethod
    def _accuracy(logits: Tensor, episode: Episode) -> Tensor:
        """Fraction of the episode's queries classified right (micro-averaged)."""
        return multiclass_accuracy(
            logits.argmax(dim=-1), episode.query_labels, num_classes=episode.way, average="micro", validate_args=False
        )


def check_embedding_batches(choice: str, method: str) -> str:
    """``embedding_batches`` of a method that trains through :meth:`EmbeddingMethod.logits_from_separate_passes`."""
    if choice not in ("reference", "episode"):
        raise UserError(f"{method} embedding_batches={choice!r}: use reference or episode.")
    return choice


@dataclass(frozen=True)
class Prototypes:
    """A fitted support set of the prototype family (ProtoNet, nearest centroid): one vector per class, [way, D]."""

    prototypes: Tensor


@dataclass(frozen=True)
class LabelledFeatures:
    """A support set kept as it is, in feature space: features [S, ...], labels [S] in ``0..way-1`` and the way
    (the state of methods that compare each query with every support item: MatchingNet, Siamese, 1-NN)."""

    features: Tensor
    labels: Tensor
    way: int


class EmbeddingMethod(FewShotMethod):
    """A method that fits and scores in the backbone's feature space: :meth:`fit_support` embeds the support
    images (:meth:`embed`) and fits their features (:meth:`fit_features`); :meth:`score` embeds the queries and
    scores their features (:meth:`score_features`).

    :meth:`episode_logits`, used in training and evaluation, embeds support and queries in ONE backbone batch, as
    the code of Prototypical Networks does: in training mode batch norm then normalises with the statistics of the
    whole episode, which separate calls for each side do not reproduce. Methods whose reference code embeds the
    support images and the queries in separate passes (MetaOptNet, Relation Networks) train through
    :meth:`logits_from_separate_passes` instead. In eval mode (running statistics) an image's features do not
    depend on its batch, so ``score(fit_support(support), queries)`` gives the episode's logits, up to the
    floating-point rounding of batched convolutions (tests/test_support_split.py checks every method).
    """

    #: whether ``test`` and ``predict`` run an evaluation copy of the backbone with batch norm folded into the
    #: convolutions (:func:`~fsl_lightning.backbones.batch_norm_folding.batch_norm_folded`): the same function in eval
    #: mode, faster; off for a method whose evaluation trains the backbone
    folds_batch_norm_for_evaluation: bool = True
    #: the backbone passes of training: ``episode`` (one per episode) or ``reference`` (those of the method's
    #: reference code, :meth:`reference_training_logits`); methods that offer both set it from ``embedding_batches``
    embedding_batches: str = "episode"

    def setup(self, stage: str) -> None:
        self.restore_trained_backbone()  # every stage starts from the trained module, even after a failed test
        super().setup(stage)

    def on_test_start(self) -> None:
        self.use_evaluation_backbone()

    def on_test_end(self) -> None:
        self.restore_trained_backbone()

    def on_predict_start(self) -> None:
        self.use_evaluation_backbone()

    def on_predict_end(self) -> None:
        super().on_predict_end()
        self.restore_trained_backbone()

    def use_evaluation_backbone(self) -> None:
        """Swaps in the folded evaluation copy of the backbone until :meth:`restore_trained_backbone` (test and
        predict only: no checkpoint is written meanwhile, and validation keeps the trained module as it is)."""
        if self.folds_batch_norm_for_evaluation and not self._trained_backbone:
            self._trained_backbone.append(self.backbone)
            self.backbone = batch_norm_folded(self.backbone)

    def restore_trained_backbone(self) -> None:
        if self._trained_backbone:
            self.backbone = self._trained_backbone.pop()

    def embed(self, images: Tensor) -> Tensor:
        """Features of images [B, C, H, W] (here the backbone's output)."""
        return self.backbone(images)

    @abstractmethod
    def fit_features(self, support_features: Tensor, support: SupportSet) -> Any:
        """The state fitted on the support set's features (its labels, way and seed are in ``support``)."""

    @abstractmethod
    def score_features(self, state: Any, query_features: Tensor) -> Tensor:
        """Class scores [Q, way] of the queries' features against a fitted state."""

    def fit_support(self, support: SupportSet) -> Any:
        return self.fit_features(self.embed(support.images), support)

    def score(self, state: Any, query_images: Tensor, query_indices: Tensor | None = None) -> Tensor:
        return self.score_features(state, self.embed(query_images))

    def episode_logits(self, episode: Episode) -> Tensor:
        features = self.embed(torch.cat([episode.support_images, episode.query_images]))
        num_support = len(episode.support_images)
        state = self.fit_features(features[:num_support], SupportSet.of(episode))
        return self.score_features(state, features[num_support:])

    def training_logits(self, episode: Episode, tasks: list[Episode]) -> list[Tensor]:
        if self.embedding_batches == "reference":
            return self.reference_training_logits(tasks)
        return super().training_logits(episode, tasks)

    def reference_training_logits(self, tasks: list[Episode]) -> list[Tensor]:
        """The logits of each task through the backbone passes of the method's reference code; by default
        :meth:`logits_from_separate_passes` (MetaOptNet, Relation Networks)."""
        return self.logits_from_separate_passes(tasks)

    def logits_from_separate_passes(self, tasks: list[Episode]) -> list[Tensor]:
        """The logits of each task, with the support images of all the tasks embedded in one backbone pass and
        their queries in another (in training mode, batch norm normalises each side by its own statistics)."""
        support_features = self.embed(torch.cat([task.support_images for task in tasks]))
        query_features = self.embed(torch.cat([task.query_images for task in tasks]))
        supports = support_features.split([len(task.support_images) for task in tasks])
        queries = query_features.split([len(task.query_images) for task in tasks])
        return [
            self.score_features(self.fit_features(support, SupportSet.of(task)), query)
            for task, support, query in zip(tasks, supports, queries)
        ]
