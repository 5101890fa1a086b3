"""The cold decode (the first run on a dataset) on several processes gives today's serial pixels, bit for bit, on
real Omniglot; it uses no more processes than it is allowed; and the second start reads no image file at all."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from fsl_lightning.data import ImageFolderDataset, Omniglot
from fsl_lightning.data.datasets.archives import ImageArchive
from fsl_lightning.data.datasets.omniglot import decode_character_groups, decode_character_image
from fsl_lightning.data.parallel_decode import decode_workers, split_evenly


@pytest.fixture(scope="module")
def background_archive(data_root) -> ImageArchive:
    return ImageArchive(data_root / "omniglot" / "images_background.zip", "images_background")


@pytest.fixture(scope="module")
def some_characters(background_archive) -> list[list[str]]:
    """The drawers of 30 real characters spread over the alphabets (600 images)."""
    by_character = background_archive.files_by_folder(depth=2)
    return [sorted(by_character[name]) for name in sorted(by_character)[::32][:30]]


@pytest.mark.parametrize("image_size", [28, 105])
def test_parallel_decode_equals_the_serial_decode_of_each_file(background_archive, some_characters, image_size):
    serial = torch.stack(
        [
            torch.stack([decode_character_image(background_archive.read(m), m, image_size) for m in members])
            for members in some_characters
        ]
    )
    parallel = decode_character_groups(background_archive, some_characters, image_size, workers=2)
    assert parallel.dtype == torch.uint8 and parallel.shape == (30, 20, 1, image_size, image_size)
    assert torch.equal(parallel, serial)
    assert torch.equal(decode_character_groups(background_archive, some_characters, image_size, workers=1), serial)


def test_decode_workers_follow_the_cpus_and_omp_num_threads(monkeypatch):
    cpus = len(os.sched_getaffinity(0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert decode_workers() == cpus
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert decode_workers() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", str(cpus + 7))
    assert decode_workers() == cpus


def test_split_evenly_keeps_every_item_in_order():
    pieces = split_evenly(list(range(10)), 4)
    assert [len(piece) for piece in pieces] == [2, 3, 3, 2]
    assert [item for piece in pieces for item in piece] == list(range(10))
    assert split_evenly([1, 2], 8) == [[1], [2]]


def overwrite_keeping_size_and_time(path: Path) -> None:
    """Replaces a file's bytes by zeros of the same length and puts its modification time back: the source stamp
    is unchanged, so only a decode that reads the file again could notice (and would fail on it)."""
    stat = path.stat()
    path.write_bytes(bytes(stat.st_size))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_second_omniglot_start_reads_no_image_file(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("FSL_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "omniglot").mkdir()
    archive = tmp_path / "omniglot" / "images_evaluation.zip"
    shutil.copy2(data_root / "omniglot" / "images_evaluation.zip", archive)
    first = Omniglot(protocol="lake", image_size=28, root=str(tmp_path), download=False).load_split("test")
    overwrite_keeping_size_and_time(archive)
    second = Omniglot(protocol="lake", image_size=28, root=str(tmp_path), download=False).load_split("test")
    assert torch.equal(second.images, first.images) and second.class_names == first.class_names


def test_second_image_folder_start_reads_no_image_file(
    data_root, tmp_path, monkeypatch, background_archive, some_characters
):
    monkeypatch.setenv("FSL_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "my_images"
    for members in some_characters[:12]:
        for member in members[:3]:
            alphabet, character, file = member.split("/")
            target = folder / f"{alphabet}-{character}" / file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(background_archive.read(member))
    first = ImageFolderDataset(str(folder), image_size=28).load_split("train")
    for image in folder.rglob("*.png"):
        overwrite_keeping_size_and_time(image)
    second = ImageFolderDataset(str(folder), image_size=28).load_split("train")
    assert torch.equal(second.images, first.images) and second.class_names == first.class_names
