"""The unit of few-shot work: one N-way K-shot task with its labelled support set and its query set."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass(frozen=True)
class EpisodeSpec:
    """How many classes (way), labelled images per class (shot) and query images per class (query)."""

    way: int
    shot: int
    query: int

    def __post_init__(self) -> None:
        for name in ("way", "shot", "query"):
            if getattr(self, name) < 1:
                raise ValueError(f"Episode {name} must be at least 1, got {getattr(self, name)}.")
        if self.way < 2:
            raise ValueError(f"An episode needs at least 2 classes (way >= 2), got way={self.way}.")

    @property
    def images_per_class(self) -> int:
        return self.shot + self.query


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
    """

    support_images: Tensor
    support_labels: Tensor
    query_images: Tensor
    query_labels: Tensor
    class_ids: Tensor

    @property
    def way(self) -> int:
        return self.class_ids.shape[-1]

    @property
    def num_tasks(self) -> int | None:
        """T for a meta-batch of tasks, ``None`` for a single episode."""
        return self.class_ids.shape[0] if self.class_ids.dim() == 2 else None

    def task(self, index: int) -> Episode:
        """One task of a meta-batch."""
        return Episode(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def to(self, device: torch.device | str) -> Episode:
        return Episode(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def split_support_query(images: Tensor, class_ids: Tensor, spec: EpisodeSpec) -> Episode:
    """Turns images grouped by class, [..., way, shot + query, C, H, W], into an :class:`Episode`.

    The first ``shot`` images of each class form the support set, the rest the queries; leading
    dimensions (tasks of a meta-batch) are kept.
    """
    leading = images.shape[:-5]
    support = images[..., : spec.shot, :, :, :].flatten(-5, -4)
    query = images[..., spec.shot :, :, :, :].flatten(-5, -4)
    labels = torch.arange(spec.way, device=images.device)
    return Episode(
        support_images=support,
        support_labels=labels.repeat_interleave(spec.shot).expand(*leading, -1),
        query_images=query,
        query_labels=labels.repeat_interleave(spec.query).expand(*leading, -1),
        class_ids=class_ids,
    )
