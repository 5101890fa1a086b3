"""A user's own images for ``predict``: a support folder (one sub-folder per class) and a query folder."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from fsl_lightning.data.images import IMAGE_SUFFIXES
from fsl_lightning.errors import UserError

#: the dataset's decoding of one image file (path, name for errors) into uint8 [C, H, W]: ``FewShotDataset.decode_image``
Decode = Callable[[Path, str], Tensor]


def read_support_folder(root: str | Path, decode: Decode) -> tuple[Tensor, Tensor, list[str]]:
    """Images uint8 [M, C, H, W], labels [M] and class names (sorted sub-folder names) of ``root``."""
    root = _existing_folder(root, "support")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if len(class_dirs) < 2:
        raise UserError(
            f"The support folder {root} needs one sub-folder of images per class, at least 2 classes; "
            f"found {len(class_dirs)}."
        )
    images, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        files = _image_files(class_dir)
        if not files:
            raise UserError(f"The support class folder {class_dir} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
        images += [_load(path, decode) for path in files]
        labels += [label] * len(files)
    return torch.stack(images), torch.tensor(labels), [d.name for d in class_dirs]


def read_query_folder(root: str | Path, decode: Decode) -> tuple[Tensor, list[str]]:
    """Images uint8 [M, C, H, W] of every image file under ``root`` (recursively), and their paths."""
    root = _existing_folder(root, "query")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"The query folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    return torch.stack([_load(path, decode) for path in files]), [str(p) for p in files]


def check_class_names(names: list[str]) -> list[str]:
    """Class names given instead of a support folder (zero-shot ``predict``): at least 2, none empty, no repeats."""
    names = [str(name).strip() for name in names]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if len(names) < 2 or "" in names or repeated:
        if repeated:
            problem = f"repeated: {', '.join(repeated)}"
        else:
            problem = "an empty name" if "" in names else f"{len(names)} given"
        raise UserError(
            f"predict_class_names needs at least 2 distinct, non-empty class names ({problem}), e.g. "
            "--data.predict_class_names='[cat, dog, sea_turtle]'."
        )
    return names


def _existing_folder(root: str | Path, role: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"The {role} folder {root} does not exist or is not a folder.")
    return root


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _load(path: Path, decode: Decode) -> Tensor:
    return decode(path, str(path))
