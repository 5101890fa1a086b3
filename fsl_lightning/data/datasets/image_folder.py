"""A user's own images: one sub-folder per class, split into train / val / test classes by a seed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from fsl_lightning.data.datasets.base import ClassImages
from fsl_lightning.data.datasets.folder_split import folder_class_split, normalised
from fsl_lightning.data.datasets.natural import (
    DEFAULT_FRACTIONS,
    NaturalImageDataset,
    decode_classes,
    files_by_class,
    read_split_file,
)
from fsl_lightning.data.decoded_cache import folder_stamp
from fsl_lightning.data.images import IMAGE_SUFFIXES
from fsl_lightning.data.roots import DatasetNotFoundError


class ImageFolderDataset(NaturalImageDataset):
    """Classes from ``folder/<class>/<image files>``, any size, colour or grayscale (converted to RGB).

    The classes are split into train / val / test by ``split_seed`` and ``split_fractions``, each class placed by a
    hash of its name, so that adding class folders never moves another class
    (:mod:`~fsl_lightning.data.datasets.folder_split`); or read from ``split_file`` (JSON
    ``{"train": [...], "val": [...], "test": [...]}``). The seeded split is written to
    ``folder/fsl_split_seed<seed>.json`` when the folder is writable, and read back from there afterwards.
    Decoded images are cached; the cache is rebuilt when any image file is added, removed or changed.

    Args:
        folder: the folder with one sub-folder per class.
        image_size: side of the square RGB images.
        split_seed: seed of the class split.
        split_fractions: relative sizes of train, val and test.
        split_file: a class split to use instead of the seeded one.
    """

    cache_name = "imagefolder"

    def __init__(
        self,
        folder: str,
        image_size: int = 84,
        split_seed: int = 0,
        split_fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
        split_file: str | None = None,
    ) -> None:
        super().__init__(image_size)
        self.folder = Path(folder).expanduser()
        self.split_seed = split_seed
        self.split_fractions = tuple(split_fractions)
        normalised(self.split_fractions)  # a bad value fails here, before any folder is read
        self.split_file = Path(split_file).expanduser() if split_file else None
        self._class_split: dict[str, list[str]] | None = None
        self._stamp: Any = None

    def split_key(self) -> str:
        # The folder and the split identify the cache; every image file's size and time are in the stamp.
        identity = json.dumps([str(self.folder.resolve()), self.class_split()])
        return hashlib.sha1(identity.encode()).hexdigest()[:12]

    def source_stamp(self) -> Any:
        if self._stamp is None:  # one stat per image file: taken once per dataset object, as the split is
            self._stamp = folder_stamp(self._checked_folder(), IMAGE_SUFFIXES)
        return self._stamp

    def decode_split(self, split: str) -> ClassImages:
        files = files_by_class(self._checked_folder(), IMAGE_SUFFIXES)
        names = self.class_split()[split]
        unknown = [name for name in names if name not in files]
        if unknown:
            raise ValueError(
                f"The class split names classes that {self.folder} does not have: {', '.join(unknown[:5])}. "
                "Fix the names in the split file, or add those class folders."
            )
        empty = [name for name in names if not files[name]]
        if empty:
            raise ValueError(
                f"Class folders without images ({', '.join(IMAGE_SUFFIXES)}): {', '.join(empty[:5])}. "
                "Add images to them or delete the folders."
            )
        return decode_classes(names, [[(path, str(path)) for path in files[name]] for name in names], self.image_size)

    def class_split(self) -> dict[str, list[str]]:
        """The train / val / test class names, decided once per dataset object (a run sees one split)."""
        if self._class_split is None:
            if self.split_file is not None:
                self._class_split = read_split_file(self.split_file)
            else:
                classes = sorted(entry.name for entry in self._checked_folder().iterdir() if entry.is_dir())
                self._class_split = folder_class_split(self.folder, classes, self.split_seed, self.split_fractions)
        return self._class_split

    def _checked_folder(self) -> Path:
        if not self.folder.is_dir():
            raise DatasetNotFoundError(
                f"Image folder {self.folder} not found: point `folder` at a folder with one sub-folder of images per class."
            )
        return self.folder
