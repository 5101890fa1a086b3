"""CIFAR-FS (Bertinetto et al. 2019) and FC100 (Oreshkin et al. 2018): few-shot class splits of CIFAR-100, whose
100 classes have 600 photos of 32 x 32 pixels each (its train and test files pooled: classes, not photos, are split).

CIFAR-FS splits the classes at random, 64 / 16 / 20. FC100 splits CIFAR-100's 20 superclasses 12 / 4 / 4
(60 / 20 / 20 classes), so that no test class shares a superclass with a training class. Both splits are written in
the repository (``fsl_lightning/data/splits/cifar_fs.json`` and ``fc100.json``).

Both read the official CIFAR-100 python archive, ``<root>/cifar100/cifar-100-python.tar.gz`` (downloaded when
absent), or its extracted folder ``cifar-100-python/`` with the pickles ``train``, ``test`` and ``meta``.
"""

from __future__ import annotations

import pickle
import tarfile
from abc import abstractmethod
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fsl_lightning.data.datasets.archives import download_file
from fsl_lightning.data.datasets.base import SPLITS, ClassImages
from fsl_lightning.data.datasets.natural import NaturalImageDataset, check_class_split, path_stamp, read_split_file
from fsl_lightning.data.images import open_image, pil_to_uint8, resize_uint8
from fsl_lightning.data.roots import DatasetNotFoundError, data_root

TOP = "cifar-100-python"
ARCHIVE = f"{TOP}.tar.gz"
DOWNLOAD_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
DOWNLOAD_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"  # torchvision.datasets.CIFAR100.tgz_md5
PARTS = ("train", "test", "meta")
POOLED = ("train", "test")  # the image files: a class's 500 train images come first, then its 100 test images
SIDE = 32  # CIFAR's image side
OFFICIAL = f"the official {ARCHIVE} ({DOWNLOAD_URL})"


@dataclass(frozen=True)
class CIFAR100:
    """All 60,000 CIFAR-100 images (train file, then test file) with their labels."""

    images: Tensor  # uint8 [N, 3, 32, 32]
    fine_labels: Tensor  # long [N], index into fine_names
    coarse_labels: Tensor  # long [N], index into coarse_names
    fine_names: list[str]
    coarse_names: list[str]

    def images_per_class(self) -> dict[str, int]:
        counts = torch.bincount(self.fine_labels, minlength=len(self.fine_names)).tolist()
        return dict(zip(self.fine_names, counts))

    def superclass_of(self) -> dict[str, str]:
        """The superclass of each class, as the labels give it."""
        pairs = torch.unique(torch.stack([self.fine_labels, self.coarse_labels]), dim=1).tolist()
        superclass: dict[str, str] = {}
        for fine, coarse in zip(*pairs):
            if self.fine_names[fine] in superclass:
                raise DatasetNotFoundError(
                    f"CIFAR-100 class {self.fine_names[fine]!r} has images in two superclasses: the copy is damaged. "
                    f"Replace it with {OFFICIAL}."
                )
            superclass[self.fine_names[fine]] = self.coarse_names[coarse]
        return superclass


class CIFAR100FewShot(NaturalImageDataset):
    """What CIFAR-FS and FC100 share: finding (or downloading) CIFAR-100 and cutting classes out of it.

    Args:
        image_size: side of the square RGB images (32, CIFAR's own size, by default; other sizes are resized).
        root: data root; default ``$FSL_DATA_ROOT``, else the user cache directory.
        download: fetch the official archive from the University of Toronto when no copy is found.
    """

    #: classes per split of the standard split
    classes_per_split: dict[str, int]

    def __init__(self, image_size: int = SIDE, root: str | None = None, download: bool = True) -> None:
        super().__init__(image_size)
        self.folder = data_root(root) / "cifar100"
        self.download = download

    @abstractmethod
    def class_split(self, cifar: CIFAR100) -> dict[str, list[str]]:
        """The class names of train, val and test."""

    def source_stamp(self) -> Any:
        return [path_stamp(path) for path in self._source_files()]

    def decode_split(self, split: str) -> ClassImages:
        cifar = read_cifar100(self._source())
        names = self._checked_split(cifar)[split]
        index = {name: i for i, name in enumerate(cifar.fine_names)}
        # One class at a time: resizing a whole split at once would need gigabytes of float pixels.
        groups = [resize_uint8(cifar.images[cifar.fine_labels == index[name]], self.image_size) for name in names]
        return ClassImages.from_groups(groups, names)

    def decode_image(self, data: Path | bytes, name: str) -> Tensor:
        # CIFAR's images arrive as 32x32 arrays, resized by area averaging (decode_split): a file gets the same.
        return resize_uint8(pil_to_uint8(open_image(data, name, "RGB"))[None], self.image_size)[0]

    def _checked_split(self, cifar: CIFAR100) -> dict[str, list[str]]:
        split = self.class_split(cifar)
        counts = cifar.images_per_class()
        unknown = [name for names in split.values() for name in names if name not in counts]
        if unknown:
            raise DatasetNotFoundError(
                f"{self._source()} has no CIFAR-100 class named {', '.join(unknown[:5])}: it is not CIFAR-100. "
                f"Replace it with {OFFICIAL}."
            )
        classes = {name: {c: counts[c] for c in split[name]} for name in SPLITS}
        fix = f"replace it with {OFFICIAL}"
        check_class_split(classes, self.classes_per_split, type(self).__name__, fix, disjoint=True)
        return split

    def _source(self) -> Path:
        for candidate in (self.folder / TOP, self.folder / ARCHIVE):
            if candidate.exists():
                return candidate
        hint = (
            f"CIFAR-100 not found: expected {OFFICIAL} at {self.folder / ARCHIVE}, or its extracted folder "
            f"{self.folder / TOP}/ with the files train, test and meta. Put one of them there, or point the data root "
            "at the folder holding cifar100/ (dataset `root` or FSL_DATA_ROOT)."
        )
        if not self.download:
            raise DatasetNotFoundError(hint + " Downloading is off (download: false).")
        try:
            download_file(DOWNLOAD_URL, self.folder / ARCHIVE, DOWNLOAD_MD5, timeout_s=120.0)
        except OSError as error:
            raise DatasetNotFoundError(f"{hint} Downloading {DOWNLOAD_URL} failed: {error}") from error
        return self.folder / ARCHIVE

    def _source_files(self) -> list[Path]:
        source = self._source()
        if not source.is_dir():
            return [source]
        missing = [str(source / part) for part in PARTS if not (source / part).is_file()]
        if missing:
            raise DatasetNotFoundError(f"CIFAR-100 is incomplete: {', '.join(missing)} missing. Extract {OFFICIAL}.")
        return [source / part for part in PARTS]


class CIFARFS(CIFAR100FewShot):
    """CIFAR-FS (Bertinetto et al. 2019): 64 / 16 / 20 CIFAR-100 classes, from ``<root>/cifar100/``."""

    cache_name = "cifar-fs"
    classes_per_split = {"train": 64, "val": 16, "test": 20}

    def class_split(self, cifar: CIFAR100) -> dict[str, list[str]]:
        return repository_split("cifar_fs.json")


class FC100(CIFAR100FewShot):
    """FC100 (Oreshkin et al. 2018): the classes of 12 / 4 / 4 CIFAR-100 superclasses, 60 / 20 / 20 classes, from
    ``<root>/cifar100/``."""

    cache_name = "fc100"
    classes_per_split = {"train": 60, "val": 20, "test": 20}

    def class_split(self, cifar: CIFAR100) -> dict[str, list[str]]:
        superclasses = repository_split("fc100.json")
        unknown = [name for names in superclasses.values() for name in names if name not in cifar.coarse_names]
        if unknown:
            raise DatasetNotFoundError(
                f"{self._source()} has no CIFAR-100 superclass named {', '.join(unknown)}: it is not CIFAR-100. "
                f"Replace it with {OFFICIAL}."
            )
        superclass_of = cifar.superclass_of()
        return {
            split: sorted(name for name, superclass in superclass_of.items() if superclass in superclasses[split])
            for split in SPLITS
        }


def repository_split(file_name: str) -> dict[str, list[str]]:
    """A split written in the repository (``fsl_lightning/data/splits/``)."""
    with resources.as_file(resources.files("fsl_lightning.data.splits") / file_name) as path:
        return read_split_file(path)


def read_cifar100(source: Path) -> CIFAR100:
    """CIFAR-100 from the official archive or its extracted folder, train and test images pooled."""
    parts = _read_parts(source)
    fine_names = [_text(name) for name in _entry(parts["meta"], "fine_label_names", source)]
    coarse_names = [_text(name) for name in _entry(parts["meta"], "coarse_label_names", source)]
    try:
        pooled = {
            key: np.concatenate([np.asarray(_entry(parts[part], key, source), dtype=dtype) for part in POOLED])
            for key, dtype in (("data", np.uint8), ("fine_labels", np.int64), ("coarse_labels", np.int64))
        }
    except (ValueError, TypeError) as error:  # arrays of other shapes or types than CIFAR's
        raise DatasetNotFoundError(f"{source} is not CIFAR-100 ({error}). Replace it with {OFFICIAL}.") from error
    problems = _format_problems(pooled, len(fine_names), len(coarse_names))
    if problems:
        raise DatasetNotFoundError(f"{source} is not CIFAR-100: {'; '.join(problems)}. Replace it with {OFFICIAL}.")
    return CIFAR100(
        images=torch.from_numpy(pooled["data"].reshape(-1, 3, SIDE, SIDE)),
        fine_labels=torch.from_numpy(pooled["fine_labels"]),
        coarse_labels=torch.from_numpy(pooled["coarse_labels"]),
        fine_names=fine_names,
        coarse_names=coarse_names,
    )


def _format_problems(pooled: dict[str, np.ndarray], num_fine: int, num_coarse: int) -> list[str]:
    """What keeps the arrays from being CIFAR-100's (nothing when they are)."""
    data, fine, coarse = pooled["data"], pooled["fine_labels"], pooled["coarse_labels"]
    problems = []
    if num_fine != 100 or num_coarse != 20:
        problems.append(f"{num_fine} classes in {num_coarse} superclasses instead of 100 in 20")
    if data.ndim != 2 or data.shape[1] != 3 * SIDE * SIDE:
        problems.append(f"images of shape {list(data.shape)} instead of [N, {3 * SIDE * SIDE}]")
    if len(fine) != len(data) or len(coarse) != len(data):
        problems.append(f"{len(data)} images but {len(fine)} class and {len(coarse)} superclass labels")
    elif len(data) and (fine.min() < 0 or fine.max() >= num_fine or coarse.min() < 0 or coarse.max() >= num_coarse):
        problems.append("labels outside the class lists")
    return problems


def _read_parts(source: Path) -> dict[str, Any]:
    """The unpickled ``train``, ``test`` and ``meta`` files, from the folder or the archive."""
    if source.is_dir():
        return {part: _unpickle((source / part).read_bytes(), source / part) for part in PARTS}
    try:
        with tarfile.open(source, mode="r:*") as archive:
            return {part: _unpickle(_member_bytes(archive, part, source), source) for part in PARTS}
    except (tarfile.TarError, OSError, EOFError) as error:
        message = f"{source} is not a readable tar.gz ({error}): delete it and download it again."
        raise DatasetNotFoundError(message) from error


def _member_bytes(archive: tarfile.TarFile, part: str, source: Path) -> bytes:
    try:
        stream = archive.extractfile(f"{TOP}/{part}")
    except KeyError:
        stream = None
    if stream is None:
        raise DatasetNotFoundError(f"{source} holds no {TOP}/{part}: it is not {OFFICIAL}.")
    return stream.read()


def _unpickle(data: bytes, where: Path) -> Any:
    # The CIFAR pickles were written by Python 2: latin1 reads their strings and arrays byte for byte.
    try:
        return pickle.loads(data, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        message = f"{where} is not a CIFAR-100 pickle ({error}). Replace it with {OFFICIAL}."
        raise DatasetNotFoundError(message) from error


def _entry(part: Any, key: str, source: Path) -> Any:
    """``part[key]``, whether the pickle's keys are text or bytes."""
    if isinstance(part, dict):
        for candidate in (key, key.encode()):
            if candidate in part:
                return part[candidate]
    raise DatasetNotFoundError(f"{source}: a CIFAR-100 file has no {key!r} entry. Replace it with {OFFICIAL}.")


def _text(name: Any) -> str:
    return name.decode("utf-8", errors="replace") if isinstance(name, bytes) else str(name)
