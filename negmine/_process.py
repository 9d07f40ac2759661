"""A setting of the whole process that negmine's command line applies (the library never does).

glibc serves an allocation above its mmap threshold (128 KiB at first) with a
mapping of its own, unmapped when freed. But each time such a block is freed,
glibc raises the threshold to the block's size (up to 32 MiB), so later blocks
of that size come from the heap, where freed memory stays resident. Mining
frees many large temporaries on several threads, so the resident set grows
past what the run ever holds at once: mining the 1M store peaked at 1,310 MiB
with glibc's default and at 1,140 MiB with the threshold fixed at 4 MiB, in the
same time (at 1 MiB the fresh mappings cost time: docs/benchmarks.md). The
``negmine`` command and the benchmark's own processes fix it; a program using
the library sets ``MALLOC_MMAP_THRESHOLD_=4194304`` in its environment for the
same effect.
"""

from __future__ import annotations

import ctypes
import logging
import os

__all__ = ["MMAP_THRESHOLD", "return_freed_blocks"]

log = logging.getLogger(__name__)

#: Bytes from which an allocation gets a mapping of its own (returned when freed).
MMAP_THRESHOLD = 4 << 20
#: ``M_MMAP_THRESHOLD`` of glibc's ``mallopt`` (``malloc.h``).
_M_MMAP_THRESHOLD = -3


def return_freed_blocks(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes for this process.

    Blocks this large or larger are then always mapped on their own and given
    back to the system when freed (setting the threshold also stops glibc from
    raising it). Nothing is changed where the environment already sets
    ``MALLOC_MMAP_THRESHOLD_`` (the user's choice), or where the C library has
    no ``mallopt`` (not glibc).

    Parameters
    ----------
    threshold : int
        Bytes, > 0.

    Returns
    -------
    bool
        Whether the threshold was set.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # no such symbol, or no C library to open
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = mallopt(_M_MMAP_THRESHOLD, int(threshold)) == 1
    log.debug("glibc mmap threshold fixed at %d bytes: %s", threshold, done)
    return done
