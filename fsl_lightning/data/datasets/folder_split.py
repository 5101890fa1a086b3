"""The class split of a user's image folder: classes placed by a hash of their names, kept in a split file.

Each class has a position in [0, 1), a hash of the seed and its name. The first split orders the classes by
position and cuts them at the sizes ``split_fractions`` ask for (exact sizes: a hash-threshold rule alone would
give a 32-class folder 21 / 9 / 2 classes). It is written to ``<folder>/fsl_split_seed<seed>.json``, and that file
is the source of truth from then on: a class added to the folder is placed by where its position falls among the
thresholds ``split_fractions`` set (the same order as the first cut: train lowest, test highest), classes removed
are dropped, and the file is rewritten with a note saying so. So adding or removing class folders never moves
another class (a shuffle-and-cut split reshuffles every class when one is added), and a file written by an older
rule, or edited by hand, is kept as it is for the classes it lists.

A folder where the file cannot be written (read-only) gets the first split on every run: the same classes give
the same split, but there added classes can move the classes next to a cut; a warning says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from fsl_lightning.data.datasets.base import SPLITS
from fsl_lightning.data.datasets.natural import read_split_file
from fsl_lightning.run.atomic_files import written_atomically

log = logging.getLogger(__name__)

#: how classes missing from a split file are placed (written into the file, for whoever reads it later)
SPLIT_RULE = (
    "a class added later goes to train / val / test by where sha256('<seed>/<class name>') falls among the "
    "thresholds of split_fractions"
)


def split_file_path(folder: Path, seed: int) -> Path:
    return folder / f"fsl_split_seed{seed}.json"


def class_position(name: str, seed: int) -> float:
    """Where the class ``name`` falls in [0, 1): a function of the name and the seed alone."""
    digest = hashlib.sha256(f"{seed}/{name}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def class_place(name: str, seed: int, fractions: Sequence[float]) -> str:
    """``train``, ``val`` or ``test`` for a class added to an existing split: by its position among the thresholds
    of ``fractions``, independent of every other class."""
    position = class_position(name, seed)
    train, val, _ = normalised(fractions)
    if position < train:
        return "train"
    return "val" if position < train + val else "test"


def first_class_split(names: Sequence[str], seed: int, fractions: Sequence[float]) -> dict[str, list[str]]:
    """The classes ordered by position and cut at the sizes of ``fractions`` (each split at least one class when
    there are three or more); each split's names sorted."""
    ordered = sorted(names, key=lambda name: (class_position(name, seed), name))
    _, val_share, test_share = normalised(fractions)
    sizes = [max(1, round(len(ordered) * share)) if len(ordered) >= 3 else 0 for share in (val_share, test_share)]
    train_end = len(ordered) - sum(sizes)
    parts = (ordered[:train_end], ordered[train_end : train_end + sizes[0]], ordered[train_end + sizes[0] :])
    return {split: sorted(part) for split, part in zip(SPLITS, parts)}


def normalised(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(not f > 0 for f in fractions):
        raise ValueError(
            f"split_fractions must be three positive numbers (train, val, test), e.g. [0.64, 0.16, 0.2]; got {list(fractions)}."
        )
    total = sum(fractions)
    return tuple(f / total for f in fractions)  # type: ignore[return-value]


def folder_class_split(
    folder: Path, class_names: Sequence[str], seed: int, fractions: Sequence[float]
) -> dict[str, list[str]]:
    """The split of ``class_names`` (the class folders of ``folder``): the split file's, brought up to date with
    the folder and rewritten when classes were added or removed, or the hashed split, written as the split file."""
    path = split_file_path(folder, seed)
    if not path.exists():
        split = first_class_split(class_names, seed, fractions)
        _check_no_split_empty(split, folder, seed, fractions)
        _write(path, split, seed, fractions, note=None)
        return split
    _check_same_fractions(path, fractions)
    split = read_split_file(path)
    _check_disjoint(split, path)
    listed = {name for names in split.values() for name in names}
    added = sorted(set(class_names) - listed)
    removed = sorted(listed - set(class_names))
    if not added and not removed:
        return split
    for name in added:
        split[class_place(name, seed, fractions)].append(name)
    split = {part: sorted(name for name in names if name not in removed) for part, names in split.items()}
    _check_no_split_empty(split, folder, seed, fractions)
    _write(path, split, seed, fractions, note=_change_note(path, split, added, removed))
    return split


def _check_no_split_empty(split: dict[str, list[str]], folder: Path, seed: int, fractions: Sequence[float]) -> None:
    empty = [part for part in SPLITS if not split[part]]
    if empty:
        total = sum(len(names) for names in split.values())
        raise ValueError(
            f"{folder} has {total} class folders, too few for split_fractions {list(fractions)} with split_seed {seed}: "
            f"no class falls in {' or '.join(empty)}. Add class folders, raise that share of split_fractions, try "
            "another split_seed, or give a split_file listing the train, val and test classes."
        )


def _check_disjoint(split: dict[str, list[str]], path: Path) -> None:
    """A class in two splits (a hand edit) would put test images into training."""
    seen: dict[str, str] = {}
    for part in SPLITS:
        for name in split[part]:
            if name in seen:
                raise ValueError(
                    f"{path} lists class {name} in both {seen[name]} and {part}: keep it in one of them, or delete "
                    "the file to split the classes afresh."
                )
            seen[name] = part


def _check_same_fractions(path: Path, fractions: Sequence[float]) -> None:
    try:
        recorded = json.loads(path.read_text()).get("split_fractions")
    except (json.JSONDecodeError, AttributeError) as error:
        raise ValueError(
            f"{path} is not a JSON class split ({error}): fix it, or delete it to split the classes afresh."
        ) from error
    if recorded is not None and not all(map(math.isclose, normalised(recorded), normalised(fractions))):
        raise ValueError(
            f"{path} holds a class split made with split_fractions {recorded}, but split_fractions is now "
            f"{list(fractions)}. Set split_fractions back to {recorded} to keep that split, or delete the file to "
            "split the classes afresh (this moves classes between train, val and test)."
        )


def _change_note(path: Path, split: dict[str, list[str]], added: list[str], removed: list[str]) -> str:
    places = {name: part for part, names in split.items() for name in names}
    changes = [f"added {name} to {places[name]}" for name in added] + [
        f"dropped {name} (folder gone)" for name in removed
    ]
    shown = ", ".join(changes[:10]) + (f" and {len(changes) - 10} more" if len(changes) > 10 else "")
    return f"Updated the class split {path}: {shown}; no other class moved."


def _write(path: Path, split: dict[str, list[str]], seed: int, fractions: Sequence[float], note: str | None) -> None:
    """Writes the split file through a temporary file and a rename (DDP ranks may write it at once); a read-only
    folder keeps no file (the same classes give the same first split again)."""
    content = {**split, "split_seed": seed, "split_fractions": list(fractions), "rule": SPLIT_RULE}
    try:
        with written_atomically(path, "w") as file:
            file.write(json.dumps(content, indent=1) + "\n")
    except OSError as error:
        if note:  # the file on disk no longer says which split is used: say so
            log.warning("%s Could not rewrite the file (%s): this run uses the updated split.", note, error)
        else:
            log.warning(
                "Could not write the class split to %s (%s): the split is not kept, so classes added to "
                "the folder later may move classes between train, val and test.",
                path,
                error,
            )
        return
    if note:
        log.warning(note)
    else:
        log.info("Wrote the class split to %s", path)
