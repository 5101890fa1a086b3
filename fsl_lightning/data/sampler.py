"""Seeded episode sampling: which images of which classes make up each episode.

Every episode is a pure function of ``(seed, stream, key)``: the same key gives the same episode on any
machine, in any process, whatever ran before. Validation and test episodes are keyed by their number, so
they are fixed; training episodes are keyed by the step and the rank, so that ranks draw distinct
episodes and a resumed run continues the same stream.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import IterableDataset

from fsl_lightning.episode import EpisodeSpec


def check_episode_fits(
    images_per_class: Tensor, spec: EpisodeSpec, split: str, class_groups: Tensor | None = None
) -> None:
    """Raises a ``ValueError`` saying how to fix ``spec`` when ``split`` cannot provide such episodes."""
    num_classes = len(images_per_class)
    largest = int(torch.bincount(class_groups).max()) if class_groups is not None else None
    if largest is not None and spec.way > largest:
        raise ValueError(
            f"{spec.way}-way episodes within one group (alphabet) need a group of {spec.way} classes, but the "
            f"largest group of the {split} split has {largest}. Lower `way` to at most {largest}, or set "
            "`evaluation_within_group: false`."
        )
    if spec.way > num_classes:
        raise ValueError(
            f"{spec.way}-way episodes need {spec.way} classes, but the {split} split has only {num_classes}. "
            f"Lower `way` to at most {num_classes}."
        )
    fewest = int(images_per_class.min())
    if spec.images_per_class > fewest:
        raise ValueError(
            f"Episodes of shot={spec.shot} + query={spec.query} need {spec.images_per_class} images per class, "
            f"but some classes of the {split} split have only {fewest}. Lower shot + query to at most {fewest}."
        )


def episode_generator(seed: int, stream: int, key: int) -> torch.Generator:
    """A CPU generator whose state depends only on its three arguments (well mixed, no collisions in practice)."""
    state = np.random.SeedSequence([seed, stream, key]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def sample_episode(
    class_offsets: Tensor, spec: EpisodeSpec, generator: torch.Generator, class_groups: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Draws ``way`` distinct classes and ``shot + query`` distinct images of each.

    With ``class_groups`` (a group id per class), all classes come from one group, drawn uniformly among the
    groups that have at least ``way`` classes (Lake et al.'s one-shot trials: 20 characters of one alphabet).
    Returns image indices [way, shot + query] (the first ``shot`` of each row are the support images) and
    the class ids [way].
    """
    counts = class_offsets[1:] - class_offsets[:-1]
    if class_groups is None:
        class_ids = torch.randperm(len(counts), generator=generator)[: spec.way]
    else:
        class_ids = _classes_of_one_group(class_groups, spec.way, generator)
    # A random score per image slot; slots past a class's image count score 2 and so are never picked.
    scores = torch.rand(spec.way, int(counts.max()), generator=generator)
    scores[torch.arange(scores.shape[1]) >= counts[class_ids, None]] = 2.0
    within_class = scores.argsort(dim=1)[:, : spec.images_per_class]
    return class_offsets[class_ids, None] + within_class, class_ids


def _classes_of_one_group(class_groups: Tensor, way: int, generator: torch.Generator) -> Tensor:
    group_sizes = torch.bincount(class_groups)
    eligible = (group_sizes >= way).nonzero().flatten()
    group = eligible[torch.randint(len(eligible), (), generator=generator)]
    members = (class_groups == group).nonzero().flatten()
    return members[torch.randperm(len(members), generator=generator)[:way]]


class EpisodeStream(IterableDataset):
    """Yields ``(image_indices, class_ids)`` for each batch key given by ``keys()``.

    A batch is one episode ([way, shot + query] indices, [way] class ids) or, with ``tasks_per_batch`` T > 1,
    T episodes stacked ([T, way, shot + query], [T, way]) keyed ``batch_key * T + t``. With ``class_groups``,
    each episode's classes come from one group (see :func:`sample_episode`).
    ``keys`` is called at the start of each pass, so that a training stream can start at the current step.
    An iterable dataset keeps Lightning from wrapping it in a ``DistributedSampler``: ranks are sharded here.
    """

    def __init__(
        self,
        class_offsets: Tensor,
        spec: EpisodeSpec,
        seed: int,
        stream: int,
        keys: Callable[[], range],
        tasks_per_batch: int = 1,
        class_groups: Tensor | None = None,
    ) -> None:
        self.class_offsets = class_offsets
        self.spec = spec
        self.seed = seed
        self.stream = stream
        self.keys = keys
        self.tasks_per_batch = tasks_per_batch
        self.class_groups = class_groups

    def __len__(self) -> int:
        return len(self.keys())

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for key in self.keys():
            if self.tasks_per_batch == 1:
                yield self._episode(key)
            else:
                tasks = [self._episode(key * self.tasks_per_batch + t) for t in range(self.tasks_per_batch)]
                yield torch.stack([t[0] for t in tasks]), torch.stack([t[1] for t in tasks])

    def _episode(self, key: int) -> tuple[Tensor, Tensor]:
        generator = episode_generator(self.seed, self.stream, key)
        return sample_episode(self.class_offsets, self.spec, generator, self.class_groups)
