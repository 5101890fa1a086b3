"""Omniglot (Lake et al. 2015): 1623 handwritten characters from 50 alphabets, 20 drawers each.

Two standard protocols:

* ``vinyals``: the class split of Vinyals et al. (2016) used by Prototypical Networks, MAML and Relation
  Networks: 1028 / 172 / 423 characters for train / val / test, each character in 4 rotations
  (0, 90, 180, 270 degrees) as separate classes, images 28x28.
* ``lake``: test on the 20 evaluation alphabets (659 characters) of the official background / evaluation
  layout of Lake et al. (2015); train and validate on the 30 background alphabets (964 characters);
  images up to 105x105. Validation classes are a fixed quarter of the background alphabets
  (:data:`LAKE_VALIDATION_ALPHABETS`: 8 alphabets, 241 characters, every fourth in name order), training
  classes the other 22 (723 characters), so that no checkpoint selection or early stopping sees a test class.
  Koch et al. (2015, Siamese networks) likewise held background data out for validation: 30 training and
  10 validation alphabets of their 40 background alphabets (3 : 1, as here), monitoring one-shot trials on
  the validation alphabets. They also kept the drawers apart (12 for training, 4 for validation); here every
  class keeps its 20 drawers, since the validation classes are disjoint from training ones anyway.

Images are stored with ink = 255 on a background of 0 (the PNGs are inverted), as in the ProtoNet code.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from fsl_lightning.data.datasets.archives import DownloadCheckError, ImageArchive, download_file, locate_archive
from fsl_lightning.data.datasets.base import ClassImages, FewShotDataset, check_split_name
from fsl_lightning.data.decoded_cache import cached, file_backed_uint8
from fsl_lightning.data.images import open_image, pil_to_uint8, resize_uint8
from fsl_lightning.data.parallel_decode import decode_workers, in_processes, split_evenly
from fsl_lightning.data.roots import DatasetNotFoundError, data_root

log = logging.getLogger(__name__)

DRAWERS = 20
NATIVE_SIZE = 105
#: official archive name -> number of characters it must hold
PARTS = {"images_background": 964, "images_evaluation": 659}
ARCHIVE_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/{part}.zip"
#: md5 of the official archives, as torchvision.datasets.Omniglot.zips_md5 records them (a downloaded copy is
#: checked; one already on disk is accepted by its layout, since repacked zips differ byte-wise)
ARCHIVE_MD5 = {
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}
VINYALS_SPLIT_URL = (
    "https://raw.githubusercontent.com/jakesnell/prototypical-networks/master/data/omniglot/splits/vinyals/{split}.txt"
)
ROTATIONS = {"rot000": 0, "rot090": 1, "rot180": 2, "rot270": 3}
#: classes (character x rotation) listed by each split file of Vinyals et al.'s split: it has no published checksum,
#: so a downloaded file is checked by its content
VINYALS_SPLIT_CLASSES = {"train": 4112, "val": 688, "test": 1692, "trainval": 4800}
#: background alphabets held out as the validation classes of the ``lake`` protocol (every fourth of the 30,
#: in name order, from the second: 241 of the 964 background characters; 6 of them have 20 characters or more,
#: enough for 20-way trials within one alphabet)
LAKE_VALIDATION_ALPHABETS = (
    "Anglo-Saxon_Futhorc",
    "Balinese",
    "Burmese_(Myanmar)",
    "Grantha",
    "Inuktitut_(Canadian_Aboriginal_Syllabics)",
    "Latin",
    "Ojibwe_(Canadian_Aboriginal_Syllabics)",
    "Tifinagh",
)


class Omniglot(FewShotDataset):
    """Omniglot from ``<root>/omniglot/`` (official zips or their extracted folders).

    Args:
        protocol: ``vinyals`` or ``lake`` (see the module docstring).
        image_size: side of the square images; default 28 for ``vinyals`` and 105 for ``lake``.
        root: data root; default ``$FSL_DATA_ROOT``, else the user cache directory.
        download: fetch the official archives when they are missing.
    """

    channels = 1

    def __init__(
        self,
        protocol: Literal["vinyals", "lake"] = "vinyals",
        image_size: int | None = None,
        root: str | None = None,
        download: bool = True,
    ) -> None:
        if protocol not in ("vinyals", "lake"):
            raise ValueError(f"Unknown Omniglot protocol {protocol!r}: use 'vinyals' or 'lake'.")
        self.protocol = protocol
        self.image_size = image_size or (28 if protocol == "vinyals" else NATIVE_SIZE)
        if not 1 <= self.image_size <= NATIVE_SIZE:
            raise ValueError(f"Omniglot image_size must be between 1 and {NATIVE_SIZE}, got {self.image_size}.")
        self.root = data_root(root) / "omniglot"
        self.download = download
        self._loaded: dict[str, tuple[list[str], Tensor]] = {}  # archive -> decoded characters, read once
        self._stamps: dict[str, list] = {}  # archive -> its stamp

    def prepare(self) -> None:
        for part in PARTS:
            self._characters(part)
        if self.protocol == "vinyals":
            for split in ("train", "val", "test"):
                self._vinyals_split_file(split)

    def load_split(self, split: str) -> ClassImages:
        """The split as its own cache file (built once from the archives' cached characters), so that every process
        of a machine maps the same file instead of assembling a copy of its own."""
        check_split_name(split)
        build = self._vinyals_split if self.protocol == "vinyals" else self._lake_split
        key = f"omniglot-{self.protocol}-{split}-{self.image_size}"
        return ClassImages.from_payload(cached(key, self._split_stamp(split), lambda: build(split).as_payload()))

    def _split_stamp(self, split: str) -> list:
        """What the split is built from: its archives (read, or checked against their cache, in the order that
        building needs them, so that a broken one is reported as building would) and its class list."""
        if self.protocol == "lake":
            parts = ["images_evaluation" if split == "test" else "images_background"]
            return [[self._archive_stamp(part) for part in parts], sorted(LAKE_VALIDATION_ALPHABETS)]
        archives = [self._archive_stamp(part) for part in PARTS]
        return [archives, self._vinyals_split_file(split).read_text().split()]

    def _archive_stamp(self, part: str) -> list:
        self._characters(part)
        return self._stamps[part]

    def _archive(self, part: str) -> ImageArchive:
        url = ARCHIVE_URL.format(part=part) if self.download else None
        return locate_archive(self.root, part, url, ARCHIVE_MD5[part])

    def decode_image(self, data: Path | bytes, name: str) -> Tensor:
        return decode_character_image(data, name, self.image_size)

    def _lake_split(self, split: str) -> ClassImages:
        """Test: the evaluation alphabets; val: :data:`LAKE_VALIDATION_ALPHABETS`; train: the other background ones."""
        names, images = self._characters("images_evaluation" if split == "test" else "images_background")
        if split != "test":
            held_out = set(LAKE_VALIDATION_ALPHABETS)
            keep = [(name.split("/")[0] in held_out) == (split == "val") for name in names]
            names = [name for name, kept in zip(names, keep) if kept]
            images = images[torch.tensor(keep)]
        return ClassImages.from_groups(list(images), names, alphabet_ids(names))

    def _vinyals_split(self, split: str) -> ClassImages:
        by_name: dict[str, Tensor] = {}
        for part in PARTS:
            names, images = self._characters(part)
            by_name.update(zip(names, images))
        class_names = self._vinyals_split_file(split).read_text().split()
        groups = []
        for class_name in class_names:
            character, _, rotation = class_name.rpartition("/")
            if character not in by_name or rotation not in ROTATIONS:
                raise ValueError(f"Vinyals split entry {class_name!r} names no Omniglot character and rotation.")
            groups.append(torch.rot90(by_name[character], ROTATIONS[rotation], dims=(-2, -1)))
        return ClassImages.from_groups(groups, class_names, alphabet_ids(class_names))

    def _characters(self, part: str) -> tuple[list[str], Tensor]:
        """Names ``Alphabet/characterNN`` and images uint8 [characters, 20, 1, S, S] of one archive."""
        if part not in self._loaded:
            archive = self._archive(part)
            key = f"omniglot-{part}-{self.image_size}"
            self._stamps[part] = list(archive.stamp())
            payload = cached(key, self._stamps[part], lambda: _decode_characters(archive, part, self.image_size))
            self._loaded[part] = payload["names"], payload["images"]
        return self._loaded[part]

    def _vinyals_split_file(self, split: str) -> Path:
        path = self.root / "vinyals_splits" / f"{split}.txt"
        if not path.exists():
            if not self.download:
                raise DatasetNotFoundError(_missing_split_message(path))
            try:
                download_file(VINYALS_SPLIT_URL.format(split=split), path, md5=None, check=vinyals_split_check(split))
            except OSError as error:
                raise DatasetNotFoundError(f"{_missing_split_message(path)} (download failed: {error})") from error
        return path


def _decode_characters(archive: ImageArchive, part: str, image_size: int) -> dict:
    files_by_character = archive.files_by_folder(depth=2)
    _validate(archive, part, files_by_character)
    names = sorted(files_by_character)
    images = decode_character_groups(archive, [sorted(files_by_character[name]) for name in names], image_size)
    log.info("Decoded %d Omniglot characters from %s", len(names), archive.path)
    return {"names": names, "images": images}


def decode_character_groups(
    archive: ImageArchive, groups: list[list[str]], image_size: int, workers: int | None = None
) -> Tensor:
    """The members of each group (one character's drawers, as many in every group) decoded as uint8
    [groups, drawers, 1, image_size, image_size], by ``workers`` processes (default :func:`decode_workers`), each
    decoding a run of groups with :func:`decode_character_image`, as the serial decode does."""
    workers = decode_workers() if workers is None else workers
    pieces = 4 * workers if workers > 1 else 1  # a few chunks per worker even out their speeds
    jobs = [(archive.path, archive.top, chunk, image_size) for chunk in split_evenly(groups, pieces)]
    drawers = len(groups[0]) if groups else 0
    images = file_backed_uint8((len(groups), drawers, 1, image_size, image_size))  # no archive-sized copy
    done = 0
    for run in in_processes(_decode_group_run, jobs, workers):
        images[done : done + len(run)] = torch.from_numpy(run)
        done += len(run)
    return images


def _decode_group_run(job: tuple[Path, str, Sequence[list[str]], int]) -> np.ndarray:
    """One worker's share: [groups, drawers, 1, S, S] as a NumPy array (cheap to send back from a process).

    Each file is decoded and resized on its own, as the serial decode always did: resizing a character's 20 images
    in one call engages torch's intra-op threads, which on a busy machine made a one-process decode 4x slower
    (measured with ``benchmarks/cold_decode.py``)."""
    path, top, groups, image_size = job
    archive = ImageArchive(path, top)  # its own zip handle: one inherited through fork would share its file offset
    try:
        return torch.stack(
            [
                torch.stack([decode_character_image(archive.read(m), archive.describe(m), image_size) for m in members])
                for members in groups
            ]
        ).numpy()
    finally:
        archive.close()


def decode_character_image(data: Path | bytes, name: str, image_size: int) -> Tensor:
    """One Omniglot PNG (or a user's image) as uint8 [1, image_size, image_size], ink bright on a dark background."""
    return resize_uint8(_invert(pil_to_uint8(open_image(data, name, "L")))[None], image_size)[0]


def _validate(archive: ImageArchive, part: str, files_by_character: dict[str, list[str]]) -> None:
    expected = PARTS[part]
    if len(files_by_character) != expected:
        raise DatasetNotFoundError(
            f"{archive.path} holds {len(files_by_character)} character folders, but Omniglot's {part} has {expected} "
            f"(layout {part}/<Alphabet>/characterNN/*.png). Replace it with the official {part}.zip."
        )
    for character, files in files_by_character.items():
        if len(files) != DRAWERS:
            raise DatasetNotFoundError(
                f"{archive.describe(character)} holds {len(files)} images, Omniglot has {DRAWERS} per character: "
                f"the copy is incomplete. Replace it with the official {part}.zip."
            )


def alphabet_ids(class_names: list[str]) -> Tensor:
    """The alphabet of each class (``Alphabet/characterNN[/rotDDD]``) as an integer id: [num_classes]."""
    alphabets = [name.split("/")[0] for name in class_names]
    index = {alphabet: i for i, alphabet in enumerate(sorted(set(alphabets)))}
    return torch.tensor([index[alphabet] for alphabet in alphabets], dtype=torch.long)


def _invert(images: Tensor) -> Tensor:
    return 255 - images


def vinyals_split_check(split: str) -> Callable[[bytes], None]:
    """Checks a downloaded split file: one ``Alphabet/characterNN/rotDDD`` per line, as many as the split has."""
    entry_pattern = re.compile(r"[^/\s]+/character\d+/rot(000|090|180|270)")

    def check(content: bytes) -> None:
        lines = content.decode("utf-8", "replace").split()
        if len(lines) != VINYALS_SPLIT_CLASSES[split] or not all(entry_pattern.fullmatch(entry) for entry in lines):
            raise DownloadCheckError(
                f"the downloaded {split}.txt is not Vinyals et al.'s split: expected {VINYALS_SPLIT_CLASSES[split]} "
                f"lines Alphabet/characterNN/rotDDD, got {len(lines)} lines starting {lines[:1]}"
            )

    return check


def _missing_split_message(path: Path) -> str:
    return (
        f"The Vinyals et al. Omniglot split file {path} is missing. Download train.txt, val.txt, test.txt from "
        f"{VINYALS_SPLIT_URL.format(split='<split>')} into {path.parent}/, or set download: true."
    )
