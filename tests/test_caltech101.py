"""Caltech-101 from the real archive, its seeded split written in the repository, and image-folder datasets."""

from __future__ import annotations

import json
import tarfile

import pytest
import torch

from fsl_lightning.data import Caltech101, DatasetNotFoundError, ImageFolderDataset
from fsl_lightning.data.datasets.caltech101 import EXCLUDED, TARBALL, _tar_sources, caltech101_split, repository_split
from fsl_lightning.data.datasets.folder_split import first_class_split
from fsl_lightning.data.datasets.natural import read_split_file


@pytest.fixture(scope="session")
def caltech_tarball(data_root):
    path = data_root / "caltech101" / TARBALL
    if not path.exists():
        pytest.fail(f"Real Caltech-101 not found at {path}: set FSL_DATA_ROOT to the folder holding caltech101/.")
    return path


@pytest.fixture(scope="session")
def caltech32(caltech_tarball):
    return Caltech101(image_size=32, download=False)


def test_repository_split_is_the_seeded_split_of_the_real_classes(caltech_tarball):
    class_names = list(_tar_sources(caltech_tarball, str(caltech_tarball)))
    assert len(class_names) == 102
    split = repository_split()
    assert split == caltech101_split(class_names, seed=0)
    assert [len(split[s]) for s in ("train", "val", "test")] == [64, 16, 20]
    every = split["train"] + split["val"] + split["test"]
    assert len(set(every)) == 100 and not set(EXCLUDED) & set(every)


def test_caltech_splits_decode_to_rgb_images_of_the_configured_size(caltech32):
    test = caltech32.load_split("test")
    assert test.class_names == repository_split()["test"]
    assert test.images.dtype == torch.uint8 and test.images.shape[1:] == (3, 32, 32)
    assert int(test.images_per_class.min()) >= 31
    train = caltech32.load_split("train")
    assert train.num_classes == 64 and len(train.images) > 4000


def test_grayscale_caltech_photos_become_three_equal_channels(caltech32):
    # car_side holds grayscale photos only: RGB conversion repeats the gray channel
    for split in ("train", "val", "test"):
        classes = caltech32.load_split(split)
        if "car_side" in classes.class_names:
            c = classes.class_names.index("car_side")
            images = classes.images[classes.class_offsets[c] : classes.class_offsets[c + 1]]
            # resizing each channel identically keeps them equal
            assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])
            return
    pytest.fail("car_side is in no split")


def test_missing_caltech_says_where_to_put_it(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"101_ObjectCategories\.tar\.gz.*caltech-101\.zip"):
        Caltech101(root=str(tmp_path), download=False).load_split("train")


def _extract_classes(tarball, target, classes, per_class):
    """A small folder copy (one sub-folder per class) of real Caltech-101 photos."""
    counts = {name: 0 for name in classes}
    with tarfile.open(tarball, "r|gz") as stream:
        for member in stream:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3 and parts[1] in counts and counts[parts[1]] < per_class:
                (target / parts[1]).mkdir(parents=True, exist_ok=True)
                (target / parts[1] / parts[2]).write_bytes(stream.extractfile(member).read())
                counts[parts[1]] += 1


@pytest.fixture(scope="module")
def photo_folder(caltech_tarball, tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    classes = ["airplanes", "brain", "car_side", "chair", "crab", "dolphin", "ewer", "ferry", "lamp", "pizza"]
    _extract_classes(caltech_tarball, folder, classes, per_class=6)
    return folder


def test_image_folder_splits_classes_by_seed_and_writes_the_split(photo_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("FSL_CACHE_DIR", str(tmp_path / "cache"))
    dataset = ImageFolderDataset(str(photo_folder), image_size=24, split_seed=3)
    split = dataset.class_split()
    assert split == first_class_split(
        sorted(p.name for p in photo_folder.iterdir() if p.is_dir()), 3, (0.64, 0.16, 0.2)
    )
    assert read_split_file(photo_folder / "fsl_split_seed3.json") == split
    train = dataset.load_split("train")
    assert train.class_names == split["train"] and train.images.shape[1:] == (3, 24, 24)
    assert torch.equal(train.images_per_class, torch.full((len(split["train"]),), 6))
    assert ImageFolderDataset(str(photo_folder), split_seed=4).class_split() != split


def test_image_folder_follows_a_given_split_file(photo_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("FSL_CACHE_DIR", str(tmp_path / "cache"))
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": ["airplanes", "brain"], "val": ["chair"], "test": ["crab", "pizza"]}))
    dataset = ImageFolderDataset(str(photo_folder), image_size=16, split_file=str(split_file))
    assert dataset.load_split("test").class_names == ["crab", "pizza"]


def test_image_folder_names_a_corrupt_image(photo_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("FSL_CACHE_DIR", str(tmp_path / "cache"))
    broken = tmp_path / "broken"
    for name in ("a", "b", "c", "d", "e"):
        (broken / name).mkdir(parents=True)
        (broken / name / "x.jpg").write_bytes((photo_folder / "brain").iterdir().__next__().read_bytes())
    bad = broken / "a" / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    split = {"train": ["a", "b", "c"], "val": ["d"], "test": ["e"]}
    (tmp_path / "s.json").write_text(json.dumps(split))
    with pytest.raises(ValueError, match="bad.jpg"):
        ImageFolderDataset(str(broken), split_file=str(tmp_path / "s.json")).load_split("train")


def test_missing_image_folder_says_what_it_needs(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="one sub-folder of images per class"):
        ImageFolderDataset(str(tmp_path / "nowhere")).load_split("train")
