"""Keeping freed memory in the process while the library computes (glibc only).

glibc's ``malloc`` serves every block over its ``mmap`` threshold (at most 32 MB) with a fresh
``mmap`` and returns it to the operating system when it is freed, and it trims the top of its
heap past ``M_TRIM_THRESHOLD``. A training step or an inference batch allocates and frees the
same large tensors again and again (on 28 px images a convnet map of 51 MB, at 224 px several),
so every step page-faults them in afresh: on 4 096 Fashion-MNIST images a SCAN fit took 1.00
million minor page faults against 0.32 million with freed memory kept; with it, epochs ran
1.03-1.41x faster and EfficientNet-Lite0 inference 1.65x (``doc/benchmarks.rst``, "The memory
allocator"). :func:`keep_freed_memory` switches ``mmap`` off for ``malloc`` and the trimming
off while the library computes, then restores glibc's default values and hands the freed
memory back with ``malloc_trim(0)``, so the process does not stay at its peak afterwards.

It does nothing off glibc (macOS, Windows, musl), when ``GLIBC_TUNABLES`` already sets a
``malloc`` value (the user's own choice stands) or when the environment variable
``SKDEEPCLUSTER_KEEP_FREED_MEMORY`` is ``0``. The arithmetic is unchanged: fits and embeddings
are the same to the bit.
"""

import contextlib
import ctypes
import os
import platform
import threading

# mallopt parameters (malloc.h) and glibc's default values for them
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
GLIBC_DEFAULTS = {M_TRIM_THRESHOLD: 128 * 1024, M_MMAP_MAX: 65536}
KEEP = {M_TRIM_THRESHOLD: 2**31 - 1, M_MMAP_MAX: 0}

_lock = threading.Lock()
_depth = 0


def _glibc():
    """The C library when these settings apply here, else None."""
    if os.environ.get("SKDEEPCLUSTER_KEEP_FREED_MEMORY", "1") == "0":
        return None
    if "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return None
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None
    return libc


def _set(libc, values):
    for parameter, value in values.items():
        libc.mallopt(ctypes.c_int(parameter), ctypes.c_int(value))


@contextlib.contextmanager
def keep_freed_memory():
    """Within the block, freed memory stays in the process for reuse (glibc only; nests)."""
    global _depth
    libc = _glibc()
    if libc is None:
        yield
        return
    with _lock:
        if _depth == 0:
            _set(libc, KEEP)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _set(libc, GLIBC_DEFAULTS)
                libc.malloc_trim(ctypes.c_size_t(0))
