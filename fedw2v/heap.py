"""Freed memory kept in the process while training on the CPU (glibc's malloc), so the next step reuses it.

glibc serves every block above its mmap threshold (128 KiB, raised as far as 32 MiB as blocks are freed) with a
fresh ``mmap`` and gives it back to the kernel with ``munmap`` when it is freed; the top of the heap is trimmed
the same way. A training step allocates and frees the same large activations and gradients every time (at
wav2vec2-base's size, the first convolution's output alone is ~1 GB for 8 x 4 s), so every step faults in and
zeroes those pages again: 5.1 million page faults in five base-size steps, 1.4 million with this module, and
10-19% faster (`benchmarks/cpu_heap.py`, BENCHMARKS.md). `keep_freed_memory` turns both off for the duration of a
block (``mallopt``: no mmap for allocations, no trimming), so freed blocks stay in the heap and the next step's
tensors reuse them, and gives everything that is free back to the kernel at the end (``malloc_trim``) with
glibc's default limits restored. The cost: the heap holds what fragmentation leaves between steps (3-4% more peak
memory at base size).

A process-wide setting, as any allocator setting is: another thread allocating meanwhile shares it. glibc offers
no way back to its *dynamic* mmap threshold, so after the block the threshold stays where it was (a fixed one).
A no-op where the C library is not glibc (musl, macOS, Windows) and on CUDA, whose caching allocator already
reuses device memory (`fedw2v.train.local_train` asks for it on the CPU only: ``--no-keep-freed-memory`` to
leave malloc alone).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

# mallopt parameters (glibc's malloc.h) and glibc's defaults for the two this module changes
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
DEFAULT_TRIM_THRESHOLD = 128 * 1024
DEFAULT_MMAP_MAX = 65536


def glibc() -> Any:
    """The process's C library through ctypes when it is glibc with ``mallopt`` and ``malloc_trim``; else None."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded into this process: its own C library
    except OSError:  # pragma: no cover -- a Linux process always has one
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):  # pragma: no cover
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


@contextlib.contextmanager
def keep_freed_memory(on: bool = True) -> Iterator[bool]:
    """Within the block, freed memory stays in the process (see the module); yields whether that is in force
    (False where asked not to, or where the C library is not glibc)."""
    libc = glibc() if on else None
    # -1 as M_TRIM_THRESHOLD: never trim (glibc reads the int as a size_t)
    if libc is None or not (libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, -1) == 1):
        yield False
        return
    try:
        yield True
    finally:
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)
