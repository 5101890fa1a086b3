"""What the ImageNet-derived benchmarks (miniImageNet, tieredImageNet) share.

Both are ImageNet photos under ImageNet's terms of use, with no official download, read from
``<root>/<folder_name>/`` in one of two layouts: one folder per split and class (``{train,val,test}/<class>/*``),
the same for both, or the files their authors' scripts write (miniImageNet: an image folder with CSV split files;
tieredImageNet: Ren et al.'s pickles), which each subclass reads. The split folders are used when they are all
there; either layout is checked against the standard class split before it is decoded.
"""

from __future__ import annotations

from abc import abstractmethod
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from fsl_lightning.data.datasets.base import SPLITS, ClassImages
from fsl_lightning.data.datasets.natural import (
    NaturalImageDataset,
    check_class_split,
    decode_classes,
    split_folder_classes,
    tree_stamp,
)
from fsl_lightning.data.roots import DatasetNotFoundError, data_root

FOLDERS = "folders"


class ImageNetSubset(NaturalImageDataset):
    """An ImageNet-derived benchmark from ``<root>/<folder_name>/``: the split folders, or the authors' layout.

    Subclasses name the dataset (the class variables) and read their authors' layout (the abstract methods).

    Args:
        image_size: side of the square RGB images (84, the usual size, by default).
        root: data root; default ``$FSL_DATA_ROOT``, else the user cache directory.
    """

    #: the folder under the data root (subclasses set ``cache_name``, the decoded cache's name, to the same)
    folder_name: ClassVar[str]
    #: the dataset's name in messages
    display_name: ClassVar[str]
    #: the standard number of classes of each split
    classes_per_split: ClassVar[dict[str, int]]
    #: how to obtain the dataset, ending every message about missing or damaged files
    how_to_obtain: ClassVar[str]
    #: what to do when the split folders hold another class split than the standard one
    rebuild_split_folders: ClassVar[str]
    #: the two layouts, as the "not found" message describes them (``{folder}`` is replaced by the folder)
    expected_layouts: ClassVar[str]

    def __init__(self, image_size: int = 84, root: str | None = None) -> None:
        super().__init__(image_size)
        self.folder = data_root(root) / self.folder_name

    def source_stamp(self) -> Any:
        return tree_stamp(self.folder) if self._layout == FOLDERS else self.authors_layout_stamp()

    def decode_split(self, split: str) -> ClassImages:
        if self._layout != FOLDERS:
            return self.decode_authors_split(split)
        files = self._split_folder_files[split]
        names = sorted(files)
        return decode_classes(names, [[(path, str(path)) for path in files[name]] for name in names], self.image_size)

    @cached_property
    def _split_folder_files(self) -> dict[str, dict[str, list[Path]]]:
        return split_folder_classes(self.folder)

    @cached_property
    def _layout(self) -> str:
        """:data:`FOLDERS` or the authors' layout, checked against the standard split; raises when neither is
        complete."""
        if all((self.folder / split).is_dir() for split in SPLITS):
            fix = f"rebuild {self.folder}/{{train,val,test}}/<class>/ {self.rebuild_split_folders}"
            check_class_split(self._split_folder_files, self.classes_per_split, self.display_name, fix, disjoint=True)
            return FOLDERS
        if all(path.exists() for path in self.authors_layout_paths()):
            self.check_authors_layout()
            return "authors"
        expected = [*(self.folder / split for split in SPLITS), *self.authors_layout_paths()]
        missing = [str(path) for path in expected if not path.exists()]
        raise DatasetNotFoundError(
            f"{self.display_name} not found: expected {self.expected_layouts.format(folder=self.folder)}. Missing: "
            f"{', '.join(missing)}. {self.how_to_obtain} Then put it there, or point the data root at the folder "
            f"holding {self.folder_name}/ (dataset `root` or FSL_DATA_ROOT)."
        )

    @abstractmethod
    def authors_layout_paths(self) -> list[Path]:
        """The files and folders of the authors' layout (all must exist for it to be read)."""

    @abstractmethod
    def check_authors_layout(self) -> None:
        """Raises :class:`DatasetNotFoundError` unless the authors' layout holds the standard class split."""

    @abstractmethod
    def authors_layout_stamp(self) -> Any:
        """What the decoded cache compares to notice changed files of the authors' layout."""

    @abstractmethod
    def decode_authors_split(self, split: str) -> ClassImages:
        """One split decoded from the authors' layout."""
