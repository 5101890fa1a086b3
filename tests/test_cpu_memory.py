"""The CLI's malloc settings (fsl_lightning/run/cpu_memory.py): a step's large buffers come from the reusable heap."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="glibc malloc settings apply on Linux only")

# A fresh interpreter allocates 16 MiB and 72 MiB (Conv4 activation buffers of a 20-way and a 60-way episode) with
# and without the settings and reports whether glibc served each with its own mmap (mallinfo2's count of mmapped
# blocks goes up) or from the heap.
PROBE = textwrap.dedent("""
    import ctypes, sys
    from fsl_lightning.run.cpu_memory import keep_freed_memory_for_reuse
    fields = ["arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"]
    Mallinfo2 = type("Mallinfo2", (ctypes.Structure,), {"_fields_": [(name, ctypes.c_size_t) for name in fields]})
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype, libc.malloc.restype = Mallinfo2, ctypes.c_void_p
    libc.malloc.argtypes, libc.free.argtypes = [ctypes.c_size_t], [ctypes.c_void_p]
    applied = keep_freed_memory_for_reuse() if sys.argv[1] == "tuned" else False
    mapped = []
    for size in (16 * 2**20, 72 * 2**20):
        before = libc.mallinfo2().hblks
        block = libc.malloc(size)
        mapped.append(libc.mallinfo2().hblks > before)
        libc.free(block)
    print(applied, *mapped)
""")


def _probe(mode: str, **env: str) -> str:
    import os

    result = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env={**os.environ, **env}
    )
    return result.stdout.strip()


def test_glibc_defaults_mmap_a_large_buffer_the_settings_serve_it_from_the_heap():
    assert _probe("defaults") == "False True True"
    assert _probe("tuned") == "True False False"


def test_the_environment_variable_keeps_glibc_defaults():
    assert _probe("tuned", FSL_GLIBC_MALLOC_DEFAULTS="1") == "False True True"
