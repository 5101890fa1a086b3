"""Caltech-101 (Fei-Fei, Fergus & Perona 2004): 101 object classes, 31 to 800 photos each, of varied sizes.

Caltech-101 has no standard few-shot class split. This project defines one, seeded and written into the
repository (``fsl_lightning/data/splits/caltech101.json``, made by :func:`caltech101_split` with seed 0):
64 / 16 / 20 classes for train / val / test, the miniImageNet proportions. Two classes are left out:
``BACKGROUND_Google`` (clutter, not an object class) and ``Faces_easy`` (tighter crops of the same photos as
``Faces``: in different splits they would leak test images into training). Numbers on this split are not
comparable with miniImageNet numbers; report them as "Caltech-101, fsl_lightning split v1".
"""

from __future__ import annotations

import tarfile
import zipfile
from importlib import resources
from pathlib import Path
from typing import IO, Any

from fsl_lightning.data.datasets.archives import download_file, tar_member_bytes
from fsl_lightning.data.datasets.base import ClassImages
from fsl_lightning.data.datasets.natural import (
    ImageSource,
    NaturalImageDataset,
    decode_classes,
    files_by_class,
    path_stamp,
    read_split_file,
    seeded_class_split,
)
from fsl_lightning.data.images import IMAGE_SUFFIXES
from fsl_lightning.data.roots import DatasetNotFoundError, data_root

TOP = "101_ObjectCategories"
TARBALL = f"{TOP}.tar.gz"
OFFICIAL_ZIP = "caltech-101.zip"
DOWNLOAD_URL = "https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip"
DOWNLOAD_MD5 = "3138e1922a9193bfa496528edbbc45d0"  # CaltechDATA's, as torchvision.datasets.Caltech101 checks it
EXCLUDED = ("BACKGROUND_Google", "Faces_easy")
NUM_CLASSES = 101
SPLIT_SEED = 0


def caltech101_split(class_names: list[str], seed: int = SPLIT_SEED) -> dict[str, list[str]]:
    """The seeded 64 / 16 / 20 class split of the 100 classes kept (see the module docstring)."""
    kept = [name for name in class_names if name not in EXCLUDED]
    return seeded_class_split(kept, seed, fractions=(64, 16, 20))


def repository_split() -> dict[str, list[str]]:
    """The split written in the repository (the one every result is reported on)."""
    with resources.as_file(resources.files("fsl_lightning.data.splits") / "caltech101.json") as path:
        return read_split_file(path)


class Caltech101(NaturalImageDataset):
    """Caltech-101 from ``<root>/caltech101/``: the ``101_ObjectCategories/`` folder, or
    ``101_ObjectCategories.tar.gz``, or the official ``caltech-101.zip`` that holds it (downloaded when absent).

    Args:
        image_size: side of the square RGB images (84, as miniImageNet, by default).
        root: data root; default ``$FSL_DATA_ROOT``, else the user cache directory.
        download: fetch the official zip from CaltechDATA when no copy is found.
    """

    cache_name = "caltech101-v1"

    def __init__(self, image_size: int = 84, root: str | None = None, download: bool = True) -> None:
        super().__init__(image_size)
        self.folder = data_root(root) / "caltech101"
        self.download = download

    def source_stamp(self) -> Any:
        return path_stamp(self._source())

    def decode_split(self, split: str) -> ClassImages:
        wanted = repository_split()[split]
        sources = self._sources_by_class(set(wanted))
        missing = [name for name in wanted if name not in sources]
        if missing or len(sources) < NUM_CLASSES:
            raise DatasetNotFoundError(
                f"{self._source()} holds {len(sources)} Caltech-101 classes (expected {NUM_CLASSES} plus "
                f"BACKGROUND_Google){'; missing ' + ', '.join(missing[:5]) if missing else ''}. The copy is "
                f"incomplete: replace it with {TARBALL} from the official {OFFICIAL_ZIP} ({DOWNLOAD_URL})."
            )
        return decode_classes(wanted, [sources[name] for name in wanted], self.image_size)

    def _source(self) -> Path:
        for candidate in (self.folder / TOP, self.folder / TARBALL, self.folder / OFFICIAL_ZIP):
            if candidate.exists():
                return candidate
        hint = (
            f"Caltech-101 not found: expected {self.folder / TARBALL} (inside the official {OFFICIAL_ZIP}), "
            f"the zip itself, or the extracted folder {self.folder / TOP}/<class>/image_NNNN.jpg. Put one of them "
            "there, or point the data root at the folder holding caltech101/ (dataset `root` or FSL_DATA_ROOT)."
        )
        if not self.download:
            raise DatasetNotFoundError(hint + " Downloading is off (download: false).")
        try:
            download_file(DOWNLOAD_URL, self.folder / OFFICIAL_ZIP, DOWNLOAD_MD5, timeout_s=120.0)
        except OSError as error:
            raise DatasetNotFoundError(f"{hint} Downloading {DOWNLOAD_URL} failed: {error}") from error
        return self.folder / OFFICIAL_ZIP

    def _sources_by_class(self, wanted: set[str]) -> dict[str, list[ImageSource]]:
        """Every class of the copy, with the images of the ``wanted`` ones (the others' lists stay empty: an archive
        is read once per split, and only that split's photos are held in memory)."""
        source = self._source()
        if source.is_dir():
            return {
                name: [(path, str(path)) for path in files]
                for name, files in files_by_class(source, IMAGE_SUFFIXES).items()
            }
        if source.suffix != ".zip":
            return _tar_sources(source, str(source), wanted)
        try:
            with zipfile.ZipFile(source) as archive:
                inner = next((n for n in archive.namelist() if n.endswith(TARBALL)), None)
                if inner is None:
                    raise DatasetNotFoundError(f"{source} holds no {TARBALL}: it is not the official {OFFICIAL_ZIP}.")
                with archive.open(inner) as stream:
                    return _tar_sources(stream, f"{source}:{inner}", wanted)
        except zipfile.BadZipFile as error:
            raise DatasetNotFoundError(f"{source} is not a readable zip ({error}): download it again.") from error


def _tar_sources(source: Path | IO[bytes], where: str, wanted: set[str] | None = None) -> dict[str, list[ImageSource]]:
    """Every class of the tarball (a path or an open file, streamed in one pass), with the JPEG bytes of the
    ``wanted`` ones (all when ``None``)."""
    classes: dict[str, list[ImageSource]] = {}
    opened = {"name": source} if isinstance(source, Path) else {"fileobj": source}
    try:
        with tarfile.open(mode="r|gz", **opened) as stream:
            for member in stream:
                parts = member.name.split("/")
                is_photo = len(parts) == 3 and parts[0] == TOP and parts[2].lower().endswith(IMAGE_SUFFIXES)
                if member.isfile() and is_photo:
                    images = classes.setdefault(parts[1], [])
                    if wanted is None or parts[1] in wanted:
                        images.append((tar_member_bytes(stream, member), f"{where}:{member.name}"))
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DatasetNotFoundError(f"{where} is not a readable tar.gz ({error}): download it again.") from error
    return {name: sorted(files, key=lambda source: source[1]) for name, files in sorted(classes.items())}
