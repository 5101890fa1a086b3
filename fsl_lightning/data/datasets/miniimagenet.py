"""miniImageNet (Vinyals et al. 2016) with the class split of Ravi & Larochelle (2017): 64 / 16 / 20 classes
for train / val / test, 600 ImageNet photos each.

There is no official download: the photos are ILSVRC-2012 training images, under the ImageNet terms of use.
Two layouts are in common circulation; both are read from ``<root>/miniimagenet/``
(:class:`~fsl_lightning.data.datasets.imagenet_subset.ImageNetSubset`; the split folders first):

* ``images/<file>.jpg`` with ``train.csv``, ``val.csv`` and ``test.csv`` (columns ``filename,label``, the label
  being the WordNet id), as written by the usual scripts from Ravi & Larochelle's split files;
* ``train/<wnid>/*.jpg``, ``val/<wnid>/*.jpg``, ``test/<wnid>/*.jpg``: one folder per split and per class.
"""

from __future__ import annotations

import csv
from functools import cached_property
from pathlib import Path
from typing import Any

from fsl_lightning.data.datasets.base import SPLITS, ClassImages
from fsl_lightning.data.datasets.imagenet_subset import ImageNetSubset
from fsl_lightning.data.datasets.natural import check_class_split, decode_classes, path_stamp
from fsl_lightning.data.roots import DatasetNotFoundError

CLASSES_PER_SPLIT = {"train": 64, "val": 16, "test": 20}
HOW_TO_OBTAIN = (
    "miniImageNet has no official download: its images are ImageNet's, under the ImageNet terms of use. Download "
    "ILSVRC-2012 from https://image-net.org (after accepting its terms) and build miniImageNet from it with Ravi & "
    "Larochelle's split files (train.csv, val.csv, test.csv in github.com/twitter/meta-learning-lstm, "
    "data/miniImagenet), or copy the prepared miniImageNet your group already has."
)


class MiniImageNet(ImageNetSubset):
    """miniImageNet, Ravi & Larochelle split, from ``<root>/miniimagenet/`` (either layout of the module docstring).

    Args:
        image_size: side of the square RGB images (84, the usual size, by default).
        root: data root; default ``$FSL_DATA_ROOT``, else the user cache directory.
    """

    cache_name = folder_name = "miniimagenet"
    display_name = "miniImageNet"
    classes_per_split = CLASSES_PER_SPLIT
    how_to_obtain = HOW_TO_OBTAIN
    rebuild_split_folders = "from Ravi & Larochelle's split files"
    expected_layouts = (
        "{folder}/images/*.jpg with train.csv, val.csv and test.csv (columns filename,label) in {folder}, or one "
        "folder per split and class, {folder}/{{train,val,test}}/<wnid>/*.jpg"
    )

    def authors_layout_paths(self) -> list[Path]:
        return [self.folder / "images", *(self.folder / f"{split}.csv" for split in SPLITS)]

    def check_authors_layout(self) -> None:
        fix = f"replace {self.folder}/*.csv with Ravi & Larochelle's split files"
        check_class_split(self._csv_files, CLASSES_PER_SPLIT, self.display_name, fix, disjoint=True)

    def authors_layout_stamp(self) -> Any:
        return [path_stamp(path) for path in self.authors_layout_paths()]

    def decode_authors_split(self, split: str) -> ClassImages:
        files = self._csv_files[split]
        names = sorted(files)
        return decode_classes(names, [[(path, str(path)) for path in files[name]] for name in names], self.image_size)

    @cached_property
    def _csv_files(self) -> dict[str, dict[str, list[Path]]]:
        """The image files of every class of every split, as the CSV split files list them."""
        return {split: self._csv_classes(split) for split in SPLITS}

    def _csv_classes(self, split: str) -> dict[str, list[Path]]:
        images = self.folder / "images"
        listed = read_label_csv(self.folder / f"{split}.csv")
        classes = {label: [images / name for name in names] for label, names in listed.items()}
        missing = [path for paths in classes.values() for path in paths if not path.is_file()]
        if missing:
            raise DatasetNotFoundError(
                f"{len(missing)} images listed in {self.folder / f'{split}.csv'} are not in {images} (first: "
                f"{missing[0].name}). The copy is incomplete: copy the missing images there. {HOW_TO_OBTAIN}"
            )
        return classes


def read_label_csv(path: Path) -> dict[str, list[str]]:
    """The file names of each class, in file order, from a ``filename,label`` split file (header optional)."""
    classes: dict[str, list[str]] = {}
    with path.open(newline="") as stream:
        reader = csv.reader(stream)
        for row in reader:
            if not row or (reader.line_num == 1 and row[0].strip().lower() == "filename"):
                continue
            if len(row) != 2:
                raise DatasetNotFoundError(f"{path}, line {reader.line_num}: expected `filename,label`, got {row}.")
            classes.setdefault(row[1].strip(), []).append(row[0].strip())
    return classes
