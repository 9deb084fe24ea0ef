"""Make the process give decode memory back: glibc's malloc tuned for large, short-lived buffers.

Decoding an image allocates a few large buffers (Pillow's image blocks, numpy arrays) and frees
them a moment later. glibc serves such requests with ``mmap`` at first, but each free of an
mmapped chunk raises its mmap threshold (up to 32 MiB), after which the same sizes come from the
heaps, where freed memory stays with the process: after a burst of large images ``imgclf serve``
kept hundreds of MB it no longer used. Fixing the threshold at 1 MiB keeps large buffers mmapped,
so each goes back to the system when freed, and two arenas stop every decode thread from growing a
heap of its own. Elsewhere (musl, macOS, Windows) nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

logger = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
#: Allocations from this size on are mmapped (and returned to the system when freed).
MMAP_THRESHOLD_BYTES = 1024 * 1024
#: malloc arenas shared by all threads.
ARENA_MAX = 2


def tune_malloc(
    mmap_threshold_bytes: int = MMAP_THRESHOLD_BYTES, arena_max: int = ARENA_MAX
) -> bool:
    """Set glibc's mmap threshold and arena count for this process.

    Returns:
        True when glibc accepted both settings; False on other C libraries.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    accepted = bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold_bytes)) and bool(
        libc.mallopt(_M_ARENA_MAX, arena_max)
    )
    logger.debug(
        "malloc: mmap threshold %d B, %d arenas: %s", mmap_threshold_bytes, arena_max, accepted
    )
    return accepted
