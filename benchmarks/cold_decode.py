"""Cold start: decoding Omniglot (both archives, 32,460 PNGs) into the decoded cache, one core against all.

    python benchmarks/cold_decode.py [--rounds 3] [--image-size 28]

Every round times each variant once, in a rotated order (so that the load of a shared machine falls on all alike):

* ``before``: the decode as it was, one file at a time in one process (``decode_character_image`` per file);
* ``decode_character_groups, 1 process``: the decode as it is now, with one worker (what ``OMP_NUM_THREADS=1`` gives);
* ``threads, N``: the same runs of characters on N threads (PIL holds the GIL for most of a tiny PNG's work);
* ``processes, N``: the same runs on N forked processes (``decode_character_groups``, what a first run uses);
* ``first start, 1 process`` and ``first start, N processes``: ``Omniglot().prepare()`` into an empty temporary
  cache folder (decode, then save), with ``OMP_NUM_THREADS`` 1 and N (what sets the decode's worker count);
* ``second start``: ``Omniglot().prepare()`` again, from that cache (no image file is read).

Prints the median images/s of each and its ratio to ``before``, with N = the CPUs this process may use. Needs real
Omniglot under ``$FSL_DATA_ROOT``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from fsl_lightning.data import Omniglot
from fsl_lightning.data.datasets.archives import ImageArchive
from fsl_lightning.data.datasets.omniglot import (
    PARTS,
    _decode_group_run,
    decode_character_groups,
    decode_character_image,
)
from fsl_lightning.data.parallel_decode import split_evenly
from fsl_lightning.data.roots import data_root


def character_groups() -> list[tuple[ImageArchive, list[list[str]]]]:
    """Each Omniglot archive with its characters' files, in the cache's order."""
    archives = []
    for part in PARTS:
        archive = ImageArchive(data_root(None) / "omniglot" / f"{part}.zip", part)
        by_character = archive.files_by_folder(depth=2)
        archives.append((archive, [sorted(by_character[name]) for name in sorted(by_character)]))
    return archives


def before(archives, size: int) -> None:
    for archive, groups in archives:
        torch.stack(
            [
                torch.stack([decode_character_image(archive.read(f), archive.describe(f), size) for f in files])
                for files in groups
            ]
        )


def processes(workers: int) -> Callable:
    def run(archives, size: int) -> None:
        for archive, groups in archives:
            decode_character_groups(archive, groups, size, workers=workers)

    return run


def threads(workers: int) -> Callable:
    def run(archives, size: int) -> None:
        for archive, groups in archives:
            jobs = [(archive.path, archive.top, chunk, size) for chunk in split_evenly(groups, 4 * workers)]
            with ThreadPoolExecutor(workers) as pool:
                np.concatenate(list(pool.map(_decode_group_run, jobs)))

    return run


def first_start(workers: int, cache: Path) -> Callable:
    def run(archives, size: int) -> None:
        for stale in cache.glob("*.pt"):
            stale.unlink()
        with decode_environment(cache, workers):
            Omniglot(image_size=size, download=False).prepare()

    return run


def second_start(cache: Path) -> Callable:
    def run(archives, size: int) -> None:
        with decode_environment(cache, workers=1):
            Omniglot(image_size=size, download=False).prepare()

    return run


class decode_environment:
    """``FSL_CACHE_DIR`` set to ``cache`` and ``OMP_NUM_THREADS`` to ``workers`` (the decode's process count; torch's
    own thread count is left as it is), for a while."""

    def __init__(self, cache: Path, workers: int) -> None:
        self.values = {"FSL_CACHE_DIR": str(cache), "OMP_NUM_THREADS": str(workers)}

    def __enter__(self) -> None:
        self.saved = {key: os.environ.get(key) for key in self.values}
        self._apply(self.values)

    def __exit__(self, *exc) -> None:
        self._apply(self.saved)

    @staticmethod
    def _apply(values: dict) -> None:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def main(rounds: int, size: int) -> None:
    archives = character_groups()
    images = sum(len(files) for _, groups in archives for files in groups)
    workers = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as cache_dir:
        cache = Path(cache_dir)
        variants: dict[str, Callable] = {
            "before: one file at a time, 1 process": before,
            "decode_character_groups, 1 process": processes(1),
            f"threads, {workers}": threads(workers),
            f"processes, {workers}": processes(workers),
            "first start (empty cache), 1 process": first_start(1, cache),
            f"first start (empty cache), {workers} processes": first_start(workers, cache),
            "second start (from the cache)": second_start(cache),
        }
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        names = list(variants)
        for round_index in range(rounds):
            # rotate the order, but a second start always follows a first one
            order = names[round_index % 6 : 6] + names[: round_index % 6]
            for name in [*order, names[6]]:
                started = time.perf_counter()
                variants[name](archives, size)
                seconds[name].append(time.perf_counter() - started)
                print(f"round {round_index + 1}: {name}: {seconds[name][-1]:.2f} s", flush=True)
    reference = statistics.median(seconds[names[0]])
    print(
        f"\nOmniglot, both archives ({images:,} PNGs) at {size}x{size}; {workers} CPUs usable, "
        f"load {os.getloadavg()[0]:.2f}; medians of {rounds} rounds"
    )
    print("| decode | images/s | seconds | speed-up over before |")
    print("|---|---|---|---|")
    for name in names:
        median = statistics.median(seconds[name])
        print(f"| {name} | {images / median:,.0f} | {median:.2f} | {reference / median:.2f}x |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=28)
    arguments = parser.parse_args()
    main(arguments.rounds, arguments.image_size)
