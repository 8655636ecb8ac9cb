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

Inside ``split`` OpenBLAS's pool is set to one thread (process-wide), so a BLAS call in a part
(``blas.axpby``) runs on that part's own thread: a part calling the busy pool would wait for itself.
A split holds ``blas.COUNT_LOCK`` throughout, so another thread's ``blas.threads`` block, split or
``os.fork`` waits for it (a fork stops OpenBLAS's threads, and would wait for a part waiting for the
GIL). Each part runs under the caller's NumPy error handling (``np.errstate`` is per thread). An
exception from a signal handler (Ctrl-C) can come at any call, also as the routine is entered, where
ctypes only reports it to ``sys.unraisablehook``: ``split`` collects those and raises the part's, and
restores the thread count with one call, after which the exception comes. A part's element-wise
results do not depend on where the parts are cut (every part but the last is a whole number of
``UNIT`` elements, each at least ``blas.MIN_SIZE``, so BLAS and NumPy take the same routines for it as
for the whole), so results are bit-identical with or without the pool (tests/test_pool.py).

The driver is OpenBLAS's internal interface, not its public API: it is used only with NumPy's own
scipy-openblas64 library of the 0.3 series, and only after a probe on first use has seen it cover a
range exactly, with the precision code this build expects (0.3.31 numbers single precision 2, older
releases 0). Anywhere else, on one thread, or for small arrays, ``split`` is one plain call.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import threading
import time
from collections.abc import Callable

import numpy as np

from . import blas, busy, placement
from .split_timing import SplitTiming

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
        # NumPy's error handling is per thread: the other parts take the caller's, its callback included
        self.numpy_errors = {**np.geterr(), "call": np.geterrcall()}
        self.done: list[int] = []  # list.append is atomic under the GIL
        self.errors: list[BaseException] = []
        self.unraisable: list = []  # what sys.unraisablehook got while the parts ran


_job: _Job | None = None  # the running split's (one at a time: under blas.COUNT_LOCK)
_inside = threading.local()  # .active: this thread runs a split's work (a split in it runs alone)


def _run_part(m, n, k, alpha, a, lda, b, ldb, c, ldc, sb) -> int:
    """The routine OpenBLAS calls on each part, on its own thread: units [a, a + m) of the job's
    range (a arrives as a byte offset from 0), under the caller's NumPy error handling. An error is
    kept for ``split``; one raised before the ``try`` (a signal handler's, at the call) reaches
    ``split`` through ``sys.unraisablehook``, where ctypes reports it."""
    job = _job
    try:
        first = a // 4
        start, stop = first * job.scale, min((first + m) * job.scale, job.count)
        thread = threading.get_ident()
        try:
            _inside.active = True
            if thread == job.caller:
                job.work(start, stop)
            else:
                if thread not in _pinned:
                    _pin_thread_state(thread)
                with np.errstate(**job.numpy_errors):
                    job.work(start, stop)
        finally:
            _inside.active = False
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


def _before_fork() -> None:
    """A fork waits for a split in progress: OpenBLAS's own fork handler stops its threads, and would
    wait for a part that waits for the GIL the forking thread holds."""
    blas.COUNT_LOCK.acquire()


def _after_fork(child: bool) -> None:
    """OpenBLAS starts new threads after a fork, in the parent too (an old thread's id may come again)."""
    _pinned.clear()
    PLACEMENT.after_fork(child)
    blas.COUNT_LOCK.release()


_pinned: set[int] = set()  # the OpenBLAS threads whose thread state is kept
os.register_at_fork(before=_before_fork, after_in_parent=lambda: _after_fork(False),
                    after_in_child=lambda: _after_fork(True))
_CALLBACK = _ROUTINE(_run_part)  # kept alive for the process: OpenBLAS holds its address
_DRIVER: list = []  # [(driver, precision code) or None], looked up on first use


def _driver():
    """(blas_level1_thread, its single-precision code), or None where it is absent or fails the probe.
    The probe needs a worker thread: with one BLAS thread there is none, and nothing is decided yet."""
    if not _DRIVER:
        if (blas.thread_count() or 1) < 2:
            return None
        with blas.COUNT_LOCK:  # (the probe runs a job of its own)
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
    for code in _SINGLE_CODES:
        seen: list[tuple[int, int]] = []
        # (Ctrl-C during the probe: raised as itself, and the next split probes again)
        _drive((driver, code), _Job(lambda start, stop: seen.append((start, stop)), 1, 1 << 20), 7, 2)
        if sorted(seen) == [(0, 4), (4, 7)]:
            return driver, code
    return None


_OTHERS = busy.Others()
_TIMINGS: dict[tuple[str, int], SplitTiming] = {}  # by the split's kind and element count


def split(count: int, work: Callable[[int, int], None], unit: int = UNIT, whole_on_one_thread: bool = False,
          timing_key: str = "") -> None:
    """Run ``work(start, stop)`` over the elements [0, count), in parts on OpenBLAS's threads where it
    can and it is faster (see the module doc, ``busy.Others`` and ``split_timing``), else as ``work(0, count)``. ``work``
    must compute each element independently of the others, and may call BLAS (it runs on one thread
    in a part) but not ``blas.threads`` or ``os.fork``. Returns when all parts are done; an exception
    in any part is raised here, after the others have finished. Parts are cut at multiples of ``unit``
    elements (a multiple of UNIT: whole rows, for work that takes rows). ``whole_on_one_thread``: where the
    pool could split but runs it whole, its BLAS runs on one thread too, as in a part (a product whose bits
    depend on the thread count: ``split_calls``). ``timing_key`` keeps the timings of one kind of split apart
    from another's of the same size (a layer's forward product and its weights' update: ``forward_parts``)."""
    driver = _usable_driver(count)
    if driver is None:
        work(0, count)
        return
    timing = _TIMINGS.get((timing_key, count)) or _TIMINGS.setdefault((timing_key, count), SplitTiming())
    contended = _OTHERS()
    PLACEMENT.follow(contended)
    parts = not contended and timing.choose()
    with blas.COUNT_LOCK:  # waits for a split on another thread, a count being set, or a fork (either way)
        start = time.perf_counter()
        ran_in_parts = parts and _in_parts(count, work, driver, unit)
        if not ran_in_parts:
            library = blas.numpy_blas_library()
            threads = int(library.scipy_openblas_get_num_threads64_()) if whole_on_one_thread else 1
            try:
                _inside.active = True
                if threads > 1:
                    library.scipy_openblas_set_num_threads64_(1)
                work(0, count)
            finally:  # (no call before the last: an exception from a signal handler comes after it)
                _inside.active = False
                if threads > 1:
                    library.scipy_openblas_set_num_threads64_(threads)
        if not contended:
            timing.add(ran_in_parts, time.perf_counter() - start)


def on_each_thread(work: Callable[[int], None]) -> bool:
    """``work(i)`` once on each thread of OpenBLAS's pool, i = 0 on the calling thread (``placement``); False, with
    nothing run, where the pool has one thread or no usable driver. Raises what ``work`` raised, after every part."""
    driver = None if getattr(_inside, "active", False) else _driver()
    if driver is None:
        return False
    with blas.COUNT_LOCK:
        threads = blas.thread_count() or 1
        if threads < 2:
            return False
        job = _Job(lambda start, stop: work(start), 1, threads)
        _drive(driver, job, threads, threads)
        return sum(job.done) == threads


PLACEMENT = placement.Placement(on_each_thread, blas.thread_count)


def _usable_driver(count: int):
    """The driver where a split of ``count`` elements may run in parts (large enough, two BLAS threads, not inside
    another split's work, which runs alone), else None."""
    if count < MIN_ELEMENTS or (blas.thread_count() or 1) < 2 or getattr(_inside, "active", False):
        return None
    return _driver()


def _in_parts(count: int, work: Callable[[int, int], None], driver, unit: int = UNIT) -> bool:
    """``work`` over [0, count) in parts on OpenBLAS's threads (``blas.COUNT_LOCK`` held); False, with
    nothing run, when the pool has fallen to one thread since it was read (another thread's
    ``blas.threads`` block)."""
    threads = blas.thread_count() or 1
    if threads <= 1:
        return False
    parts = _part_count(count, threads, unit)
    if parts < 2:
        return False
    units = -(-count // unit)
    job = _Job(work, unit, count)
    _drive(driver, job, units, parts, threads)
    if sum(job.done) != units:  # a part OpenBLAS never ran: nothing may be left half done silently
        raise RuntimeError(f"pool.split: {sum(job.done)} of {units} units ran")
    return True


def _drive(driver, job: _Job, units: int, parts: int, threads: int = 0) -> None:
    """OpenBLAS's driver runs ``job`` over ``units`` units in ``parts`` parts, one a thread, the first on this one;
    what the parts raised is raised here, after all of them. ``threads``: the pool's count, set to 1 while the parts
    run (a part's BLAS on its own thread) and restored after; 0 leaves the count alone."""
    global _job
    _job, routine, code = job, *driver
    library, hook = blas.numpy_blas_library(), sys.unraisablehook
    try:
        sys.unraisablehook = job.unraisable.append  # a signal handler's exception at a part's entry (C code: none inside)
        if threads:
            library.scipy_openblas_set_num_threads64_(1)
        routine(code, units, 0, 0, ctypes.addressof(_ALPHA), 0, 1, 0, 1, 0, 0, _CALLBACK, parts)
    finally:  # (no call before the last: an exception from a signal handler comes after it)
        sys.unraisablehook = hook
        _job = None
        if threads:
            library.scipy_openblas_set_num_threads64_(threads)
    _raise_from_parts(job, hook)


def _raise_from_parts(job: _Job, hook) -> None:
    """After the driver returned: what reached ``sys.unraisablehook`` meanwhile is a part's exception (one raised
    at its routine's entry) or another thread's (handed on to `hook`); the first of the parts' is raised."""
    for unraisable in job.unraisable:
        if unraisable.object is _run_part:
            job.errors.append(unraisable.exc_value)
        else:
            hook(unraisable)
    if job.errors:
        raise job.errors[0]


def _part_count(count: int, threads: int, unit: int) -> int:
    """Parts for [0, count) cut at multiples of ``unit``: one per thread, at most one per 2 * blas.MIN_SIZE
    elements (each part's BLAS passes are then the whole's routines), and none smaller than blas.MIN_SIZE
    (a unit of whole rows can make the smallest part short): 1 means whole."""
    parts = max(2, min(threads, count // max(2 * blas.MIN_SIZE, 1)))
    units = -(-count // unit)
    while parts > 1 and (units < parts or (units // parts - 1) * unit + count - (units - 1) * unit < blas.MIN_SIZE):
        parts -= 1
    return parts


def run(calls: list) -> None:
    """Run prepared calls, (function, arguments) pairs, in order (``gradients.scaled_calls``)."""
    for function, arguments in calls:
        function(*arguments)


def cuts(count: int, unit: int = UNIT) -> list[int]:
    """Where ``split`` would cut [0, count) with the pool as it is now: [0, c1, ..., count], one range per
    part (``_part_count``, and ``blas_level1_thread``'s division of whole units: each part the ceiling of
    what is left over the parts left), or [0, count] where it runs whole for sure."""
    if _usable_driver(count) is None:
        return [0, count]
    parts = _part_count(count, blas.thread_count() or 1, unit)
    left, edges = -(-count // unit), [0]
    for part in range(parts):
        width = -(-left // (parts - part))
        left -= width
        edges.append(min(edges[-1] + width * unit, count))
    return edges


def split_calls(count: int, calls: Callable[[int, int], list], unit: int = UNIT, timing_key: str = "") -> None:
    """``split`` of work given as prepared calls: ``calls(start, stop)`` returns the (function, arguments)
    list for the elements [start, stop) (``gradients.scaled_calls``). The list for each range ``cuts`` gives
    is built first, here, so that a part runs the calls alone: the Python between them is what the two
    parts hold the GIL for, and each hand-over of the GIL to a thread asleep waiting for it took ~30 us on
    the 2-core VM (Adam's first layer, 784 x 512: 299 against 334 us a step, in-process, interleaved). A
    part cut elsewhere (the pool's count changed meanwhile) builds its own. Whole, the lists run in turn, their
    BLAS on one thread as in the parts (a part may compute its own rows of a product: ``gemm_tn_rows_call``,
    whose bits can depend on the thread count). ``unit``, ``timing_key``: as ``split``'s."""
    edges = cuts(count, unit)
    plans = {start: (stop, calls(start, stop)) for start, stop in zip(edges, edges[1:])}

    def work(start: int, stop: int) -> None:
        while start < stop:
            stop_here, planned = plans.get(start, (None, None))
            if planned is None or stop_here > stop:
                stop_here, planned = stop, calls(start, stop)
            run(planned)
            start = stop_here

    split(count, work, unit, whole_on_one_thread=True, timing_key=timing_key)


def row_unit(width: int) -> int:
    """The least number of elements that is whole rows of ``width`` and whole UNITs: where rows may be cut."""
    return UNIT * width // math.gcd(UNIT, width)


def split_array_calls(calls: Callable[[list[np.ndarray]], list], *arrays: np.ndarray,
                      rows: tuple[int, Callable[[np.ndarray, int, int], tuple]] | None = None) -> None:
    """``split_calls`` on the same element range of each of ``arrays`` (all of one size): ``calls(parts)``, with
    ``parts`` a list of flat views, one per array, returns the calls for that range. Arrays not all
    C-contiguous (whose flat view would be a copy) go to ``calls`` whole, and its calls run at once.
    ``rows``: (row length, row_call) for arrays of whole rows whose second is first computed by
    ``row_call(arrays[1], first_row, stop_row)`` (``BatchProduct.rows_call``): parts are cut at whole rows, and
    each part's list starts with its rows' call, so each part computes the rows it then reads."""
    if not all(a.flags.c_contiguous and a.size == arrays[0].size for a in arrays):
        run(([] if rows is None else [rows[1](arrays[1], 0, len(arrays[1]))]) + calls(list(arrays)))
        return
    flat = [a.reshape(-1) for a in arrays]
    if rows is None:
        split_calls(arrays[0].size, lambda start, stop: calls([a[start:stop] for a in flat]))
        return
    width, row_call = rows
    split_calls(arrays[0].size, lambda start, stop: [row_call(arrays[1], start // width, stop // width),
                                                     *calls([a[start:stop] for a in flat])],
                row_unit(width))
