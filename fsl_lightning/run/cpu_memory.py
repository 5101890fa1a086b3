"""Keep freed memory in the process for the next training step: glibc malloc settings for CPU training.

A training step allocates large activation buffers and frees them at its end. With glibc's defaults every buffer
above a threshold (at most 32 MiB, raised dynamically) is a fresh ``mmap`` returned to the kernel when freed, and
the top of the heap is trimmed back to the kernel too: the next step page-faults all of that memory in again.
On the 2-core Xeon this project is measured on, a bf16 Conv4 60-way episode then spends about a third of its time
in the kernel (BENCHMARKS.md, "CPU precision and kernels": 6.2 against 9.7 steps/s). Serving every allocation up to
32 MiB from the heap and keeping up to 1 GiB of freed heap for reuse removes those page faults; the cost is that a
process holds on to memory it has freed (up to that much), which a training run reuses at its next step anyway.
Buffers above 32 MiB (the largest threshold glibc accepts) would still be mmapped afresh at every step: the first
block's activations of a 60-way Conv4 episode are 72 MiB each. glibc's mmap is therefore switched off
(``M_MMAP_MAX`` 0), so that they too come from the reusable heap: on a 2-core AVX2-only EPYC the step's kernel time
fell from 45-128 to 3-6 ms and the step went 1.08-1.22x faster (BENCHMARKS.md, "Where a training step's time
goes"). Memory mapped from files (the decoded-image cache) is not malloc's and is unaffected.

``FSL_GLIBC_MALLOC_DEFAULTS=1`` keeps glibc's defaults. Other C libraries (macOS, Windows, musl) are left alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt(3) parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -2, -3, -4
SETTINGS = {
    M_MMAP_THRESHOLD: 32 * 2**20,  # the largest glibc accepts: allocations below it come from the heap
    M_MMAP_MAX: 0,  # and those above it too (no mmapped blocks at all)
    M_TRIM_THRESHOLD: 2**30,  # free heap kept before any is returned to the kernel
    M_TOP_PAD: 256 * 2**20,  # extra heap taken per growth, so a step's first allocations fault in fewer times
}


def keep_freed_memory_for_reuse() -> bool:
    """Applies :data:`SETTINGS` to this process's glibc malloc; returns whether they are in effect."""
    if sys.platform != "linux" or os.environ.get("FSL_GLIBC_MALLOC_DEFAULTS", "") not in ("", "0"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(parameter, value) == 1 for parameter, value in SETTINGS.items())
