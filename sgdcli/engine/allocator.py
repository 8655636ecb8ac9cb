"""The process's memory allocator policy for training: freed memory is kept for the next update, and
the arrays every update streams through (weights, optimizer state, work arrays) start on a cache line.

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

malloc aligns a block to 16 bytes only, so a weight array's first element, and with it every row,
falls on a 64-byte cache line or 16, 32 or 48 bytes past one, as the heap happens to lie: one run's
arrays were at 0, 16, 48 and 32 past a line, the next run's at 48, 48, 32 and 0. Vector loads of a
misaligned array straddle two lines. A batch-1 momentum update's three passes over a 784 x 512 layer
(x @ W, the velocity's rank-1 update, w += v) took 102-106 us with W and v on a line or 32 bytes past
one and 118-122 us 16 or 48 bytes past one (``benchmarks/alignment.py``, one BLAS thread), so the same
training ran up to ~8% slower or faster from run to run. ``aligned_empty``, ``aligned_full`` and
``aligned_copy`` make arrays that start on a 64-byte boundary (``ALIGNMENT``: a cache line, and the
width of an AVX-512 vector); the engine makes its parameters, optimizer state and work arrays with them.
"""

from __future__ import annotations

import ctypes
import math
import os

import numpy as np
from numpy.typing import DTypeLike

ALIGNMENT = 64  # bytes

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


def aligned_empty(shape: tuple[int, ...], dtype: DTypeLike) -> np.ndarray:
    """A new uninitialised C-contiguous array whose first element is at a multiple of ``ALIGNMENT`` bytes.

    A view into a slightly larger byte buffer (its ``base``), which it keeps alive; writeable, and
    like any NumPy array otherwise (an object array is ``np.empty``'s). Raises ValueError for a negative
    dimension, and what ``np.dtype`` raises for a bad dtype.
    """
    dtype = np.dtype(dtype)
    shape = tuple(int(d) for d in shape)
    if min(shape, default=0) < 0:
        raise ValueError(f"negative dimensions are not allowed, got shape {shape}")
    if dtype.hasobject:  # references, not bytes: no view of a byte buffer (and no vector loads to align)
        return np.empty(shape, dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    buffer = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    start = -buffer.ctypes.data % ALIGNMENT
    return buffer[start : start + nbytes].view(dtype).reshape(shape)


def aligned_full(shape: tuple[int, ...], dtype: DTypeLike, value: float) -> np.ndarray:
    """``np.full(shape, value, dtype)``, aligned as ``aligned_empty``."""
    array = aligned_empty(shape, dtype)
    array.fill(value)
    return array


def aligned_copy(array: np.ndarray, dtype: DTypeLike | None = None) -> np.ndarray:
    """A C-contiguous aligned copy of ``array`` (in ``dtype``, by NumPy's unsafe cast, when given)."""
    array = np.asarray(array)
    copy = aligned_empty(array.shape, array.dtype if dtype is None else dtype)
    np.copyto(copy, array, casting="unsafe")
    return copy


def work_array(store: dict[str, np.ndarray], key: str, like: np.ndarray) -> np.ndarray:
    """store[key], (re)made (``aligned_empty``) when missing or not shaped and typed like ``like``: a work
    array made once and reused by every update (an optimizer's scratch)."""
    array = store.get(key)
    if array is None or array.shape != like.shape or array.dtype != like.dtype:
        array = store[key] = aligned_empty(like.shape, like.dtype)
    return array
