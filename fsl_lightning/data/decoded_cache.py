"""Decode once, reuse: decoded datasets are cached as tensors on disk, keyed by their source file."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from fsl_lightning.data.roots import decoded_cache_dir

log = logging.getLogger(__name__)


def cached(key: str, stamp: Any, build: Callable[[], Any]) -> Any:
    """Returns ``build()``, from ``<cache dir>/<key>.pt`` when that was built from the same source ``stamp``.

    The file is written atomically, so that concurrent processes (DDP ranks) never read half a file.
    """
    path = decoded_cache_dir() / f"{key}.pt"
    if path.exists():
        try:
            entry = torch.load(path, weights_only=True)
            if entry.get("stamp") == list(stamp):
                return entry["payload"]
        except Exception as error:  # a damaged cache is rebuilt, never trusted
            log.warning("Ignoring unreadable cache %s (%s)", path, error)
    payload = build()
    save_atomically({"stamp": list(stamp), "payload": payload}, path)
    return payload


def save_atomically(value: Any, path: Path) -> None:
    """``torch.save`` through a temporary file and a rename, so that concurrent readers (DDP ranks, other runs)
    never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as tmp:
        torch.save(value, tmp)
    os.replace(tmp.name, path)
