"""A cold decode on every core the run may use: chunks of image files decoded in forked worker processes.

The first run on a dataset decodes every image once into the decoded cache. Omniglot's images are tiny (105x105,
1-bit PNGs), so decoding one costs mostly Python (PIL's file parsing, the array conversion), which holds the GIL:
threads barely help (``benchmarks/cold_decode.py`` measures both), processes do. The workers are forked, so they
start at once and inherit the imports; each opens its own files (a zip handle shared across a fork would share its
file offset), and sends back plain NumPy arrays.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

Chunk = TypeVar("Chunk")
Result = TypeVar("Result")


def decode_workers() -> int:
    """How many processes a cold decode uses: the CPUs this process may run on, capped by ``OMP_NUM_THREADS`` when
    it is set (a run told to use one thread decodes in this process alone)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    told = os.environ.get("OMP_NUM_THREADS", "").strip()
    if told.isdigit() and int(told) >= 1:
        available = min(available, int(told))
    return max(1, available)


def split_evenly(items: Sequence[Chunk], pieces: int) -> list[Sequence[Chunk]]:
    """``items`` cut into at most ``pieces`` consecutive, non-empty runs of near-equal length, in order."""
    pieces = max(1, min(pieces, len(items)))
    bounds = [round(i * len(items) / pieces) for i in range(pieces + 1)]
    return [items[start:end] for start, end in zip(bounds, bounds[1:])]


def in_processes(function: Callable[[Chunk], Result], chunks: Sequence[Chunk], workers: int) -> Iterator[Result]:
    """``function(chunk)`` for each chunk, in order, as each is ready, computed by ``workers`` forked processes (in
    this process when ``workers`` is 1, there is one chunk, or this process may not have children): a consumer can
    store each result and drop it before the next. ``function`` must be defined at module level, and its results
    small to pickle (arrays, not open files)."""
    if workers <= 1 or len(chunks) <= 1 or not _may_fork():
        yield from (function(chunk) for chunk in chunks)
        return
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(min(workers, len(chunks)), mp_context=context, initializer=_one_thread_each) as pool:
        yield from pool.map(function, chunks)


def _may_fork() -> bool:
    # A daemonic process (a DataLoader worker) may not start children; fork exists on Linux and macOS only.
    return not multiprocessing.current_process().daemon and "fork" in multiprocessing.get_all_start_methods()


def _one_thread_each() -> None:
    """The workers already use every core between them: one intra-op thread each, as DataLoader workers do (this
    also keeps a forked child off the parent's OpenMP thread pool)."""
    import torch

    torch.set_num_threads(1)
