"""Shared fixtures: the real Omniglot from ../shared/data (or $FSL_DATA_ROOT), offline W&B; the `data` mark."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("FSL_DATA_ROOT", str(REPO.parent / "shared" / "data"))
os.environ.setdefault("WANDB_MODE", "offline")


def pytest_collection_modifyitems(config, items):
    """Every test that reads the real datasets (through the ``data_root`` fixture) is marked ``data``, so that
    ``pytest -m "not data and not slow"`` (``./test.sh --fast``) runs without them, on images the tests make."""
    for item in items:
        if "data_root" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.data)


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


@pytest.fixture(scope="module")
def one_thread():
    """For tiny models and episodes one thread beats two, by far on a busy machine, where idle OpenMP threads spin
    on cores that other processes need (use with ``pytest.mark.usefixtures``)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def offline_hubs(tmp_path, monkeypatch):
    """Empty Hugging Face and torch.hub caches, no network: no test touches the internet or the real caches."""
    from urllib.error import URLError

    import huggingface_hub.constants
    import torch

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def refuse_download(url, *args, **kwargs):
        raise URLError(f"no network in tests ({url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse_download)


class CaltechSubset:
    """The first ``per_class`` images of every class of real Caltech-101 at 32 x 32: quick to embed on a CPU."""

    channels = 3

    def __init__(self, per_class: int = 20) -> None:
        from fsl_lightning.data import Caltech101

        self.full, self.per_class, self.splits = Caltech101(image_size=32, download=False), per_class, {}

    def prepare(self) -> None:
        self.full.prepare()

    def load_split(self, split: str):
        from fsl_lightning.data import ClassImages

        if split not in self.splits:  # one object per split, as a real dataset's cache gives
            classes = self.full.load_split(split)
            groups = [classes.images[start : start + self.per_class] for start in classes.class_offsets[:-1].tolist()]
            self.splits[split] = ClassImages.from_groups(groups, classes.class_names)
        return self.splits[split]

    def decode_image(self, data, name):
        return self.full.decode_image(data, name)


@pytest.fixture(scope="module")
def caltech_subset32(data_root):
    dataset = CaltechSubset()
    dataset.prepare()
    return dataset
