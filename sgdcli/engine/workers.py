"""A second thread for the engine's memory-bound passes: a pass over N images runs as two halves at once.

NumPy runs an elementwise pass (a copy, a maximum, a product) on one core, but releases the GIL
inside it, so two threads each doing half the rows use both cores; the GEMMs already do (BLAS).
``split`` hands the first half to one persistent worker thread (started on first use, never per
call) and does the second half itself. Only passes whose rows are independent are split (each
output element is computed by the same operations whatever the split), so results are
bit-identical with or without the worker.

OpenBLAS's own worker threads keep spinning for a while after each product, waiting for the next
(2^28 CPU cycles by default, ~0.1 s, so always during training): they would take the core this
worker needs. ``OPENBLAS_THREAD_TIMEOUT=18`` in the environment (a power of two of cycles, read once
when OpenBLAS loads) shortens that spin: on the CNN race a split ReLU right after a product took
1.1 ms at the default and 0.65 ms at 2^18 cycles (alone, 1.0 ms on one thread and 0.57 on two).
sgdcli sets it for conv models only (engine/spin.py): the short spin made dense networks slower
(OpenBLAS's threads fall asleep between the small products of batch 1 and batch 128 and must be
woken; README Performance).

One thread, not more: the target machines have two cores. None when the process may run on one
core only, when ``OMP_NUM_THREADS`` or ``OPENBLAS_NUM_THREADS`` is 1 (a sweep member's share of two
cores), or inside a ``one_thread`` block (an MPI rank's share, training/mpi_run.py): then ``split`` is a
plain call.
"""

from __future__ import annotations

import os
import queue
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

# A pass touching less than this runs on the calling thread. Right after a product, with OpenBLAS's
# default spin, handing over costs more than it saves: a dense layer's batch-128 ReLU forward and
# backward (256 KiB per array) took 42 us on one thread and 100 us split.
MIN_BYTES = 1 << 21
CHUNK_BYTES = 1 << 22  # ``chunked`` passes: what one call of the work touches (smaller chunks cost more calls than cache misses)


class _Done(threading.Event):
    error: BaseException | None = None


class _Worker:
    """One daemon thread taking (work, start, stop, done) from a queue; it lives as long as the process."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="sgdcli-worker", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            work, start, stop, done = self.tasks.get()
            try:
                work(start, stop)
            except BaseException as error:  # handed to the caller, which raises it
                done.error = error
            done.set()


_worker: _Worker | None = None
_lock = threading.Lock()


# What sets OpenBLAS's thread count, in the order OpenBLAS reads them (and OpenMP's, the last)
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")
_LEADING_INTEGER = re.compile(r"\s*([+-]?\d+)")


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, where the OS has one), at least 1."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def user_threads(environ: Mapping[str, str] | None = None) -> int | None:
    """The thread count ``environ`` (the process's environment by default) gives OpenBLAS, or None where it
    gives none. As OpenBLAS reads it (``blas_get_cpu_number``, C ``atoi``): the first of THREAD_VARIABLES whose
    value starts with a positive whole number; an empty, 0, negative or non-numeric value counts as unset
    (OpenBLAS then takes every core)."""
    environ = os.environ if environ is None else environ
    for name in THREAD_VARIABLES:
        match = _LEADING_INTEGER.match(environ.get(name, ""))
        if match and int(match.group(1)) > 0:
            return int(match.group(1))
    return None


def threads_each(processes: int, environ: Mapping[str, str] | None = None) -> int | None:
    """The BLAS threads for each of ``processes`` processes training at once on this machine's usable cores:
    the cores divided by ``processes``, at least 1; None when ``environ`` (the process's environment by
    default) gives OpenBLAS a count (``user_threads``): the user's count holds. An idle OpenBLAS thread spins
    on its core for a while (``engine/spin.py``), so two processes with a two-thread pool each on two cores
    take each other's cores: two sweep members took 4-5x longer an epoch than each alone, and
    ``mpiexec -n 2`` training 5.3x longer than with one thread per process."""
    if user_threads(environ) is not None:
        return None
    return max(1, usable_cores() // max(1, processes))


def two_threads() -> bool:
    """Whether ``split`` uses the worker thread: two or more usable cores and no thread limit of 1."""
    return user_threads() != 1 and usable_cores() >= 2


_TWO_THREADS = two_threads()
_one_thread = 0  # how many ``one_thread`` blocks are open


@contextmanager
def one_thread() -> Iterator[None]:
    """Every ``split`` inside the block runs on the calling thread, as with one usable core: for a process
    whose share of the cores is one (``threads_each``), which another process's work would take from it."""
    global _one_thread
    _one_thread += 1
    try:
        yield
    finally:
        _one_thread -= 1


def _get_worker() -> _Worker:
    global _worker
    with _lock:
        if _worker is None or _worker.pid != os.getpid():  # a forked child has no copy of the thread
            _worker = _Worker()
        return _worker


def split(count: int, work: Callable[[int, int], None], nbytes: int, *, chunked: bool = False) -> None:
    """Run ``work(start, stop)`` over the rows [0, count): as work(0, h) on the worker thread and
    work(h, count) on this one (h = count // 2), or as work(0, count) alone when ``nbytes`` (what
    the pass reads and writes) is below MIN_BYTES, count < 2, there is no worker, or a ``one_thread``
    block is open. ``chunked``: each thread calls work on consecutive ranges of its rows touching
    ~CHUNK_BYTES each, so that a work of several NumPy passes finds the later passes' data still in cache. Returns when all rows
    are done; an exception in either half is raised here. ``work`` must treat its rows independently
    of each other (it may be called on any split)."""
    alone = count < 2 or nbytes < MIN_BYTES or not _TWO_THREADS or _one_thread > 0
    if alone and count and (not chunked or nbytes <= CHUNK_BYTES):
        work(0, count)  # one call on this thread, the common small pass: no chunk loop built for it
        return
    step = max(1, count * CHUNK_BYTES // max(nbytes, 1) if chunked else count)  # (no rows: range needs a step)

    def in_chunks(start: int, stop: int) -> None:
        for first in range(start, stop, step):
            work(first, min(first + step, stop))

    if alone:
        in_chunks(0, count)
        return
    worker = _get_worker()
    if threading.current_thread() is worker.thread:  # a split inside a split: the worker is busy with us
        in_chunks(0, count)
        return
    half, done = count // 2, _Done()
    worker.tasks.put((in_chunks, 0, half, done))
    try:
        in_chunks(half, count)
    finally:
        done.wait()
    if done.error is not None:
        raise done.error
