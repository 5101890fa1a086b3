"""CLIP zero-shot and few-shot classification on the framework's episodes.

Zero-shot (Radford et al. 2021): each class name, put into prompt templates ("a photo of a {}."), is encoded by the
text tower; the L2-normalised mean over the templates (a prompt ensemble) is the class's weight vector, and an image
is scored by ``logit_scale * cos(image features, class weights)``.

Few-shot: a classifier fitted on the episode's L2-normalised support features (class prototypes by default, or
logistic regression) is combined with the zero-shot text classifier, in the spirit of Tip-Adapter (Zhang et al.
2022), which adds a support-set "cache" classifier to CLIP's zero-shot logits with one weight:
``log p = (1 - w) * log_softmax(zero-shot) + w * log_softmax(few-shot)``, ``w`` in [0, 1] (0: zero-shot only,
1: few-shot only), chosen on the data module's validation episodes unless the config fixes it.

Image features come from :class:`~fsl_lightning.methods.frozen_features.FrozenFeatureMethod`'s cache (one pass
over a split, then look-ups); the text classifier of a split's classes is computed once too.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsl_lightning.episode import Episode, SupportSet
from fsl_lightning.methods.episode_classifiers import EpisodeClassifier, NearestCentroid
from fsl_lightning.methods.frozen_features import FrozenFeatureMethod
from fsl_lightning.methods.metrics import AccuracySummary, EpisodeAccuracy
from fsl_lightning.methods.registry import registered

#: Names of the prompt ensembles that :func:`prompt_ensembles` knows.
PROMPT_ENSEMBLE_NAMES = ("openai_imagenet", "simple_imagenet")
DEFAULT_TEMPLATE = "a photo of a {}."
#: Top-k accuracy logged beside top-1 (``val/top5``, ``test/top5``); k is capped at the episode's way.
TOP_K = 5
DEFAULT_MIX_WEIGHTS = tuple(i / 10 for i in range(11))
#: CLIP's learned logit scale once trained, used as the prototype classifier's scale so that both classifiers of
#: the mix are equally sharp.
CLIP_LOGIT_SCALE = 100.0


# ----- the maths, as plain functions ----------------------------------------------------------------------------------
@functools.cache
def prompt_ensembles() -> dict[str, tuple[str, ...]]:
    """The 80 templates of CLIP's ImageNet evaluation and open_clip's 7-template subset, as ``{}`` templates.

    (open_clip is imported here, not with the module, so that listing the methods does not load it.)
    """
    from open_clip import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    return {
        "openai_imagenet": tuple(template("{}") for template in OPENAI_IMAGENET_TEMPLATES),
        "simple_imagenet": tuple(template("{}") for template in SIMPLE_IMAGENET_TEMPLATES),
    }


def prompt_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """Templates from a single template, a list of them, or the name of an ensemble (:data:`PROMPT_ENSEMBLE_NAMES`)."""
    if isinstance(templates, str):
        templates = prompt_ensembles()[templates] if templates in PROMPT_ENSEMBLE_NAMES else (templates,)
    templates = tuple(templates)
    if not templates:
        raise ValueError(f"templates is empty: give at least one prompt template such as {DEFAULT_TEMPLATE!r}.")
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(
                f"Prompt template {template!r} must hold '{{}}' exactly once, where the class name goes (e.g. "
                f"{DEFAULT_TEMPLATE!r}), or name a prompt ensemble: {', '.join(PROMPT_ENSEMBLE_NAMES)}."
            )
    return templates


def readable_class_name(name: str) -> str:
    """A folder or dataset class name as words for a prompt: ``car_side`` -> ``car side``."""
    return " ".join(name.replace("_", " ").split())


def prompts_for(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every template filled with every class name, class by class: ``len(class_names) * len(templates)`` texts."""
    return [template.replace("{}", readable_class_name(name)) for name in class_names for template in templates]


def ensemble_text_features(text_features: Tensor, num_classes: int) -> Tensor:
    """Per-prompt text features [C * T, D] -> class weights [C, D]: the normalised mean of the normalised prompt
    features of each class (CLIP's prompt ensembling)."""
    per_prompt = F.normalize(text_features.float(), dim=-1).view(num_classes, -1, text_features.shape[-1])
    return F.normalize(per_prompt.mean(dim=1), dim=-1)


def zero_shot_logits(image_features: Tensor, class_weights: Tensor, logit_scale: Tensor | float) -> Tensor:
    """``logit_scale * cos(image, class)``: image features [Q, D], unit class weights [C, D] -> [Q, C]."""
    return logit_scale * F.normalize(image_features.float(), dim=-1) @ class_weights.float().T


def mix_log_probabilities(zero_shot: Tensor, few_shot: Tensor, weight: float) -> Tensor:
    """``(1 - weight) * log_softmax(zero_shot) + weight * log_softmax(few_shot)``, both [Q, C]."""
    return (1.0 - weight) * zero_shot.float().log_softmax(dim=-1) + weight * few_shot.float().log_softmax(dim=-1)


def top_k_accuracy(logits: Tensor, labels: Tensor, k: int) -> Tensor:
    """Fraction of rows whose label is among the ``k`` highest scores (``k`` capped at the number of classes)."""
    top = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
    return (top == labels.unsqueeze(-1)).any(dim=-1).float().mean()


# ----- fitted support sets --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ZeroShotClassifier:
    """CLIPZeroShot's fitted support set: the unit text-classifier weights of its classes, [way, D]."""

    class_weights: Tensor


class TextTower(Protocol):
    """What the CLIP methods use of their backbone besides ``forward`` (:class:`CLIPBackbone` has both)."""

    @property
    def logit_scale(self) -> Tensor: ...

    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> Tensor: ...


@dataclass(frozen=True)
class MixedClassifier(ZeroShotClassifier):
    """CLIPFewShot's fitted support set: the text classifier, the episode classifier fitted on the support features
    (``None`` for zero-shot ``predict`` from class names alone) and the weight ``w`` of the few-shot one."""

    few_shot: Any
    mix_weight: float


# ----- the methods ----------------------------------------------------------------------------------------------------
@registered
class CLIPZeroShot(FrozenFeatureMethod):
    """CLIP zero-shot classification: queries against the text classifier of the episode's class names.

    The support set is not used. Class names come from the data module's split (``_`` read as a space) or, in
    ``predict``, from the support folder's sub-folders or ``data.predict_class_names`` (then no support images are
    needed). Logs ``{val,test}/top5`` (with ``_ci95``) beside the usual accuracy.

    Args:
        backbone: a :class:`~fsl_lightning.backbones.clip_backbone.CLIPBackbone` (or any module with its
            ``encode_text(texts)`` and ``logit_scale``).
        templates: a prompt template with ``{}`` for the class name, a list of them (a prompt ensemble), or the
            name of an ensemble: ``openai_imagenet`` (CLIP's 80 ImageNet prompts) or ``simple_imagenet`` (7).
        feature_batch_size, feature_cache_dir: see :class:`~fsl_lightning.methods.frozen_features.FrozenFeatureMethod`.
    """

    #: ``predict`` may give class names without support images (``data.predict_class_names``).
    supports_zero_shot = True

    def __init__(
        self,
        backbone: nn.Module,
        templates: str | list[str] = DEFAULT_TEMPLATE,
        feature_batch_size: int = 256,
        feature_cache_dir: str | None = None,
    ) -> None:
        super().__init__(backbone, feature_batch_size, feature_cache_dir)
        if not (hasattr(backbone, "encode_text") and hasattr(backbone, "logit_scale")):
            raise ValueError(
                f"{type(self).__name__} needs a backbone with a text tower "
                f"(fsl_lightning.backbones.clip_backbone.CLIPBackbone), got {type(backbone).__name__}."
            )
        self.templates = prompt_templates(templates)
        self.val_top5 = EpisodeAccuracy(nan_strategy="disable")
        self.test_top5 = EpisodeAccuracy(nan_strategy="disable")
        self._class_weights: dict[tuple[str, ...], Tensor] = {}

    @property
    def text_tower(self) -> TextTower:
        # __init__ checked that the backbone has encode_text and logit_scale
        return cast(TextTower, self.backbone)

    # ----- classification ---------------------------------------------------------------------------------------
    def fit_support(self, support: SupportSet) -> ZeroShotClassifier:
        """The text classifier of the support set's classes (its images are not used)."""
        return ZeroShotClassifier(self.support_class_weights(support))

    def score(self, state: ZeroShotClassifier, query_images: Tensor, query_indices: Tensor | None = None) -> Tensor:
        return self.zero_shot_logits(self.features(query_images, query_indices), state.class_weights)

    def zero_shot_logits(self, image_features: Tensor, class_weights: Tensor) -> Tensor:
        return zero_shot_logits(image_features, class_weights, self.text_tower.logit_scale.detach().float())

    def class_weights(self, class_names: Sequence[str]) -> Tensor:
        """Unit text-classifier weights [C, D] of ``class_names``, computed once per list of names."""
        key = tuple(class_names)
        cached = self._class_weights.get(key)
        if cached is None or cached.device != self.device:
            with torch.inference_mode(), self.precision_context():
                text_features = self.text_tower.encode_text(prompts_for(key, self.templates))
            cached = self._class_weights[key] = ensemble_text_features(text_features, len(key))
        return cached

    def clear_feature_cache(self) -> None:
        """Forget image features and text-classifier weights (after the weights changed)."""
        super().clear_feature_cache()
        self._class_weights.clear()

    def support_class_weights(self, support: SupportSet) -> Tensor:
        """Text-classifier weights [way, D] of the support set's classes, in the order of its labels: named by
        ``support.class_names`` (``predict``), else by the evaluated split's names of ``support.class_ids``."""
        if support.class_names is not None:
            return self.class_weights(support.class_names)
        split, data = self.evaluated_split(), self.data
        if split is None or data is None:  # a split is evaluated only with a data module
            raise ValueError(
                f"{type(self).__name__} needs the class names of an episode: evaluate it with a data module "
                "(`validate`, `test`) or `predict` with a support folder or data.predict_class_names."
            )
        return self.class_weights(data.splits[split].class_names)[support.class_ids]

    # ----- Lightning hooks ----------------------------------------------------------------------------------------
    def _evaluate(self, episode: Episode, metric: EpisodeAccuracy, stage: str) -> Tensor:
        logits = super()._evaluate(episode, metric, stage)
        getattr(self, f"{stage}_top5").update(top_k_accuracy(logits, episode.query_labels, TOP_K))
        return logits

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._log_top5("val")

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        summary = self._log_top5("test")
        self.print(f"Top-{TOP_K} accuracy: {100 * float(summary.mean):.2f}% ± {100 * float(summary.ci95):.2f}%")

    def _log_top5(self, stage: str) -> AccuracySummary:
        metric = getattr(self, f"{stage}_top5")
        summary = metric.compute()
        metric.reset()
        self.log(f"{stage}/top5", summary.mean.float())
        self.log(f"{stage}/top5_ci95", summary.ci95.float())
        return summary


@registered
class CLIPFewShot(CLIPZeroShot):
    """CLIP few-shot: a classifier on the support set's image features, mixed with the zero-shot text classifier.

    ``log p = (1 - w) * log_softmax(zero-shot logits) + w * log_softmax(few-shot logits)``. With ``mix_weight: 1``
    this is the few-shot classifier alone (prototypes of L2-normalised CLIP features, or logistic regression on
    them); with ``mix_weight: null`` (default) ``w`` is the value of ``mix_weight_grid`` with the best accuracy on
    the data module's validation episodes, chosen once, when the first episode needs it (during ``test``,
    ``validate`` or ``predict``), printed with the accuracy of every candidate, logged as ``{stage}/mix_weight``
    and kept in checkpoints. ``predict`` with class names only (no support images) is zero-shot.

    Args:
        backbone: a :class:`~fsl_lightning.backbones.clip_backbone.CLIPBackbone`.
        episode_classifier: fitted on each episode's support features; default ``NearestCentroid(scale=100)``:
            cosine to the class prototypes of L2-normalised features at CLIP's logit scale. ``LogisticRegression``
            is the other standard choice.
        mix_weight: ``w`` above, in [0, 1]; ``null`` to choose it on validation episodes.
        mix_weight_grid: the candidates for ``w``; ties go to the earlier one.
        templates, feature_batch_size, feature_cache_dir: see :class:`CLIPZeroShot`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        episode_classifier: EpisodeClassifier | None = None,
        mix_weight: float | None = None,
        mix_weight_grid: Sequence[float] = DEFAULT_MIX_WEIGHTS,
        templates: str | list[str] = DEFAULT_TEMPLATE,
        feature_batch_size: int = 256,
        feature_cache_dir: str | None = None,
    ) -> None:
        super().__init__(backbone, templates, feature_batch_size, feature_cache_dir)
        for weight in [mix_weight, *mix_weight_grid]:
            if weight is not None and not 0.0 <= weight <= 1.0:
                raise ValueError(f"Mix weights are in [0, 1] (0: zero-shot only, 1: few-shot only), got {weight}.")
        if mix_weight is None and not mix_weight_grid:
            raise ValueError("mix_weight_grid is empty: give candidates (e.g. [0, 0.5, 1]) or a mix_weight.")
        self.episode_classifier = episode_classifier or NearestCentroid(scale=CLIP_LOGIT_SCALE)
        self.mix_weight = mix_weight
        self.mix_weight_grid = tuple(float(weight) for weight in mix_weight_grid)
        #: the weight chosen on validation episodes (when ``mix_weight`` is null)
        self.chosen_mix_weight: float | None = None

    @property
    def transductive(self) -> bool:
        return self.episode_classifier.transductive

    def fit_support(self, support: SupportSet) -> MixedClassifier:
        """The text classifier of the classes and, unless the support set is empty (``predict`` from class names
        alone: zero-shot), the episode classifier fitted on the support features, with the mix weight."""
        zero_shot = self.support_class_weights(support)
        if len(support.labels) == 0:
            return MixedClassifier(zero_shot, few_shot=None, mix_weight=0.0)
        features = self.features(support.images, support.indices)
        few_shot = self.episode_classifier.fit(features, support.labels, support.way, seed=support.seed)
        return MixedClassifier(zero_shot, few_shot, self.current_mix_weight())

    def score(self, state: ZeroShotClassifier, query_images: Tensor, query_indices: Tensor | None = None) -> Tensor:
        """``state``: a :class:`MixedClassifier` (what :meth:`fit_support` gives); a text classifier alone is
        scored zero-shot, as a ``MixedClassifier`` without a few-shot part."""
        queries = self.features(query_images, query_indices)
        zero_shot = self.zero_shot_logits(queries, state.class_weights)
        if not isinstance(state, MixedClassifier) or state.few_shot is None:
            return zero_shot
        few_shot = self.episode_classifier.score(state.few_shot, queries)
        return mix_log_probabilities(zero_shot, few_shot, state.mix_weight)

    def current_mix_weight(self) -> float:
        if self.mix_weight is not None:
            return self.mix_weight
        if self.chosen_mix_weight is None:
            self.chosen_mix_weight = self.choose_mix_weight()
        return self.chosen_mix_weight

    # ----- choosing the weight on validation episodes -------------------------------------------------------------
    def choose_mix_weight(self) -> float:
        """The grid value with the most validation queries right (counted over all ranks, so every rank agrees)."""
        datamodule = self._datamodule_with_validation_split()
        with torch.inference_mode(), self.precision_context():
            correct, total = self._validation_counts(datamodule)
        best = int(correct.argmax())
        table = ", ".join(
            f"{weight:g}: {100 * float(right / total):.1f}%" for weight, right in zip(self.mix_weight_grid, correct)
        )
        self.print(
            f"CLIP mix weight {self.mix_weight_grid[best]:g} chosen on {int(total)} validation queries "
            f"(accuracy by weight: {table})"
        )
        return self.mix_weight_grid[best]

    def _validation_counts(self, datamodule) -> tuple[Tensor, Tensor]:
        """Queries classified right with each grid weight [len(grid)], and all queries, over the validation episodes."""
        spec = datamodule.specs["val"]
        features = self.split_features("val")
        class_weights = self.class_weights(datamodule.splits["val"].class_names)
        support_labels = torch.arange(spec.way, device=self.device).repeat_interleave(spec.shot)
        query_labels = torch.arange(spec.way, device=self.device).repeat_interleave(spec.query)
        counts = torch.zeros(len(self.mix_weight_grid) + 1, device=self.device)  # the last one counts queries
        for image_indices, class_ids, key in datamodule.val_dataloader():  # (indices, class ids, episode key)
            image_indices, class_ids = image_indices.to(self.device), class_ids.to(self.device)
            support = features[image_indices[:, : spec.shot].flatten()]
            queries = features[image_indices[:, spec.shot :].flatten()]
            zero_shot = self.zero_shot_logits(queries, class_weights[class_ids])
            few_shot = self.episode_classifier(
                support, support_labels, queries, spec.way, seed=datamodule.episode_seed("val", int(key))
            )
            for index, weight in enumerate(self.mix_weight_grid):
                predicted = mix_log_probabilities(zero_shot, few_shot, weight).argmax(dim=-1)
                counts[index] += (predicted == query_labels).sum()
            counts[-1] += len(query_labels)
        counts = self.trainer.strategy.reduce(counts, reduce_op="sum").cpu()
        if counts[-1] == 0:
            raise ValueError(
                "CLIPFewShot found no validation episodes to choose its mix weight: set data.val_episodes > 0."
            )
        return counts[:-1], counts[-1]

    def _datamodule_with_validation_split(self):
        datamodule = self.data
        if datamodule is None:
            raise ValueError(
                "CLIPFewShot chooses its mix weight on validation episodes, which need an EpisodicDataModule: "
                "run it through the CLI / a Trainer with one, or set `mix_weight` (e.g. 0.5)."
            )
        try:
            datamodule.setup("validate")  # loads the validation split if this stage (test, predict) did not
        except Exception as error:
            raise ValueError(
                f"CLIPFewShot chooses its mix weight on validation episodes of {type(datamodule.dataset).__name__}, "
                f"which could not be loaded ({error}). Set `model.init_args.mix_weight` (e.g. 0.5) instead."
            ) from error
        return datamodule

    # ----- Lightning hooks ----------------------------------------------------------------------------------------
    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._log_mix_weight("val")

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._log_mix_weight("test")

    def _log_mix_weight(self, stage: str) -> None:
        weight = self.mix_weight if self.mix_weight is not None else self.chosen_mix_weight
        if weight is not None:
            self.log(f"{stage}/mix_weight", float(weight))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["clip_chosen_mix_weight"] = self.chosen_mix_weight

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.chosen_mix_weight = checkpoint.get("clip_chosen_mix_weight", self.chosen_mix_weight)
