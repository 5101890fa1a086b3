"""What every few-shot dataset provides: decoded images grouped by class, per split."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ClassImages:
    """All images of one split, decoded once, grouped by class.

    images:        uint8 [M, C, H, W]; the images of class ``c`` are
                   ``images[class_offsets[c] : class_offsets[c + 1]]``.
    class_offsets: long [num_classes + 1], starting at 0 and ending at M.
    class_names:   one readable name per class (for example ``Greek/character03/rot090``).
    class_groups:  optional long [num_classes]: a group id per class (Omniglot: its alphabet), for episodes
                   whose classes all come from one group.
    """

    images: Tensor
    class_offsets: Tensor
    class_names: list[str]
    class_groups: Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 [M, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.class_names) + 1 != len(self.class_offsets):
            raise ValueError("class_offsets must have one more entry than class_names")
        if int(self.class_offsets[-1]) != len(self.images):
            raise ValueError("class_offsets must end at the number of images")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def images_per_class(self) -> Tensor:
        return self.class_offsets[1:] - self.class_offsets[:-1]

    @staticmethod
    def from_groups(groups: list[Tensor], class_names: list[str], class_groups: Tensor | None = None) -> ClassImages:
        """Builds the split from one uint8 tensor [n_c, C, H, W] per class."""
        counts = torch.tensor([len(group) for group in groups], dtype=torch.long)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        return ClassImages(torch.cat(groups), offsets, list(class_names), class_groups)

    def as_payload(self) -> dict:
        """Tensors and plain data only, for the decoded-image cache (:func:`~fsl_lightning.data.decoded_cache.cached`)."""
        return {
            "images": self.images,
            "offsets": self.class_offsets,
            "names": self.class_names,
            "groups": self.class_groups,
        }

    @staticmethod
    def from_payload(payload: dict) -> ClassImages:
        """The split of :meth:`as_payload`, its tensors as they come (memory-mapped from the cache: shared, not copied)."""
        return ClassImages(payload["images"], payload["offsets"], payload["names"], payload.get("groups"))

    def joined_with(self, other: ClassImages) -> ClassImages:
        """The classes of both splits, this one's first (e.g. train + val: the final run of Snell et al., which
        trains on the validation classes too once the schedule is chosen). Group ids stay apart per split."""
        offsets = torch.cat([self.class_offsets, other.class_offsets[1:] + self.class_offsets[-1]])
        groups = None
        if self.class_groups is not None and other.class_groups is not None:
            first_free = int(self.class_groups.max()) + 1 if len(self.class_groups) else 0
            groups = torch.cat([self.class_groups, other.class_groups + first_free])
        return ClassImages(
            torch.cat([self.images, other.images]), offsets, self.class_names + other.class_names, groups
        )


class FewShotDataset(ABC):
    """A dataset with disjoint train / val / test classes.

    Subclasses find (or download) and validate the files, then decode each split once.
    """

    #: image channels (1 for grayscale, 3 for RGB)
    channels: int = 1

    @abstractmethod
    def prepare(self) -> None:
        """Downloads and decodes what is missing; run once per machine before :meth:`load_split`."""

    @abstractmethod
    def load_split(self, split: str) -> ClassImages:
        """The decoded classes of ``split`` (one of :data:`SPLITS`)."""

    @abstractmethod
    def decode_image(self, data: Path | bytes, name: str) -> Tensor:
        """One encoded image file (a path, or its bytes; ``name`` for error messages) as uint8 [C, H, W], pixel for
        pixel as :meth:`load_split` stores the dataset's own files: ``predict`` decodes a user's files with it, so
        that the files of a test episode give the test step's inputs."""


def check_split_name(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}: use one of {', '.join(SPLITS)}.")
