"""Shared fixtures: the real Omniglot from ../shared/data (or $FSL_DATA_ROOT), offline W&B."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("FSL_DATA_ROOT", str(REPO.parent / "shared" / "data"))
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = Path(os.environ["FSL_DATA_ROOT"])
    if not (root / "omniglot").is_dir():
        pytest.fail(f"Real Omniglot not found under {root}: set FSL_DATA_ROOT to the folder holding omniglot/.")
    return root


@pytest.fixture(scope="session")
def omniglot(data_root):
    from fsl_lightning.data import Omniglot

    dataset = Omniglot(protocol="vinyals", download=False)
    dataset.prepare()
    return dataset


@pytest.fixture(scope="session")
def vinyals_test_split(omniglot):
    return omniglot.load_split("test")
