"""CUB-200-2011 (Wah et al. 2011): 11,788 photos of 200 bird species, with the few-shot class split of Chen et al.
2019 ("A Closer Look at Few-shot Classification"): 100 / 50 / 50 species for train / val / test.

Chen et al. sort the 200 class folders by name (``001.Black_footed_Albatross`` ... ``200.Common_Yellowthroat``) and
send the class at (0-based) index i to train when i is even, to val when i % 4 == 1 and to test when i % 4 == 3.
The photos are read from ``<root>/cub200/CUB_200_2011/images/<class>/*.jpg`` or from the official
``CUB_200_2011.tgz`` (downloaded from CaltechDATA when absent).
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path
from typing import Any

from fsl_lightning.data.datasets.archives import download_file, tar_member_bytes
from fsl_lightning.data.datasets.base import ClassImages
from fsl_lightning.data.datasets.natural import (
    ImageSource,
    NaturalImageDataset,
    decode_classes,
    files_by_class,
    path_stamp,
)
from fsl_lightning.data.images import IMAGE_SUFFIXES
from fsl_lightning.data.roots import DatasetNotFoundError, data_root

TOP = "CUB_200_2011"
TARBALL = f"{TOP}.tgz"
DOWNLOAD_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
DOWNLOAD_MD5 = "97eceeb196236b17998738112f37df78"  # the one CaltechDATA publishes for it
NUM_CLASSES = 200
CLASS_FOLDER = re.compile(r"(\d{3})\.\S+")  # 001.Black_footed_Albatross


def chen_split_of(index: int) -> str:
    """The split of the class at ``index`` (0-based) among the sorted class folders."""
    if index % 2 == 0:
        return "train"
    return "val" if index % 4 == 1 else "test"


def chen_split(class_folders: list[str]) -> dict[str, list[str]]:
    """Chen et al.'s split of the class folder names (see the module docstring)."""
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for index, name in enumerate(sorted(class_folders)):
        split[chen_split_of(index)].append(name)
    return split


class CUB200(NaturalImageDataset):
    """CUB-200-2011 with Chen et al.'s class split, from ``<root>/cub200/``: the extracted ``CUB_200_2011/``
    folder or the official ``CUB_200_2011.tgz``.

    Args:
        image_size: side of the square RGB images (84, as miniImageNet, by default).
        root: data root; default ``$FSL_DATA_ROOT``, else the user cache directory.
        download: fetch the official tarball from CaltechDATA when no copy is found.
    """

    cache_name = "cub200-chen2019"

    def __init__(self, image_size: int = 84, root: str | None = None, download: bool = True) -> None:
        super().__init__(image_size)
        self.folder = data_root(root) / "cub200"
        self.download = download

    def source_stamp(self) -> Any:
        return path_stamp(self._source())

    def decode_split(self, split: str) -> ClassImages:
        source = self._source()
        sources = self._folder_sources(source, split) if source.is_dir() else self._tar_sources(source, split)
        names = sorted(sources)
        return decode_classes(names, [sources[name] for name in names], self.image_size)

    def _source(self) -> Path:
        images = self.folder / TOP / "images"
        for candidate in (images, self.folder / TARBALL):
            if candidate.exists():
                return candidate
        hint = (
            f"CUB-200-2011 not found: expected the official {TARBALL} ({DOWNLOAD_URL}) at {self.folder / TARBALL}, or "
            f"its extracted folder {images}/<NNN.Class_Name>/*.jpg. Put one of them there, or point the data root at "
            "the folder holding cub200/ (dataset `root` or FSL_DATA_ROOT)."
        )
        if not self.download:
            raise DatasetNotFoundError(hint + " Downloading is off (download: false).")
        try:
            download_file(DOWNLOAD_URL, self.folder / TARBALL, DOWNLOAD_MD5, timeout_s=120.0)
        except OSError as error:
            raise DatasetNotFoundError(f"{hint} Downloading {DOWNLOAD_URL} failed: {error}") from error
        return self.folder / TARBALL

    def _folder_sources(self, images: Path, split: str) -> dict[str, list[ImageSource]]:
        files = files_by_class(images, IMAGE_SUFFIXES)
        self._check_classes(list(files), images)
        return {name: [(path, str(path)) for path in files[name]] for name in chen_split(list(files))[split]}

    def _tar_sources(self, tarball: Path, split: str) -> dict[str, list[ImageSource]]:
        """The JPEG bytes of the classes of ``split``, read in one pass over the (streamed) tarball.

        The split of a class follows from its number (folder ``NNN.Name`` is at sorted index NNN - 1 once
        :meth:`_check_classes` has passed), so only that split's photos are kept in memory.
        """
        all_classes: set[str] = set()
        kept: dict[str, list[ImageSource]] = {}
        try:
            with tarfile.open(tarball, mode="r|*") as stream:
                for member in stream:
                    parts = member.name.removeprefix("./").split("/")
                    if not (member.isfile() and len(parts) == 4 and parts[:2] == [TOP, "images"]):
                        continue
                    if not parts[3].lower().endswith(IMAGE_SUFFIXES) or parts[3].startswith("."):
                        continue
                    all_classes.add(parts[2])
                    number = CLASS_FOLDER.fullmatch(parts[2])
                    if number and chen_split_of(int(number.group(1)) - 1) == split:
                        data = tar_member_bytes(stream, member)
                        kept.setdefault(parts[2], []).append((data, f"{tarball}:{member.name}"))
        except (tarfile.TarError, OSError, EOFError) as error:
            message = f"{tarball} is not a readable tarball ({error}): delete it and download it again."
            raise DatasetNotFoundError(message) from error
        self._check_classes(sorted(all_classes), tarball)
        return {name: sorted(files, key=lambda source: source[1]) for name, files in sorted(kept.items())}

    def _check_classes(self, class_folders: list[str], where: Path) -> None:
        """Chen et al.'s split is defined by position: it needs exactly the 200 official folders, 001 to 200."""
        numbers = [CLASS_FOLDER.fullmatch(name) for name in sorted(class_folders)]
        expected = [f"{i:03d}" for i in range(1, NUM_CLASSES + 1)]
        if [match.group(1) if match else None for match in numbers] != expected:
            odd = [name for name, match in zip(sorted(class_folders), numbers) if not match][:5]
            unexpected = f"; unexpected: {', '.join(odd)}" if odd else ""
            raise DatasetNotFoundError(
                f"{where} holds {len(class_folders)} class folders, but CUB-200-2011 has {NUM_CLASSES}, named "
                f"001.Black_footed_Albatross to 200.Common_Yellowthroat{unexpected}. "
                f"The standard split is defined by their order: replace the copy with the official {TARBALL} "
                f"({DOWNLOAD_URL})."
            )
