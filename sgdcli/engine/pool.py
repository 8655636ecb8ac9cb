"""Element-wise passes on OpenBLAS's own threads: an optimizer step over N elements runs as parts at once.

NumPy runs an element-wise pass (a square root, a division) on one core. After the weight gradient's
product, OpenBLAS's worker threads spin for ~0.1 s waiting for the next product (``workers.py``), so
a second Python thread (``workers.split``) finds the other core taken: Adam's step split that way
took 1.10x the time of the one-thread step. The spinning threads themselves are free, though, and
OpenBLAS hands them work through ``blas_level1_thread``: its level-1 driver (the one its own
``axpy`` splits a vector with), exported by the library, which cuts a range of M elements into one
part per thread and calls a routine on each part, the first on the calling thread. ``split`` gives it
a ctypes callback: each part runs a Python function on its elements (NumPy releases the GIL inside
each pass, so the parts' passes run at once). Measured on the batch-128 Adam race's first layer
(784 x 512; gradient product and step, in-process, interleaved): 1,418 against 1,476 us with two cores
sharing a cache, 1,900 against 2,400 us with separate caches (README Performance).

Inside ``split`` OpenBLAS's pool is set to one thread (process-wide, as ``blas.threads``), so a BLAS
call in a part (``blas.axpby``) runs on that part's own thread: a part calling the busy pool would
wait for itself. A part's element-wise results do not depend on where the parts are cut (every part
but the last is a whole number of ``UNIT`` elements, each at least ``blas.MIN_SIZE``, so BLAS and
NumPy take the same routines for it as for the whole), so results are bit-identical with or without
the pool (tests/test_pool.py).

The driver is OpenBLAS's internal interface, not its public API: it is used only with NumPy's own
scipy-openblas64 library of the 0.3 series, and only after a probe on first use has seen it cover a
range exactly, with the precision code this build expects (0.3.31 numbers single precision 2, older
releases 0). Anywhere else, on one thread, or for small arrays, ``split`` is one plain call.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable

import numpy as np

from . import blas

UNIT = 64  # elements: parts are cut at multiples of 256 bytes, so every part starts on a cache line
MIN_ELEMENTS = 4 * blas.MIN_SIZE  # below this (512 KiB in float32) one thread is as fast as the hand-over (~10 us)

_SIZE = ctypes.c_int64
# int (*)(m, n, k, alpha, a, lda, b, ldb, c, ldc, sb): how OpenBLAS's legacy_exec calls a single-precision
# real routine; a, b, c and sb are addresses (passed and received as integers: 0 stays 0, not None).
_ROUTINE = ctypes.CFUNCTYPE(ctypes.c_int, _SIZE, _SIZE, _SIZE, ctypes.c_float, _SIZE, _SIZE, _SIZE, _SIZE,
                            _SIZE, _SIZE, _SIZE)
_SINGLE_CODES = (2, 0)  # BLAS_SINGLE | BLAS_REAL in OpenBLAS >= 0.3.30, and before
_ALPHA = ctypes.c_float(0.0)  # read by the driver, unused by the parts


class _Job:
    """The split in progress: what each part runs, and what the parts report back."""

    def __init__(self, work: Callable[[int, int], None], scale: int, count: int) -> None:
        self.work, self.scale, self.count = work, scale, count
        self.caller = threading.get_ident()
        self.done: list[int] = []  # list.append is atomic under the GIL
        self.errors: list[BaseException] = []


_job: _Job | None = None
_lock = threading.Lock()  # one split at a time: _job is the running one's


def _run_part(m, n, k, alpha, a, lda, b, ldb, c, ldc, sb) -> int:
    """The routine OpenBLAS calls on each part, on its own thread: units [a, a + m) of the job's
    range (a arrives as a byte offset from 0). Never raises into C: an error is kept for ``split``."""
    job = _job
    try:
        thread = threading.get_ident()
        if thread != job.caller and thread not in _pinned:
            _pin_thread_state(thread)
        first = a // 4
        job.work(first * job.scale, min((first + m) * job.scale, job.count))
        job.done.append(m)
    except BaseException as error:  # noqa: BLE001 (raised again by split, on the caller's thread)
        job.errors.append(error)
    return 0


def _pin_thread_state(thread: int) -> None:
    """Keep the Python thread state of this OpenBLAS thread from one callback to the next. ctypes makes one
    for each callback on a thread Python did not start and frees it on return (~20 KiB allocated per
    update, with its first frame stack); one more PyGILState_Ensure, never released, keeps it alive."""
    ctypes.pythonapi.PyGILState_Ensure()
    _pinned.add(thread)


_pinned: set[int] = set()  # the OpenBLAS threads whose thread state is kept
os.register_at_fork(after_in_child=_pinned.clear)  # a child's OpenBLAS starts threads of its own
_CALLBACK = _ROUTINE(_run_part)  # kept alive for the process: OpenBLAS holds its address
_DRIVER: list = []  # [(driver, precision code) or None], looked up on first use


def _driver():
    """(blas_level1_thread, its single-precision code), or None where it is absent or fails the probe."""
    if not _DRIVER:
        _DRIVER.append(_probe())
    return _DRIVER[0]


def _probe():
    library = blas.numpy_blas_library()
    if library is None or not hasattr(library, "blas_level1_thread"):
        return None
    config = getattr(library, "scipy_openblas_get_config64_", None)
    if config is None:
        return None
    config.restype, config.argtypes = ctypes.c_char_p, []
    if not (config() or b"").startswith(b"OpenBLAS 0.3."):
        return None
    driver = library.blas_level1_thread
    driver.restype = ctypes.c_int
    driver.argtypes = [ctypes.c_int, _SIZE, _SIZE, _SIZE, ctypes.c_void_p, _SIZE, _SIZE, _SIZE, _SIZE, _SIZE,
                       _SIZE, _ROUTINE, ctypes.c_int]
    global _job
    for code in _SINGLE_CODES:
        seen: list[tuple[int, int]] = []
        _job = _Job(lambda start, stop: seen.append((start, stop)), 1, 1 << 20)
        try:
            driver(code, 7, 0, 0, ctypes.addressof(_ALPHA), 0, 1, 0, 1, 0, 0, _CALLBACK, 2)
        finally:
            _job = None
        if sorted(seen) == [(0, 4), (4, 7)]:
            return driver, code
    return None


def split(count: int, work: Callable[[int, int], None]) -> None:
    """Run ``work(start, stop)`` over the elements [0, count), in parts on OpenBLAS's threads where it
    can (see the module doc), else as ``work(0, count)``. ``work`` must compute each element
    independently of the others, and may call BLAS (it runs on one thread in a part). Returns when all
    parts are done; an exception in any part is raised here, after the others have finished."""
    threads = blas.thread_count() or 1
    driver = _driver() if threads > 1 and count >= MIN_ELEMENTS else None
    if driver is None or not _lock.acquire(blocking=False):  # (a split in progress: this one runs alone)
        work(0, count)
        return
    global _job
    try:
        parts = max(2, min(threads, count // max(2 * blas.MIN_SIZE, 1)))  # each part's BLAS passes as the whole's
        units = -(-count // UNIT)
        job = _job = _Job(work, UNIT, count)
        routine, code = driver
        with blas.threads(1):
            routine(code, units, 0, 0, ctypes.addressof(_ALPHA), 0, 1, 0, 1, 0, 0, _CALLBACK, parts)
    finally:
        _job = None
        _lock.release()
    if job.errors:
        raise job.errors[0]
    if sum(job.done) != units:  # a part OpenBLAS never ran: nothing may be left half done silently
        raise RuntimeError(f"pool.split: {sum(job.done)} of {units} units ran")


def split_arrays(work: Callable[[list[np.ndarray]], None], *arrays: np.ndarray) -> None:
    """``work(parts)`` on the same element range of each of ``arrays`` (all of one size), the ranges as
    ``split`` cuts them: ``parts`` a list of flat views, one per array. Arrays not all C-contiguous
    (whose flat view would be a copy) go to ``work`` whole, in one call."""
    if not all(a.flags.c_contiguous and a.size == arrays[0].size for a in arrays):
        work(list(arrays))
        return
    flat = [a.reshape(-1) for a in arrays]
    split(arrays[0].size, lambda start, stop: work([a[start:stop] for a in flat]))
