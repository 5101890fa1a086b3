"""The decoded-image cache is memory-mapped and built once: the processes of a machine share one copy of a split."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

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


def test_one_process_builds_a_missing_entry_while_the_others_wait_and_map_it(tmp_path):
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    marker = tmp_path / "builds.txt"
    workers = [context.Process(target=_build_in_child, args=(str(tmp_path / "cache"), str(marker), results))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert outcomes == [list(range(10))] * 2
    assert marker.read_text() == "built\n", "both processes decoded: the second did not wait for the first's file"
