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
the process), the mask is put back and the process stops pinning. Results do not depend on where a thread
runs: the bits are those of an unpinned run.

A thread or a process takes the cores of the thread that starts it, and Python's ``subprocess`` and
multiprocessing's spawn run no fork handler: one that a caller's code (a reporter, ``should_stop``) starts
during pinned updates runs on the training thread's one core (sgdcli's own start none there). Giving the
training thread its whole mask back around that code was tried: every update then moved the thread between
cores, 0.7-0.8 of the pinned speed (``benchmarks/busy_placement.py``, 4 runs each, alternating).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# run(work) -> bool: work(i) once on each of the BLAS pool's threads, i = 0 on the calling thread; False
# when it could not (``pool.on_each_thread``).
Runner = Callable[[Callable[[int], None]], bool]
# (get(thread), set(thread, cores)): a thread's cores by its system id, 0 for the calling thread.
Affinity = tuple[Callable[[int], set[int]], Callable[[int, set[int]], None]]


def _linux_affinity() -> Affinity | None:
    if not (hasattr(os, "sched_getaffinity") and hasattr(os, "sched_setaffinity")):
        return None
    return (lambda thread: set(os.sched_getaffinity(thread))), _set_own_thread


def _set_own_thread(thread: int, cores: set[int]) -> None:
    """sched_setaffinity of one of this process's threads (0: the calling one): an id that is no longer one of
    them (the thread has ended, and the id may be another process's now) raises ProcessLookupError, untouched."""
    if thread and not os.path.exists(f"/proc/self/task/{thread}"):
        raise ProcessLookupError(thread)
    os.sched_setaffinity(thread, cores)


class Placement:
    """Pins the BLAS pool's threads while ``follow(True)`` inside ``during_updates``; see the module doc.
    ``affinity``: get and set a thread's cores (Linux's ``sched_getaffinity``/``sched_setaffinity``, which take
    a thread's id), or None where the system has neither; ``thread_count()``: the pool's threads now;
    ``thread_id()``: the calling thread's system id. Each pinned thread is remembered by its id, so whichever
    thread ends the last loop puts every one back (two trainings on two threads of one process)."""

    def __init__(self, run: Runner, thread_count: Callable[[], int | None], affinity: Affinity | None = None,
                 thread_id: Callable[[], int] = threading.get_native_id) -> None:
        self.run, self.thread_count, self.thread_id = run, thread_count, thread_id
        self.affinity = affinity if affinity is not None else _linux_affinity()
        self.lock = threading.Lock()  # loops may start and end on several threads
        self.depth = 0  # loops of updates running
        self.mask: set[int] | None = None  # the cores the threads had, while they are pinned
        self.pinned: list[int] = []  # the pinned threads' ids
        self.caller: tuple[int, int] | None = None  # the pinned calling thread's id and core
        self.off = self.affinity is None  # no affinity calls, or one failed: the scheduler places the threads

    @contextmanager
    def during_updates(self) -> Iterator[None]:
        """A loop of updates: ``follow`` may pin inside it; the mask is restored at the end of the last one running
        (however it ends)."""
        with self.lock:
            self.depth += 1
        try:
            yield
        finally:
            with self.lock:
                self.depth -= 1
                if self.depth == 0:
                    self._release()

    def follow(self, busy: bool) -> None:
        """Pin the pool's threads if `busy` (other processes keep the cores busy), restore them if not."""
        if self.off or self.depth == 0 or busy == (self.mask is not None):
            return
        with self.lock:
            if self.depth == 0 or busy == (self.mask is not None):
                return
            if busy:
                self._pin()
            else:
                self._release()

    def _pin(self) -> None:
        get, set_cores = self.affinity
        pinned: list[tuple[int, int]] = []  # (thread id, core), the calling thread's first
        try:
            mask = get(0)
            cores = sorted(mask)
            if len(cores) < 2 or self.thread_count() != len(cores):
                return
            self.mask = mask

            def pin(part: int) -> None:
                pinned.append((self.thread_id(), cores[part]))  # (list.append: atomic under the GIL)
                set_cores(0, {cores[part]})

            done = self.run(pin)
            pinned.sort(key=lambda pair: pair[0] != self.thread_id())
            self.pinned = [thread for thread, _ in pinned]
            self.caller = pinned[0] if done and pinned and pinned[0][0] == self.thread_id() else None
            if not done or self.mask is not mask:  # (a fork on another thread has put the mask back meanwhile)
                self.mask = mask
                self._release()
        except OSError:
            self.off = True
            self.pinned = [thread for thread, _ in pinned]
            self._release()

    def _release(self) -> None:
        """Every pinned thread back on the cores it had (a no-op when none is); a calling thread whose cores were set
        since by someone else (a reporter's code) keeps those, and the process pins no more: their choice wins."""
        if self.mask is None:
            return
        mask, threads, caller = self.mask, self.pinned, self.caller
        self.mask, self.pinned, self.caller = None, [], None
        get, set_cores = self.affinity
        for thread in threads:
            try:
                if caller is not None and thread == caller[0] and get(thread) != {caller[1]}:
                    self.off = True  # (and the process pins no more)
                    continue
                set_cores(thread, mask)
            except ProcessLookupError:
                pass  # (a thread that has ended)
            except OSError:
                self.off = True

    def after_fork(self, child: bool) -> None:
        """After a fork. In the child, its one thread gets the mask back (the ids remembered are the parent's
        threads'). In the parent, the pinned threads of the pool have ended (OpenBLAS starts new ones, which take the
        mask of the thread that starts them): the calling thread it pinned gets the mask back, and no other id is
        touched (an ended thread's id may be another process's now). The next busy ``follow`` pins again."""
        if child:
            self.lock = threading.Lock()  # (another thread of the parent may have held it: none runs here)
        if self.mask is None:
            return
        mask, caller, self.mask, self.pinned, self.caller = self.mask, self.caller, None, [], None
        try:
            self.affinity[1](0 if child or caller is None else caller[0], mask)
        except ProcessLookupError:
            pass
        except OSError:
            self.off = True
