"""While other processes keep every core busy, each of OpenBLAS's threads on a core of its own (Linux).

OpenBLAS's threads wait for each other spinning (``sched_yield``). With every core busy, Linux balances
runnable threads by their count, and can put both of this process's BLAS threads on one core and two
other processes on the other, for good: each product then waits for its other half a time slice at a
time. Measured on the 2-core VM with two ``while True: pass`` processes: a 784-1024-512-512-10 network
with momentum at batch 64 took 113-199 ms an update in 4 of 29 runs, the two threads on one core, and
15-28 ms in the others (4.4 alone), with or without this project's pool (pinned: 14-28 ms in 22 of 22);
two such trainings at once, 106-121 ms in 1 of 3 runs (pinned: 17-27 in 3 of 3); three products of that size
(forward, input and weight gradients) took 70 ms once ``taskset`` moved both threads onto one core,
against 8 spread over two (2.2 alone, 4.1 on one thread).

So, inside a loop of updates (``training.loop.blas_threads_for_updates``), while ``busy.Others`` says
the machine is busy, thread i of the pool runs on the i-th core of the process's affinity mask (the
calling thread on the first): ``Placement.follow``, called by ``pool.split``. The mask comes back when
the machine is quiet again, when the loop ends and after a fork (OpenBLAS's new threads take the mask
of the thread that starts them). Only where the pool has one thread per core of the mask, so the pins
cover every core: MPI ranks sharing a machine's cores, or a user's ``OPENBLAS_NUM_THREADS`` below the
cores, keep the scheduler's placement. Where a core cannot be set (``OSError``: a cpuset changed under
the process), the mask is put back and the process stops pinning. Results do not depend on where a
thread runs: the bits are those of an unpinned run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# run(work) -> bool: work(i) once on each of the BLAS pool's threads, i = 0 on the calling thread; False
# when it could not (``pool.on_each_thread``).
Runner = Callable[[Callable[[int], None]], bool]


def _linux_affinity() -> tuple[Callable[[], set[int]], Callable[[set[int]], None]] | None:
    if not (hasattr(os, "sched_getaffinity") and hasattr(os, "sched_setaffinity")):
        return None
    return (lambda: set(os.sched_getaffinity(0))), (lambda cores: os.sched_setaffinity(0, cores))


class Placement:
    """Pins the BLAS pool's threads while ``follow(True)`` inside ``during_updates``; see the module doc.
    ``affinity``: (get the calling thread's cores, set them), or None where the system has no such calls;
    ``thread_count()``: the pool's threads now."""

    def __init__(self, run: Runner, thread_count: Callable[[], int | None],
                 affinity: tuple[Callable[[], set[int]], Callable[[set[int]], None]] | None = None) -> None:
        self.run, self.thread_count = run, thread_count
        self.affinity = affinity if affinity is not None else _linux_affinity()
        self.depth = 0  # loops of updates entered
        self.mask: set[int] | None = None  # the cores the threads had, while they are pinned
        self.off = self.affinity is None  # no affinity calls, or one failed: the scheduler places the threads

    @contextmanager
    def during_updates(self) -> Iterator[None]:
        """A loop of updates: ``follow`` may pin inside it; the mask is restored at its end (however it ends)."""
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if self.depth == 0:
                self.release()

    def follow(self, busy: bool) -> None:
        """Pin the pool's threads if `busy` (other processes keep the cores busy), restore them if not."""
        if self.off or self.depth == 0 or busy == (self.mask is not None):
            return
        if busy:
            self._pin()
        else:
            self.release()

    def _pin(self) -> None:
        get, set_cores = self.affinity
        try:
            mask = get()
            cores = sorted(mask)
            if len(cores) < 2 or self.thread_count() != len(cores):
                return
            self.mask = mask
            if not self.run(lambda part: set_cores({cores[part]})):
                self.release()
        except OSError:
            self.off = True
            self.release()

    def release(self) -> None:
        """Every thread of the pool back on the cores it had (a no-op when none is pinned)."""
        if self.mask is None:
            return
        mask, self.mask = self.mask, None
        set_cores = self.affinity[1]
        try:
            if not self.run(lambda part: set_cores(mask)):
                set_cores(mask)  # (the pool has fallen to one thread meanwhile: its workers wait unused)
        except OSError:
            self.off = True

    def after_fork(self) -> None:
        """After a fork, in either process: the forking thread gets its cores back, so the threads OpenBLAS starts
        next (which take its mask) are not pinned to one core; the next busy ``follow`` pins them again."""
        if self.mask is not None:
            mask, self.mask = self.mask, None
            try:
                self.affinity[1](mask)
            except OSError:
                self.off = True
