"""The unit of few-shot work: one N-way K-shot task with its labelled support set and its query set."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from fsl_lightning.run.errors import UserError


@dataclass(frozen=True)
class EpisodeSpec:
    """How many classes (way), labelled images per class (shot) and query images per class (query)."""

    way: int
    shot: int
    query: int

    def __post_init__(self) -> None:
        check_episode_numbers(self.way, self.shot, self.query)

    @property
    def images_per_class(self) -> int:
        return self.shot + self.query


def check_episode_numbers(way: int, shot: int, query: int, episodes: str = "Episodes", option: str = "") -> None:
    """Raises a :class:`UserError` unless ``way >= 2``, ``shot >= 1`` and ``query >= 1``.

    ``episodes`` says which episodes these are ("Training episodes") and ``option`` the option that sets
    them (``data.train``), so that the message says what to change.
    """
    prefix = f"--{option}." if option else ""
    for name, value, least in (("way", way, 2), ("shot", shot, 1), ("query", query, 1)):
        if value < least:
            raise UserError(
                f"{episodes} need {name} >= {least}, got {name}={value}: set {prefix}{name} to at least {least}."
            )


@dataclass(frozen=True)
class Episode:
    """A few-shot task, already on the compute device.

    Labels are episode-local, ``0..way-1``; ``class_ids`` maps them back to the dataset's classes.
    A meta-batch of T tasks (for MAML-like methods, ``train_tasks_per_batch > 1``) adds a leading
    task dimension to every field.

    Shapes (without the task dimension):
        support_images: [way * shot, C, H, W] (float)
        support_labels: [way * shot] (long)
        query_images:   [num_queries, C, H, W] (float)
        query_labels:   [num_queries] (long; -1 where unknown, as in ``predict``)
        class_ids:      [way] (long)
        support_indices, query_indices: where the images sit in the split's image tensor ([way * shot] and
                        [num_queries], long), for methods that embed a whole split once and look features up
                        (frozen pretrained backbones); ``None`` for images that are not from a split (``predict``).
        seed: for validation and test episodes, a seed for any randomness a method uses to solve the episode
              (e.g. the initialisation of a fine-tuned probe); it depends only on ``(eval_seed, split, episode
              number)``, so the same checkpoint gives the same numbers whatever the process count or what ran
              before. ``None`` for training batches and ``predict``.
    """

    support_images: Tensor
    support_labels: Tensor
    query_images: Tensor
    query_labels: Tensor
    class_ids: Tensor
    support_indices: Tensor | None = None
    query_indices: Tensor | None = None
    seed: int | None = None

    @property
    def way(self) -> int:
        return self.class_ids.shape[-1]

    @property
    def num_tasks(self) -> int | None:
        """T for a meta-batch of tasks, ``None`` for a single episode."""
        return self.class_ids.shape[0] if self.class_ids.dim() == 2 else None

    def map(self, function: Callable[[Tensor], Tensor]) -> Episode:
        """The episode with ``function`` applied to each of its tensors; other fields (``seed``) are kept."""
        return Episode(**{f.name: _apply_to_tensor(function, getattr(self, f.name)) for f in fields(self)})

    def task(self, index: int) -> Episode:
        """One task of a meta-batch."""
        return self.map(lambda tensor: tensor[index])

    def to(self, device: torch.device | str) -> Episode:
        return self.map(lambda tensor: tensor.to(device))


@dataclass(frozen=True)
class SupportSet:
    """What a method fits before it sees any query (:meth:`FewShotMethod.fit_support`): the labelled support images
    of one task and what some methods need beside them. Built from an episode (:meth:`of`) in training and
    evaluation, from the user's folder in ``predict`` and :class:`~fsl_lightning.classifier.FewShotClassifier`.

    Fields:
        images: [S, C, H, W] float model input (S may be 0: zero-shot ``predict`` from class names).
        labels: [S] long in ``0..way-1``.
        way: the number of classes to choose from.
        class_ids: [way] the dataset's class of each label (evaluation episodes; CLIP names them from the split).
        indices: [S] where the images sit in the evaluated split, for methods that look up cached split features;
            ``None`` for images that are not from a split.
        seed: :attr:`Episode.seed`, for any randomness of the fit (a probe's initialisation).
        class_names: the name of each label, for methods that read names (CLIP's text classifier) in ``predict``.
    """

    images: Tensor
    labels: Tensor
    way: int
    class_ids: Tensor | None = None
    indices: Tensor | None = None
    seed: int | None = None
    class_names: tuple[str, ...] | None = None

    @classmethod
    def of(cls, episode: Episode, class_names: Sequence[str] | None = None) -> SupportSet:
        """The support side of one episode (not a meta-batch)."""
        return cls(
            images=episode.support_images,
            labels=episode.support_labels,
            way=episode.way,
            class_ids=episode.class_ids,
            indices=episode.support_indices,
            seed=episode.seed,
            class_names=None if class_names is None else tuple(class_names),
        )


def _apply_to_tensor(function: Callable[[Tensor], Tensor], value: Any) -> Any:
    return function(value) if isinstance(value, Tensor) else value


def split_support_query(
    images: Tensor,
    class_ids: Tensor,
    spec: EpisodeSpec,
    image_indices: Tensor | None = None,
    seed: int | None = None,
) -> Episode:
    """Turns images grouped by class, [..., way, shot + query, C, H, W], into an :class:`Episode`.

    The first ``shot`` images of each class form the support set, the rest the queries; leading
    dimensions (tasks of a meta-batch) are kept. ``image_indices`` [..., way, shot + query], where the images
    sit in their split, are split the same way (``Episode.support_indices`` / ``query_indices``); ``seed`` is
    passed on as ``Episode.seed``.
    """
    leading = images.shape[:-5]
    labels = torch.arange(spec.way, device=images.device)
    support_indices = query_indices = None
    if image_indices is not None:
        support_indices = image_indices[..., : spec.shot].flatten(-2)
        query_indices = image_indices[..., spec.shot :].flatten(-2)
    return Episode(
        support_images=images[..., : spec.shot, :, :, :].flatten(-5, -4),
        support_labels=labels.repeat_interleave(spec.shot).expand(*leading, -1),
        query_images=images[..., spec.shot :, :, :, :].flatten(-5, -4),
        query_labels=labels.repeat_interleave(spec.query).expand(*leading, -1),
        class_ids=class_ids,
        support_indices=support_indices,
        query_indices=query_indices,
        seed=seed,
    )


@dataclass(frozen=True)
class LabelledBatch:
    """A plain mini-batch for supervised pre-training over all training classes (the first stage of
    Baseline, RFS and kin): images [B, C, H, W] (float) and their dataset class ids [B] (long)."""

    images: Tensor
    labels: Tensor
