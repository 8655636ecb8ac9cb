"""The process's memory allocator policy for training: freed memory is kept for the next update.

A training update allocates and frees the same large arrays every time (im2col columns, conv
outputs, their gradients: megabytes each). glibc's malloc serves blocks above its mmap threshold
(128 KiB, rising to at most 32 MiB) with fresh ``mmap`` pages and returns them to the kernel on
``free``, and trims the heap's free top above its trim threshold: every update then page-faults
in and zero-fills its arrays again. On the CNN race (benchmarks/bench_cnn.py) that was ~20 ms of
an update's ~55 (system time). ``retain_freed_memory`` sets both thresholds high (``mallopt``
M_MMAP_THRESHOLD and M_TRIM_THRESHOLD), so large blocks come from the heap and freed ones are
reused. Freed blocks stay in the process until reused, so peak resident memory can rise a little
(the race's plain network: 340 -> 376 MiB); it is returned at exit. No effect, and no error, on a C
library other than glibc.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1  # glibc's <malloc.h> parameter numbers
M_MMAP_THRESHOLD = -3
THRESHOLD = 1 << 30  # bytes: larger blocks (a gigabyte) still get their own mapping


def retain_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse; True if it accepted, False on other C libraries.

    Idempotent and cheap; changes only speed (no value computed by the engine depends on it).
    """
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD))
    except (AttributeError, OSError, ValueError):
        return False
