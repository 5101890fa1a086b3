"""Checkpoint files that a crash can never leave half-written, and that are read without running any code.

Reading: every checkpoint or weights file, whoever wrote it, is read with ``torch.load(weights_only=True)``, which
rebuilds tensors and plain containers only. A pickled object that would call a function when loaded (the standard
way to hide code in a checkpoint) is refused before it runs, and named in one line (:class:`UnsafeCheckpointError`).
The project's own checkpoints hold nothing else (model and optimiser state dicts, loop and callback state, the
hyperparameters as plain data), so they need no allow-list.

Writing: Lightning's own save writes a temporary file under ``TMPDIR`` and moves it into place; when ``TMPDIR`` is on
another filesystem (tmpfs, node-local scratch), that move is a copy over the existing file, so a kill during the
copy leaves a truncated ``last.ckpt`` and no good checkpoint at all. Here the temporary file is written in the
checkpoint's own folder, synced to disk and renamed over the old one: the rename is atomic, so the file under
the checkpoint's name is always either the previous checkpoint or the new one, whole.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeGuard

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from fsl_lightning.run.atomic_files import written_atomically
from fsl_lightning.run.errors import UserError


class UnreadableCheckpointError(UserError):
    """A checkpoint file that is truncated or corrupt (for example written by a run killed while saving)."""


class UnsafeCheckpointError(UserError):
    """A checkpoint or weights file that holds pickled objects beyond tensors and plain data: loading it could run
    code, so it is refused."""


def load_checkpoint_file(path: _PATH, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """The contents of a checkpoint or weights file, read without running any code from it: ``torch.load`` with
    ``weights_only=True`` (explicit, so that no environment variable turns it off). An unsafe, truncated or corrupt
    file ends in one line naming it (:func:`checkpoint_load_errors_reported`)."""
    mmap = mmap and _is_local_checkpoint_file(path) and zipfile.is_zipfile(path)  # torch maps only its zip format
    with checkpoint_load_errors_reported(path):
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves each checkpoint to a temporary file beside it, fsyncs it and renames it into place.

    Loading never runs code from the file (``weights_only=True`` whatever the caller asks) and reports an unsafe,
    truncated or corrupt file by its path, with what to do, instead of a traceback. Remote paths (``s3://``...) are
    saved by Lightning's own code.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with written_atomically(Path(path), "wb", durable=True) as file:
            torch.save(checkpoint, file)

    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        with checkpoint_load_errors_reported(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)


@contextmanager
def checkpoint_load_errors_reported(path: _PATH | None) -> Iterator[None]:
    """Around any code that loads the file ``path`` (ours, Lightning's, timm's, open_clip's): a file that
    ``weights_only`` refused becomes an :class:`UnsafeCheckpointError` naming the types it held, and a truncated or
    corrupt one an :class:`UnreadableCheckpointError`; both name the file and say what to do, in one line."""
    try:
        yield
    except Exception as error:
        refusal = _weights_only_refusal(error)
        if refusal is not None:
            raise UnsafeCheckpointError(_unsafe_message(path, refusal)) from error
        # torch writes checkpoints as zip archives: a failure on a complete archive is not corruption, so it is
        # left as it is.
        readable_failure = isinstance(error, (EOFError, pickle.UnpicklingError, RuntimeError, ValueError, OSError))
        if not readable_failure or not _is_local_checkpoint_file(path) or zipfile.is_zipfile(path):
            raise
        raise UnreadableCheckpointError(_unreadable_message(Path(path), error)) from error


def _weights_only_refusal(error: BaseException) -> pickle.UnpicklingError | None:
    """torch's refusal of a pickled object under ``weights_only``, wherever it is in the chain of ``error``
    (timm and others re-raise it as a ``RuntimeError``)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, pickle.UnpicklingError) and "Weights only load failed" in str(current):
            return current
        current = current.__cause__ or current.__context__
    return None


def _unsafe_message(path: _PATH | None, refusal: pickle.UnpicklingError) -> str:
    return (
        f"Refused to load {path}: it holds {_refused_types(path, refusal)}, beyond tensors and plain data, and "
        "loading it could run code. Load checkpoints written by `python -m fsl_lightning fit`, or weights saved "
        "as a state dict of tensors (torch.save(model.state_dict(), ...)) or as .safetensors."
    )


def _refused_types(path: _PATH | None, refusal: pickle.UnpicklingError) -> str:
    """The globals the file needs beyond what ``weights_only`` allows, read from the archive without loading it;
    for an old-format file, the one that torch's refusal names."""
    names: list[str] = []
    if _is_local_checkpoint_file(path) and zipfile.is_zipfile(path):
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # a damaged archive: fall back to the refusal's own words
            names = []
    if not names:
        names = re.findall(r"GLOBAL (\S+) was not an allowed global", str(refusal))
    if names:
        return ", ".join(f"`{name}`" for name in names)
    detail = re.search(r"WeightsUnpickler error: ([^\n]*?)(?: Please use|\n|$)", str(refusal))
    return f"an object that is not plain data ({detail.group(1).strip() if detail else 'a pickled object'})"


def _is_local_checkpoint_file(path: _PATH | None) -> TypeGuard[_PATH]:
    return path is not None and bool(path) and _is_local_file_protocol(path) and Path(path).is_file()


def _unreadable_message(path: Path, error: BaseException) -> str:
    others = sorted(p.name for p in path.parent.glob("*.ckpt") if p != path and p.stat().st_size > 0)
    alternatives = f" (beside it: {', '.join(others)})" if others else ""
    return (
        f"Checkpoint {path} is truncated or corrupt ({type(error).__name__}: {_first_line(error)}), as when a run "
        f"is killed while saving: pass another checkpoint of the run to --ckpt_path{alternatives}, or start again without --ckpt_path."
    )


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0]
