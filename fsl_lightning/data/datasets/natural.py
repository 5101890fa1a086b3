"""What the natural-image datasets share: RGB decoding at a fixed size, seeded class splits, split caching.

Natural images arrive in every size and some in grayscale; each is converted to RGB and resized (squashed)
to ``image_size`` x ``image_size``, as the miniImageNet images are, and stored as uint8. Random crops and
colour jitter are applied later, on the device, to training batches (:mod:`fsl_lightning.data.augment`).
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from fsl_lightning.data.datasets.base import SPLITS, ClassImages, FewShotDataset, check_split_name
from fsl_lightning.data.decoded_cache import cached, file_backed_uint8
from fsl_lightning.data.images import IMAGE_SUFFIXES, CorruptImageError, open_image, pil_to_uint8
from fsl_lightning.data.parallel_decode import decode_workers
from fsl_lightning.data.roots import DatasetNotFoundError

#: a source of one encoded image: file path or bytes, and a name for error messages
ImageSource = tuple[Path | bytes, str]

DEFAULT_FRACTIONS = (0.64, 0.16, 0.20)  # the miniImageNet proportions (64 / 16 / 20 classes)


def decode_rgb(data: Path | bytes, name: str, image_size: int) -> Tensor:
    """One encoded image (any size, grayscale or colour) as uint8 [3, image_size, image_size]."""
    image = open_image(data, name, "RGB")
    try:
        resized = image.resize((image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    except (OSError, ValueError) as error:
        raise CorruptImageError(f"Cannot resize image {name}: {error}.") from error
    return pil_to_uint8(resized)


def decode_classes(
    class_names: Sequence[str], sources: Sequence[Sequence[ImageSource]], image_size: int
) -> ClassImages:
    """Decodes every class's images (in parallel threads: PIL releases the GIL while it decodes and resizes a
    photo, the bulk of the work here, unlike Omniglot's tiny PNGs) into one split; as many threads as
    :func:`decode_workers` allows."""
    flat = [source for class_sources in sources for source in class_sources]
    for name, class_sources in zip(class_names, sources):
        if not class_sources:
            raise ValueError(f"Class {name!r} has no images: add images to it or remove it from the class split.")
    images = file_backed_uint8((len(flat), 3, image_size, image_size))  # streamed to disk: no split-sized copy

    def decode_into(index: int) -> None:
        images[index] = decode_rgb(flat[index][0], flat[index][1], image_size)

    with ThreadPoolExecutor(decode_workers()) as pool:
        for _ in pool.map(decode_into, range(len(flat)), chunksize=64):
            pass  # re-raises a failed decode here, with its file's name
    counts = torch.tensor([len(class_sources) for class_sources in sources])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    return ClassImages(images, offsets, list(class_names))


def seeded_class_split(
    class_names: Sequence[str], seed: int, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> dict[str, list[str]]:
    """Shuffles the sorted class names with ``seed`` and cuts them into train / val / test by ``fractions``.

    The same names and seed give the same split on every machine (NumPy's PCG64 stream is stable).
    Val and test sizes are rounded; train takes the rest, so no class is lost.
    """
    if len(fractions) != 3 or any(f <= 0 for f in fractions):
        raise ValueError(f"split fractions must be three positive numbers (train, val, test), got {fractions}.")
    names = sorted(class_names)
    total = sum(fractions)
    n_val = max(1, round(len(names) * fractions[1] / total))
    n_test = max(1, round(len(names) * fractions[2] / total))
    if n_val + n_test >= len(names):
        raise ValueError(
            f"{len(names)} classes are too few for a train / val / test split with fractions {tuple(fractions)}: "
            "each split needs at least one class and train more; add classes or give a split_file."
        )
    order = np.random.default_rng(seed).permutation(len(names))
    shuffled = [names[i] for i in order]
    test, val, train = shuffled[:n_test], shuffled[n_test : n_test + n_val], shuffled[n_test + n_val :]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def read_split_file(path: Path) -> dict[str, list[str]]:
    """A class split written as JSON ``{"train": [...], "val": [...], "test": [...]}``."""
    split = json.loads(path.read_text())
    if not set(SPLITS) <= set(split):  # other keys (a "source" note) are allowed
        raise ValueError(
            f"{path} must map each of {', '.join(SPLITS)} to a list of class names, e.g. "
            '{"train": ["cat", ...], "val": [...], "test": [...]}.'
        )
    return {name: list(split[name]) for name in SPLITS}


class NaturalImageDataset(FewShotDataset):
    """An RGB dataset whose splits are decoded once at ``image_size`` and cached on disk.

    Subclasses say where the files are (:meth:`source_stamp`, raising a helpful error when they are missing)
    and how to read one split (:meth:`decode_split`).
    """

    channels = 3

    def __init__(self, image_size: int = 84) -> None:
        if not 8 <= image_size <= 512:
            raise ValueError(f"image_size must be between 8 and 512 pixels, got {image_size}.")
        self.image_size = image_size
        self._splits: dict[str, ClassImages] = {}

    #: short name used for cache files
    cache_name: str = "dataset"

    @abstractmethod
    def source_stamp(self) -> Any:
        """Identifies the files on disk (path, size, time) so that the cache notices a replaced copy; finds
        (or downloads) them first, and raises :class:`DatasetNotFoundError` saying what to put where."""

    @abstractmethod
    def decode_split(self, split: str) -> ClassImages:
        """Reads and decodes one split from the files (called once; the result is cached)."""

    def split_key(self) -> str:
        """Extra words for the cache key (a split seed, a protocol...)."""
        return ""

    def prepare(self) -> None:
        for split in SPLITS:
            self.load_split(split)

    def load_split(self, split: str) -> ClassImages:
        check_split_name(split)
        if split not in self._splits:
            key = "-".join(filter(None, [self.cache_name, self.split_key(), split, str(self.image_size)]))
            payload = cached(key, self.source_stamp(), lambda: self.decode_split(split).as_payload())
            self._splits[split] = ClassImages.from_payload(payload)
        return self._splits[split]

    def decode_image(self, data: Path | bytes, name: str) -> Tensor:
        return decode_rgb(data, name, self.image_size)


def path_stamp(path: Path) -> tuple[str, int, int]:
    """(resolved path, size, modification time) of a file or folder."""
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def files_by_class(
    folder: Path, suffixes: Sequence[str], keep: Callable[[str], bool] = lambda _: True
) -> dict[str, list[Path]]:
    """Image files of each sub-folder of ``folder`` (one sub-folder per class), sorted."""
    classes: dict[str, list[Path]] = {}
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and keep(p.name)):
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in suffixes)
        classes[class_dir.name] = files
    return classes


def split_folder_classes(folder: Path) -> dict[str, dict[str, list[Path]]]:
    """The image files of each class of ``folder/{train,val,test}/<class>/``."""
    return {split: files_by_class(folder / split, IMAGE_SUFFIXES) for split in SPLITS}


def tree_stamp(folder: Path) -> list:
    """Stamps of the split folders and their class folders, so that the cache notices added or replaced classes."""
    stamps = []
    for split in SPLITS:
        class_folders = [p for p in (folder / split).iterdir() if p.is_dir()]
        newest = max((p.stat().st_mtime_ns for p in class_folders), default=0)
        stamps.append([*path_stamp(folder / split), len(class_folders), newest])
    return stamps


def check_class_split(
    classes: Mapping[str, Mapping[str, Any]], expected: Mapping[str, int], dataset: str, fix: str, disjoint: bool
) -> None:
    """Raises :class:`DatasetNotFoundError` unless each split has its standard number of classes, none empty
    (and, with ``disjoint``, no class in two splits): a copy made with another split must not pass for this one.

    ``classes`` maps each split to its classes' images (or image counts).
    """
    problems = [
        f"{split} has {len(classes[split])} classes instead of {count}"
        for split, count in expected.items()
        if len(classes[split]) != count
    ]
    empty = [f"{split}/{name}" for split in SPLITS for name, images in classes[split].items() if not images]
    if empty:
        problems.append(f"classes without images: {', '.join(empty[:5])}")
    if disjoint:
        shared = sorted(set().union(*(set(classes[a]) & set(classes[b]) for a, b in combinations(SPLITS, 2))))
        if shared:
            problems.append(f"classes in two splits: {', '.join(shared[:5])}")
    if problems:
        standard = " / ".join(str(count) for count in expected.values())
        raise DatasetNotFoundError(
            f"This {dataset} copy does not have the standard {standard} class split: {'; '.join(problems)}. "
            f"To fix it, {fix}."
        )
