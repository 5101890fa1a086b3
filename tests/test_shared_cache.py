"""The decoded-image cache is memory-mapped and built once: the processes of a machine share one copy of a split."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest
import torch

from fsl_lightning.data import Omniglot
from fsl_lightning.data.decoded_cache import cached
from fsl_lightning.data.roots import decoded_cache_dir


def mappings_of(path: Path) -> list[tuple[int, int]]:
    """The address ranges of this process mapped from ``path`` (/proc/self/maps)."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(path):
            start, end = (int(value, 16) for value in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def test_a_split_is_mapped_from_its_cache_file_not_copied(omniglot: Omniglot):
    images = Omniglot(protocol="vinyals").load_split("test").images
    ranges = mappings_of(decoded_cache_dir() / "omniglot-vinyals-test-28.pt")
    start = images.data_ptr()
    assert any(low <= start and start + images.numel() <= high for low, high in ranges), (
        "the test split's images are not the cache file's pages: each process would hold its own copy"
    )


def _build_in_child(cache_dir: str, marker: str, results) -> None:
    import os

    os.environ["FSL_CACHE_DIR"] = cache_dir

    def build() -> dict:
        with open(marker, "a") as file:
            file.write("built\n")
        time.sleep(1.0)  # long enough for the other process to arrive while this one holds the lock
        return {"images": torch.arange(10, dtype=torch.uint8)}

    results.put(cached("shared-entry", ["stamp", 1], build)["images"].tolist())


@pytest.mark.slow  # several processes
def test_one_process_builds_a_missing_entry_while_the_others_wait_and_map_it(tmp_path):
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    marker = tmp_path / "builds.txt"
    workers = [
        context.Process(target=_build_in_child, args=(str(tmp_path / "cache"), str(marker), results)) for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert outcomes == [list(range(10))] * 2
    assert marker.read_text() == "built\n", "both processes decoded: the second did not wait for the first's file"


def scratch_mappings() -> list[tuple[int, int]]:
    """Address ranges mapped from unlinked ``.decoding`` files of the cache directory (file_backed_uint8)."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and ".decoding" in fields[5] and fields[5].endswith("(deleted)"):
            start, end = (int(value, 16) for value in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def is_file_backed(tensor: torch.Tensor) -> bool:
    start, size = tensor.data_ptr(), tensor.numel() * tensor.element_size()
    return any(low <= start and start + size <= high for low, high in scratch_mappings())


def test_decoders_write_a_split_into_file_pages_not_process_memory(tmp_path, monkeypatch):
    """A split larger than the memory can be decoded: the decoders fill a file-backed buffer image by image."""
    from PIL import Image

    from fsl_lightning.data.datasets.natural import decode_classes, decode_rgb

    monkeypatch.setenv("FSL_CACHE_DIR", str(tmp_path / "cache"))
    files = []
    for index in range(6):
        path = tmp_path / f"image{index}.png"
        Image.new("RGB", (40, 30), color=(40 * index, 10, 200)).save(path)
        files.append((path, path.name))
    classes = decode_classes(["a", "b"], [files[:3], files[3:]], image_size=16)
    assert is_file_backed(classes.images)
    assert torch.equal(classes.images[4], decode_rgb(files[4][0], files[4][1], 16))  # each image in its slot
