"""Files that appear whole or not at all: written beside their place, then renamed into it.

Every file this project writes that someone may read while it is being written, or that a kill must not leave half
written (checkpoints, the decoded-image cache, downloads, a run's config, a dataset's class split), goes through
:func:`written_atomically`: readers see the old file or the new one, never part of one.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def written_atomically(path: Path, mode: str = "wb", durable: bool = False) -> Iterator[IO[Any]]:
    """A file opened in ``mode`` (``"wb"`` or ``"w"``) whose contents replace ``path`` when the block ends without
    an error; after an error ``path`` is untouched and the temporary file is removed.

    ``durable``: flush the file and its folder to the disk before returning, so that the new file survives a power
    cut (checkpoints); otherwise the system writes it when it will (caches, which are rebuilt if lost).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = _create_beside(path)
    try:
        with os.fdopen(handle, mode) as file:
            yield file
            if durable:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if durable:
        _sync_folder(path.parent)  # makes the rename itself survive a power cut


def _create_beside(target: Path) -> tuple[int, Path]:
    """A new, empty file in the folder of ``target``, with the permissions a plain ``open`` gives (umask applied).

    Its name is hidden and matches no pattern the project reads (``*.ckpt``, ``*.pt``), should a kill leave it behind.
    """
    while True:
        temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), temporary
        except FileExistsError:
            continue


def _sync_folder(folder: Path) -> None:
    if os.name == "nt":  # folders cannot be opened for fsync on Windows; there the rename is durable on its own
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
