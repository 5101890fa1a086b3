"""Where datasets and decoded caches live on disk."""

from __future__ import annotations

import os
from pathlib import Path

from fsl_lightning.run.errors import UserError


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset is neither on disk nor downloadable; the message says which files to put where."""


def data_root(configured: str | os.PathLike | None = None) -> Path:
    """The folder that holds one sub-folder per dataset.

    Order of precedence: the configured value, the ``FSL_DATA_ROOT`` environment variable, then a user
    cache directory (``$XDG_CACHE_HOME/fsl_lightning/data`` or ``~/.cache/fsl_lightning/data``).
    """
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("FSL_DATA_ROOT"):
        return Path(os.environ["FSL_DATA_ROOT"]).expanduser()
    return _user_cache() / "data"


def decoded_cache_dir() -> Path:
    """Where decoded image tensors are cached (``FSL_CACHE_DIR``, else the user cache directory).

    Kept apart from the data root, which may be read-only (a shared copy of the datasets).
    """
    if os.environ.get("FSL_CACHE_DIR"):
        return Path(os.environ["FSL_CACHE_DIR"]).expanduser()
    return _user_cache() / "decoded"


def _user_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fsl_lightning"
