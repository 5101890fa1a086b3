"""tieredImageNet (Ren et al. 2018): 608 ImageNet classes under 34 high-level categories, split by category
into 351 / 97 / 160 classes for train / val / test, so that test classes are far from the training ones.

There is no official download (ImageNet terms of use). Two layouts are read from ``<root>/tieredimagenet/``
(:class:`~fsl_lightning.data.datasets.imagenet_subset.ImageNetSubset`; the split folders first):

* ``train/<class>/*.jpg|png``, ``val/...``, ``test/...``: one folder per split and per class;
* Ren et al.'s pickles: ``{split}_images_png.pkl`` (a list of PNG-encoded images, one uint8 array each) and
  ``{split}_labels.pkl`` (a dict: ``label_specific``, the class index of each image, and ``label_specific_str``,
  the class names). Pickles can run code when loaded: read only copies from a source you trust.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from fsl_lightning.data.datasets.base import SPLITS, ClassImages
from fsl_lightning.data.datasets.imagenet_subset import ImageNetSubset
from fsl_lightning.data.datasets.natural import ImageSource, check_class_split, decode_classes, path_stamp
from fsl_lightning.data.roots import DatasetNotFoundError

CLASSES_PER_SPLIT = {"train": 351, "val": 97, "test": 160}
HOW_TO_OBTAIN = (
    "tieredImageNet has no official download: its images are ImageNet's, under the ImageNet terms of use. Build it "
    "from ILSVRC-2012 (https://image-net.org, after accepting its terms) with Ren et al.'s split files "
    "(github.com/renmengye/few-shot-ssl-public), or copy the prepared tieredImageNet your group already has."
)


class TieredImageNet(ImageNetSubset):
    """tieredImageNet, Ren et al. split, from ``<root>/tieredimagenet/`` (either layout of the module docstring).

    Args:
        image_size: side of the square RGB images (84, the usual size, by default).
        root: data root; default ``$FSL_DATA_ROOT``, else the user cache directory.
    """

    cache_name = folder_name = "tieredimagenet"
    display_name = "tieredImageNet"
    classes_per_split = CLASSES_PER_SPLIT
    how_to_obtain = HOW_TO_OBTAIN
    rebuild_split_folders = "from Ren et al.'s split files"
    expected_layouts = (
        "one folder per split and class, {folder}/{{train,val,test}}/<class>/*.jpg|png, or Ren et al.'s pickles "
        "{folder}/{{train,val,test}}_images_png.pkl and {{train,val,test}}_labels.pkl"
    )

    def authors_layout_paths(self) -> list[Path]:
        return [path for split in SPLITS for path in self._pickle_paths(split)]

    def check_authors_layout(self) -> None:
        # Ren et al.'s names are readable synset names, which ImageNet repeats ("crane"): no disjointness check.
        counts = {split: _images_per_class(*self._pickled_labels(split)) for split in SPLITS}
        fix = f"replace the pickles in {self.folder} with Ren et al.'s originals"
        check_class_split(counts, CLASSES_PER_SPLIT, self.display_name, fix, disjoint=False)

    def authors_layout_stamp(self) -> Any:
        return [path_stamp(path) for path in self.authors_layout_paths()]

    def decode_authors_split(self, split: str) -> ClassImages:
        names, sources = self._pickled_sources(split)
        return decode_classes(names, sources, self.image_size)

    def _pickle_paths(self, split: str) -> tuple[Path, Path]:
        return self.folder / f"{split}_images_png.pkl", self.folder / f"{split}_labels.pkl"

    def _pickled_labels(self, split: str) -> tuple[list[str], np.ndarray]:
        """The class names of a split, made unique (ImageNet has two synsets named "crane", two "maillot"), and the
        class index of each image."""
        path = self._pickle_paths(split)[1]
        labels = _load_pickle(path)
        names = _unique([_text(name) for name in _field(labels, "label_specific_str", path)])
        class_of_image = np.asarray(_field(labels, "label_specific", path), dtype=np.int64).reshape(-1)
        if class_of_image.size and (class_of_image.min() < 0 or class_of_image.max() >= len(names)):
            raise DatasetNotFoundError(
                f"{path} gives class indices {class_of_image.min()}..{class_of_image.max()} for {len(names)} class "
                f"names: it is damaged. {HOW_TO_OBTAIN}"
            )
        return names, class_of_image

    def _pickled_sources(self, split: str) -> tuple[list[str], list[list[ImageSource]]]:
        """The PNG bytes of each class of a split, in image order."""
        images_path, labels_path = self._pickle_paths(split)
        names, class_of_image = self._pickled_labels(split)
        encoded = list(_load_pickle(images_path))
        if len(encoded) != len(class_of_image):
            raise DatasetNotFoundError(
                f"{images_path} holds {len(encoded)} images but {labels_path} labels {len(class_of_image)}: the two "
                f"files do not belong together. {HOW_TO_OBTAIN}"
            )
        sources: list[list[ImageSource]] = [[] for _ in names]
        for index, label in enumerate(class_of_image.tolist()):
            sources[label].append((_png_bytes(encoded[index]), f"{images_path}[{index}]"))
            encoded[index] = None  # keeps a single copy of the encoded split in memory
        return names, sources


def _images_per_class(names: list[str], class_of_image: np.ndarray) -> dict[str, int]:
    return dict(zip(names, np.bincount(class_of_image, minlength=len(names)).tolist()))


def _load_pickle(path: Path) -> Any:
    # Ren et al. wrote the pickles with Python 2: latin1 reads its strings and NumPy arrays byte for byte.
    try:
        with path.open("rb") as stream:
            return pickle.load(stream, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, OSError, ValueError) as error:
        message = f"{path} is not a readable pickle ({error}): copy it again. {HOW_TO_OBTAIN}"
        raise DatasetNotFoundError(message) from error


def _field(labels: Any, key: str, path: Path) -> Any:
    """``labels[key]``, whether the pickle's keys are text or bytes."""
    if isinstance(labels, dict):
        for candidate in (key, key.encode()):
            if candidate in labels:
                return labels[candidate]
    raise DatasetNotFoundError(f"{path} has no {key!r} entry: it is not one of Ren et al.'s label files.")


def _text(name: Any) -> str:
    return name.decode("utf-8", errors="replace") if isinstance(name, bytes) else str(name)


def _png_bytes(image: Any) -> bytes:
    return image if isinstance(image, bytes) else np.asarray(image, dtype=np.uint8).tobytes()


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return unique
