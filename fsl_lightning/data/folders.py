"""A user's own images for ``predict``: a support folder (one sub-folder per class) and a query folder.

Images that cannot be decoded (:mod:`fsl_lightning.data.images` says which and why): among the queries, the
user's choice (:data:`BAD_IMAGE_CHOICES`): ``skip`` (the default: over thousands of photos, one bad file should
not cost the others' predictions) scores the rest and reports the bad ones with their reasons; ``stop`` ends at
the first. A bad support image always stops, after naming every bad one: the support set defines the classes,
and dropping a shot would change the classifier without the user knowing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from fsl_lightning.data.images import IMAGE_SUFFIXES, CorruptImageError
from fsl_lightning.run.errors import UserError

#: the dataset's decoding of one image file (path, name for errors) into uint8 [C, H, W]: ``FewShotDataset.decode_image``
Decode = Callable[[Path, str], Tensor]
#: what to do with a query image that cannot be decoded
BadImages = Literal["skip", "stop"]
BAD_IMAGE_CHOICES = ("skip", "stop")


@dataclass
class QueryImages:
    """The query images that decoded ([M, C, H, W]: uint8 as decoded from files, model input once the Python API
    has checked them), with their files, and the ones that did not.

    ``files`` lists every query file in order (``None`` for an image the Python API was given as a tensor),
    ``decoded_files`` those of ``images``; ``unreadable`` maps each file that did not decode to the one-line reason."""

    images: Tensor
    decoded_files: list[str | None]
    files: list[str | None]
    unreadable: dict[str, str] = field(default_factory=dict)


def read_support_folder(root: str | Path, decode: Decode) -> tuple[Tensor, Tensor, list[str]]:
    """Images uint8 [M, C, H, W], labels [M] and class names (sorted sub-folder names) of ``root``."""
    root = _existing_folder(root, "support")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if len(class_dirs) < 2:
        raise UserError(
            f"The support folder {root} needs one sub-folder of images per class, at least 2 classes; "
            f"found {len(class_dirs)}."
        )
    files, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        class_files = _image_files(class_dir)
        if not class_files:
            raise UserError(f"The support class folder {class_dir} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
        files += class_files
        labels += [label] * len(class_files)
    decoded, unreadable = decode_files(files, decode)
    if unreadable:
        raise CorruptImageError(
            f"{_count(len(unreadable), 'support image')} of {root} cannot be used, and the support set defines the "
            f"classes: {_listed(unreadable)}"
        )
    return torch.stack(decoded), torch.tensor(labels), [d.name for d in class_dirs]


def read_query_folder(root: str | Path, decode: Decode, bad_images: BadImages = "skip") -> QueryImages:
    """Every image file under ``root`` (recursively), decoded; ``bad_images`` says what a file that does not
    decode does (the module docstring)."""
    root = _existing_folder(root, "query")
    files = sorted(p for p in root.rglob("*") if not p.is_dir() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"The query folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    return decode_queries(files, decode, bad_images)


def decode_queries(files: list[Path], decode: Decode, bad_images: BadImages = "skip") -> QueryImages:
    """The query images of ``files`` (in order), as :func:`read_query_folder` decodes a folder's."""
    check_bad_images_choice(bad_images)
    decoded, unreadable = decode_files(files, decode, stop_at_first=bad_images == "stop")
    names: list[str | None] = [str(path) for path in files]
    if not decoded:
        raise no_usable_queries(len(files), unreadable)
    decoded_files = [name for name in names if name not in unreadable]
    return QueryImages(torch.stack(decoded), decoded_files, names, unreadable)


def decode_files(files: list[Path], decode: Decode, stop_at_first: bool = False) -> tuple[list[Tensor], dict[str, str]]:
    """The images of ``files`` that decode, in order, and ``{file: reason}`` for those that do not (with
    ``stop_at_first``, the first of those raises its :class:`CorruptImageError`)."""
    decoded, unreadable = [], {}
    for path in files:
        try:
            decoded.append(decode(path, str(path)))
        except CorruptImageError as error:
            if stop_at_first:
                raise
            unreadable[str(path)] = str(error)
    return decoded, unreadable


def check_bad_images_choice(bad_images: str) -> None:
    if bad_images not in BAD_IMAGE_CHOICES:
        raise UserError(
            f"bad_images={bad_images!r}: use `skip` (score the other queries, list the bad files) or `stop` (end at "
            "the first bad file)."
        )


def no_usable_queries(count: int, unreadable: dict[str, str]) -> CorruptImageError:
    """The error when not one of ``count`` query images decodes."""
    return CorruptImageError(f"None of the {_count(count, 'query image')} can be used: {_listed(unreadable)}")


def unreadable_summary(unreadable: dict[str, str]) -> str:
    """One line for the query files skipped because they did not decode."""
    return f"Skipped {_count(len(unreadable), 'query image')} that cannot be used: {_listed(unreadable)}"


def _listed(unreadable: dict[str, str], shown: int = 3) -> str:
    """The reasons of the first ``shown`` bad files (each names its file), and how many more."""
    reasons = list(unreadable.values())
    more = f" (and {len(reasons) - shown} more)" if len(reasons) > shown else ""
    return " | ".join(reason.rstrip(".") for reason in reasons[:shown]) + more


def _count(number: int, thing: str) -> str:
    return f"{number} {thing}{'' if number == 1 else 's'}"


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
    """The files of ``folder`` named as images, broken links and other non-folders included (named when read)."""
    return sorted(p for p in folder.iterdir() if not p.is_dir() and p.suffix.lower() in IMAGE_SUFFIXES)
