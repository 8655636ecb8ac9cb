"""engine/placement.py: while other processes keep the cores busy, each BLAS thread on a core of its own inside a
loop of updates, and every thread back on its cores afterwards (also after an exception or a fork)."""

from __future__ import annotations

import os

import pytest
from test_forward_parts import wide_digits
from test_resume import assert_identical

from sgdcli import api
from sgdcli.engine import blas, placement, pool
from sgdcli.training import loop


class FakeThreads:
    """A pool of `count` threads, ids 100, 101..., whose cores are recorded: thread 100 is the caller."""

    def __init__(self, count: int, mask: set[int], fail_on: int | None = None) -> None:
        self.count, self.fail_on = count, fail_on
        self.cores = [set(mask) for _ in range(count)]
        self.current = 0  # the thread running now
        self.runs = 0

    def run(self, work) -> bool:
        if self.count < 2:
            return False
        self.runs += 1
        for part in range(self.count):
            self.current = part
            work(part)
        self.current = 0
        return True

    def index(self, thread: int) -> int:
        return self.current if thread == 0 else thread - 100

    def get(self, thread: int) -> set[int]:
        return set(self.cores[self.index(thread)])

    def set(self, thread: int, cores: set[int]) -> None:
        if self.fail_on is not None and cores == {self.fail_on}:
            raise OSError(22, "Invalid argument")
        self.cores[self.index(thread)] = set(cores)

    def placement(self) -> placement.Placement:
        return placement.Placement(self.run, lambda: self.count, (self.get, self.set), lambda: 100 + self.current)


def test_busy_pins_thread_i_to_the_ith_core_only_inside_a_loop_and_the_loops_end_restores():
    threads = FakeThreads(2, {2, 5})
    place = threads.placement()
    place.follow(True)  # outside a loop of updates: nothing
    assert threads.cores == [{2, 5}, {2, 5}] and threads.runs == 0
    with place.during_updates():
        place.follow(False)
        assert threads.runs == 0
        place.follow(True)
        assert threads.cores == [{2}, {5}]
        place.follow(True)  # already pinned: no second job
        assert threads.runs == 1
        place.follow(False)  # quiet again: back
        assert threads.cores == [{2, 5}, {2, 5}]
        place.follow(True)
        assert threads.cores == [{2}, {5}]
    assert threads.cores == [{2, 5}, {2, 5}] and place.mask is None


def test_an_exception_in_the_loop_still_restores_every_thread():
    threads = FakeThreads(2, {0, 1})
    place = threads.placement()
    with pytest.raises(KeyboardInterrupt), place.during_updates():
        place.follow(True)
        assert threads.cores == [{0}, {1}]
        raise KeyboardInterrupt
    assert threads.cores == [{0, 1}, {0, 1}]


def test_the_thread_that_ends_the_last_loop_restores_the_thread_that_pinned():
    threads = FakeThreads(2, {0, 1})
    place = threads.placement()
    first, second = place.during_updates(), place.during_updates()
    first.__enter__()
    second.__enter__()
    place.follow(True)  # (on thread 100)
    first.__exit__(None, None, None)
    assert threads.cores == [{0}, {1}]  # a loop still runs
    threads.current = 1  # the other training's thread ends the last loop
    second.__exit__(None, None, None)
    assert threads.cores == [{0, 1}, {0, 1}]


def test_nested_loops_restore_at_the_outer_end():
    threads = FakeThreads(2, {0, 1})
    place = threads.placement()
    with place.during_updates():
        with place.during_updates():
            place.follow(True)
        assert threads.cores == [{0}, {1}]
    assert threads.cores == [{0, 1}, {0, 1}]


@pytest.mark.parametrize("count, mask", [(2, {0, 1, 2, 3}), (4, {0, 1}), (1, {0}), (1, {0, 1})],
                         ids=["fewer threads than cores (MPI ranks)", "more threads than cores", "one core",
                              "one thread"])
def test_a_pool_that_is_not_one_thread_a_core_keeps_the_schedulers_placement(count, mask):
    threads = FakeThreads(count, mask)
    place = threads.placement()
    with place.during_updates():
        place.follow(True)
        assert all(cores == mask for cores in threads.cores) and place.mask is None


def test_a_core_that_cannot_be_set_puts_the_mask_back_and_stops_pinning():
    threads = FakeThreads(2, {0, 1}, fail_on=1)  # the worker's core is refused (a cpuset changed)
    place = threads.placement()
    with place.during_updates():
        place.follow(True)
        assert threads.cores == [{0, 1}, {0, 1}] and place.off and place.mask is None
        place.follow(True)
        assert threads.runs == 1  # the failed pin; nothing after
    assert threads.cores == [{0, 1}, {0, 1}]


def test_without_affinity_calls_nothing_is_pinned():
    place = placement.Placement(lambda work: pytest.fail("no thread may be pinned"), lambda: 2, None)
    place.affinity, place.off = None, True  # (as on a system without sched_setaffinity)
    with place.during_updates():
        place.follow(True)
    assert place.mask is None


def test_after_a_fork_the_forking_thread_has_its_cores_back_and_a_busy_update_pins_again():
    threads = FakeThreads(2, {0, 1})
    place = threads.placement()
    with place.during_updates():
        place.follow(True)
        place.after_fork(child=True)
        assert threads.cores == [{0, 1}, {1}] and place.mask is None  # the child's one thread: the parent's are not its
        place.follow(True)
        place.after_fork(child=False)  # the pool's pinned threads have ended: only the caller's id is touched
        assert threads.cores == [{0, 1}, {1}] and place.mask is None


def test_a_fork_on_another_thread_while_pinning_leaves_nothing_pinned():
    threads = FakeThreads(2, {0, 1})
    place = threads.placement()
    real_run = threads.run

    def run_with_a_fork(work) -> bool:
        done = real_run(work)
        place.after_fork(child=False)  # (another thread forked while the pins were set)
        return done

    place.run = run_with_a_fork
    with place.during_updates():
        place.follow(True)
        assert threads.cores == [{0, 1}, {0, 1}] and place.mask is None


def test_cores_someone_else_set_for_the_training_thread_meanwhile_are_kept():
    threads = FakeThreads(2, {0, 1})
    place = threads.placement()
    with place.during_updates():
        place.follow(True)
        threads.set(0, {1})  # a reporter puts the training thread on core 1
    assert threads.cores == [{1}, {0, 1}] and place.mask is None and place.off


# The real pool: OpenBLAS's threads, their affinities read back from /proc.

REAL = (hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) == (blas.thread_count() or 1) >= 2
        and pool._driver() is not None and os.path.isdir("/proc/self/task"))
needs_real = pytest.mark.skipif(not REAL, reason="needs OpenBLAS's pool with one thread per core of the mask")


def thread_cores() -> dict[int, set[int]]:
    """Every thread of this process -> the cores it may run on (/proc/self/task/*/status)."""
    found = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/status") as status:
                text = status.read()
        except OSError:
            continue  # (a thread that just ended)
        listed = text.split("Cpus_allowed_list:")[1].split()[0]
        cores = set()
        for part in listed.split(","):
            first, _, last = part.partition("-")
            cores.update(range(int(first), int(last or first) + 1))
        found[int(tid)] = cores
    return found


@needs_real
def test_openblas_threads_are_pinned_one_a_core_and_restored(monkeypatch):
    mask = os.sched_getaffinity(0)
    cores = sorted(mask)
    before = thread_cores()
    with pool.PLACEMENT.during_updates():
        pool.PLACEMENT.follow(True)
        pinned = thread_cores()
        assert pinned[os.getpid()] == {cores[0]}  # (the main thread's id is the process's)
        singles = sorted(next(iter(c)) for tid, c in pinned.items() if len(c) == 1)
        assert singles == cores, pinned  # every core has one of the pool's threads
    assert all(thread_cores().get(tid, mask) == mask for tid in before)
    assert thread_cores()[os.getpid()] == mask


@needs_real
def test_a_fork_while_pinned_gives_both_processes_their_cores_back():
    mask = os.sched_getaffinity(0)
    with pool.PLACEMENT.during_updates():
        pool.PLACEMENT.follow(True)
        assert os.sched_getaffinity(0) != mask
        child = os.fork()
        if child == 0:
            os._exit(0 if os.sched_getaffinity(0) == mask else 1)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert os.sched_getaffinity(0) == mask and pool.PLACEMENT.mask is None
    assert os.sched_getaffinity(0) == mask


@needs_real
def test_training_while_the_machine_is_busy_pins_gives_the_same_bits_and_leaves_nothing_pinned(tmp_path, monkeypatch):
    config = wide_digits(training__epochs=1)
    quiet = api.train(config, runs_dir=tmp_path / "quiet")
    mask = os.sched_getaffinity(0)
    seen: list[dict[int, set[int]]] = []
    monkeypatch.setattr(pool, "_OTHERS", lambda: True)
    real_follow = pool.PLACEMENT.follow
    monkeypatch.setattr(pool.PLACEMENT, "follow", lambda busy: (real_follow(busy), seen.append(thread_cores())))
    busy = api.train(config, runs_dir=tmp_path / "busy")
    assert seen and all(cores[os.getpid()] == {sorted(mask)[0]} for cores in seen)  # pinned through the updates
    assert_identical(quiet.run_dir, busy.run_dir)
    assert all(cores == mask for cores in thread_cores().values())


def test_every_loop_of_updates_but_batch_ones_enters_the_placement():
    with loop.blas_threads_for_updates(1):  # (one BLAS thread: nothing to place)
        assert pool.PLACEMENT.depth == 0
    with loop.blas_threads_for_updates(32):
        assert pool.PLACEMENT.depth == 1
    assert pool.PLACEMENT.depth == 0
