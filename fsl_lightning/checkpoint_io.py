"""Checkpoint files that a crash can never leave half-written.

Lightning's own save writes a temporary file under ``TMPDIR`` and moves it into place; when ``TMPDIR`` is on
another filesystem (tmpfs, node-local scratch), that move is a copy over the existing file, so a kill during the
copy leaves a truncated ``last.ckpt`` and no good checkpoint at all. Here the temporary file is written in the
checkpoint's own folder, synced to disk and renamed over the old one: the rename is atomic, so the file under
the checkpoint's name is always either the previous checkpoint or the new one, whole.
"""

from __future__ import annotations

import os
import pickle
import secrets
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from fsl_lightning.errors import UserError


class UnreadableCheckpointError(UserError):
    """A checkpoint file that is truncated or corrupt (for example written by a run killed while saving)."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves each checkpoint to a temporary file beside it, fsyncs it and renames it into place.

    Loading reports a truncated or corrupt file by its path, with what to do, instead of a bare ``EOFError``.
    Remote paths (``s3://``...) are left to Lightning.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = _create_beside(target)
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _sync_folder(target.parent)  # makes the rename itself survive a power cut

    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Optional[Callable] = lambda storage, loc: storage,
        weights_only: Optional[bool] = None,
    ) -> dict[str, Any]:
        with unreadable_checkpoint_reported(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)


@contextmanager
def unreadable_checkpoint_reported(path: _PATH | None) -> Iterator[None]:
    """Turns a failure to read a truncated or corrupt checkpoint into an :class:`UnreadableCheckpointError` that
    names the file and says what to do."""
    try:
        yield
    except (EOFError, pickle.UnpicklingError, RuntimeError, ValueError, OSError) as error:
        # torch writes checkpoints as zip archives: a failure on a complete archive is not corruption
        # (e.g. weights_only refusing a class), so it is left as it is.
        if not _is_local_checkpoint_file(path) or zipfile.is_zipfile(path):
            raise
        raise UnreadableCheckpointError(_unreadable_message(Path(path), error)) from error


def _is_local_checkpoint_file(path: _PATH | None) -> bool:
    return bool(path) and _is_local_file_protocol(path) and Path(path).is_file()


def _create_beside(target: Path) -> tuple[int, Path]:
    """A new, empty file in the folder of ``target``, with the permissions a plain ``open`` gives (umask applied).

    Its name is hidden and matches no checkpoint pattern (``last*.ckpt``, ``*.ckpt``), should a kill leave it behind.
    """
    while True:
        temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), temporary
        except FileExistsError:
            continue


def _unreadable_message(path: Path, error: BaseException) -> str:
    others = sorted(p.name for p in path.parent.glob("*.ckpt") if p != path and p.stat().st_size > 0)
    alternatives = f" (beside it: {', '.join(others)})" if others else ""
    return (
        f"Checkpoint {path} is truncated or corrupt ({type(error).__name__}: {_first_line(error)}), as when a run "
        f"is killed while saving: pass another checkpoint of the run to --ckpt_path{alternatives}, or start again without --ckpt_path."
    )


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0]


def _sync_folder(folder: Path) -> None:
    if os.name == "nt":  # folders cannot be opened for fsync on Windows; there the rename is durable on its own
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
