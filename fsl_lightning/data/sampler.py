"""Seeded episode sampling: which images of which classes make up each episode.

Every episode is a pure function of ``(seed, stream, key)``: the same key gives the same episode on any
machine, in any process, whatever ran before. Validation and test episodes are keyed by their number, so
they are fixed; training episodes are keyed by the step and the rank, so that ranks draw distinct
episodes and a resumed run continues the same stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import IterableDataset

from fsl_lightning.episode import EpisodeSpec
from fsl_lightning.run.errors import UserError


def check_episode_fits(
    images_per_class: Tensor, spec: EpisodeSpec, split: str, class_groups: Tensor | None = None
) -> None:
    """Raises a :class:`UserError` saying how to fix ``spec`` when ``split`` cannot provide such episodes."""
    episodes, option = episode_role(split)
    num_classes = len(images_per_class)
    largest = int(torch.bincount(class_groups).max()) if class_groups is not None else None
    if largest is not None and spec.way > largest:
        raise UserError(
            f"{episodes} are {spec.way}-way within one group (alphabet), but the largest group of the {split} "
            f"split has {largest} classes: set --{option}.way to at most {largest}, or "
            "--data.evaluation_within_group=false."
        )
    if spec.way > num_classes:
        raise UserError(
            f"{episodes} are {spec.way}-way, but the {split} split has only {num_classes} classes: "
            f"set --{option}.way to at most {num_classes}."
        )
    fewest = int(images_per_class.min())
    if spec.images_per_class > fewest:
        raise UserError(
            f"{episodes} take shot={spec.shot} + query={spec.query} = {spec.images_per_class} images per class, but "
            f"some classes of the {split} split have only {fewest}: lower --{option}.shot and --{option}.query "
            f"to a sum of at most {fewest}."
        )


def episode_role(split: str) -> tuple[str, str]:
    """Which episodes ``split`` draws, in words, and the option that sets their way, shot and query."""
    if split == "train":
        return "Training episodes", "data.train"
    return f"Evaluation episodes ({'validation' if split == 'val' else split})", "data.evaluation"


def _mixed_words(seed: int, stream: int, key: int) -> tuple[int, int]:
    """Two 32-bit words that depend only on the three arguments (well mixed, no collisions in practice)."""
    state = np.random.SeedSequence([seed, stream, key]).generate_state(2, np.uint32)
    return int(state[0]), int(state[1])


def episode_generator(seed: int, stream: int, key: int) -> torch.Generator:
    """A CPU generator whose state depends only on its three arguments."""
    high, low = _mixed_words(seed, stream, key)
    return torch.Generator().manual_seed(high << 32 | low)


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
    """Yields ``(image_indices, class_ids, key)`` for each batch key given by ``keys()``.

    A batch is one episode ([way, shot + query] indices, [way] class ids) or, with ``tasks_per_batch`` T > 1,
    T episodes stacked ([T, way, shot + query], [T, way]) keyed ``batch_key * T + t``; ``key`` is the batch key
    (an int), from which the data module derives the episode's ``seed``. With ``class_groups``,
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

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, int]]:
        for key in self.keys():
            if self.tasks_per_batch == 1:
                yield *self._episode(key), key
            else:
                tasks = [self._episode(key * self.tasks_per_batch + t) for t in range(self.tasks_per_batch)]
                yield torch.stack([t[0] for t in tasks]), torch.stack([t[1] for t in tasks]), key

    def _episode(self, key: int) -> tuple[Tensor, Tensor]:
        generator = episode_generator(self.seed, self.stream, key)
        return sample_episode(self.class_offsets, self.spec, generator, self.class_groups)


class ImageBatchStream(IterableDataset):
    """Yields ``(image_indices [B], class_ids [B])``: mini-batches of distinct images from all classes.

    Like :class:`EpisodeStream`, each batch is a pure function of ``(seed, stream, key)`` (keys from ``keys()``),
    so ranks draw distinct batches and a resumed run continues the same stream. Within a batch images are
    distinct; across batches they are drawn independently (not epoch by epoch), which keeps batches stateless.
    """

    def __init__(
        self, class_offsets: Tensor, batch_size: int, seed: int, stream: int, keys: Callable[[], range]
    ) -> None:
        num_images = int(class_offsets[-1])
        if not 1 <= batch_size <= num_images:
            raise ValueError(
                f"pretrain_batch_size must be between 1 and the {num_images} training images, got {batch_size}."
            )
        self.class_offsets = class_offsets
        self.batch_size = batch_size
        self.seed = seed
        self.stream = stream
        self.keys = keys

    def __len__(self) -> int:
        return len(self.keys())

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        num_images = int(self.class_offsets[-1])
        for key in self.keys():
            generator = episode_generator(self.seed, self.stream, key)
            indices = torch.randperm(num_images, generator=generator)[: self.batch_size]
            yield indices, torch.bucketize(indices, self.class_offsets[1:], right=True)


def mixed_seed(seed: int, stream: int, key: int) -> int:
    """A 63-bit seed that depends only on the three arguments (the mixing of :func:`episode_generator`)."""
    high, low = _mixed_words(seed, stream, key)
    return (high << 31 | low) & (2**63 - 1)


class DeviceEpisodeSampler:
    """Draws training episodes on the compute device, so that no host work or copy sits in a training step.

    Same distribution as :func:`sample_episode` (``way`` distinct classes uniformly, ``shot + query`` distinct
    images of each uniformly) but another random stream: the device generator is re-seeded from
    ``(seed, stream, key)`` for every batch, which keeps batches stateless (resume, distinct ranks) without any
    host synchronisation. Validation and test episodes keep the host sampler, so they stay identical on every device.
    """

    def __init__(
        self, class_offsets: Tensor, spec: EpisodeSpec, seed: int, stream: int, tasks_per_batch: int = 1
    ) -> None:
        self.spec = spec
        self.seed = seed
        self.stream = stream
        self.tasks = tasks_per_batch
        self._offsets_cpu = class_offsets
        self._max_images = int((class_offsets[1:] - class_offsets[:-1]).max())
        self._on: dict[torch.device, tuple[Tensor, Tensor, torch.Generator]] = {}

    def __call__(self, key: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Image indices [T, way, shot + query] and class ids [T, way] (without T when ``tasks_per_batch`` is 1)."""
        offsets, counts, generator = self._state(device)
        generator.manual_seed(mixed_seed(self.seed, self.stream, key))
        way, tasks = self.spec.way, self.tasks
        # a uniformly random subset of classes: the `way` smallest of independent uniform scores
        class_ids = torch.rand(tasks, len(counts), generator=generator, device=device).topk(way, largest=False).indices
        scores = torch.rand(tasks, way, self._max_images, generator=generator, device=device)
        slots = torch.arange(self._max_images, device=device)
        scores.masked_fill_(slots >= counts[class_ids].unsqueeze(-1), 2.0)  # slots past a class's images: never drawn
        within = scores.topk(self.spec.images_per_class, largest=False, sorted=True).indices
        indices = offsets[class_ids].unsqueeze(-1) + within
        return (indices[0], class_ids[0]) if tasks == 1 else (indices, class_ids)

    def _state(self, device: torch.device) -> tuple[Tensor, Tensor, torch.Generator]:
        if device not in self._on:
            offsets = self._offsets_cpu.to(device)
            self._on[device] = (offsets, offsets[1:] - offsets[:-1], torch.Generator(device=device))
        return self._on[device]


class KeyStream(IterableDataset):
    """Yields only the batch keys (Python ints); :class:`DeviceEpisodeSampler` turns them into episodes."""

    def __init__(self, keys: Callable[[], range]) -> None:
        self.keys = keys

    def __len__(self) -> int:
        return len(self.keys())

    def __iter__(self) -> Iterator[int]:
        return iter(self.keys())
