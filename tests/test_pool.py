"""engine/pool.py: element-wise passes in parts on OpenBLAS's own threads, and the optimizers that use it."""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest
from conftest import tiny_config
from test_resume import assert_identical, interrupt

from sgdcli import api
from sgdcli.config.loading import load_config
from sgdcli.engine import blas, busy, forward_parts, pool, split_timing, workers
from sgdcli.engine.optimizers import SGD, AdaGrad, Adam, AdamW, RMSProp

TWO_THREADS = (blas.thread_count() or 1) >= 2


@pytest.fixture(autouse=True)
def fresh_timings(monkeypatch) -> None:
    """Every test starts with no split timed (a size's first split runs in parts) and sees no other
    process busy (another job on the CI machine would send splits whole)."""
    monkeypatch.setattr(pool, "_TIMINGS", {})
    monkeypatch.setattr(pool, "_OTHERS", lambda: False)


class Recorder:
    """A work function that records (start, stop, thread) of each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.lock = threading.Lock()

    def __call__(self, start: int, stop: int) -> None:
        with self.lock:
            self.calls.append((start, stop, threading.get_ident()))

    def ranges(self) -> list[tuple[int, int]]:
        return sorted((start, stop) for start, stop, _ in self.calls)


def test_the_driver_is_found_with_numpys_own_openblas() -> None:
    """With NumPy's scipy-openblas64 (the wheels this project installs) the probe accepts the driver:
    a probe that silently failed would only make every step slower, which no other test would see."""
    if blas.numpy_blas_library() is None:
        pytest.skip("NumPy built with another BLAS: pool.split is one plain call")
    if not TWO_THREADS:
        pytest.skip("one BLAS thread (OPENBLAS_NUM_THREADS=1): no worker to probe with, and no split")
    assert pool._driver() is not None


@pytest.mark.parametrize("count", [pool.MIN_ELEMENTS, pool.MIN_ELEMENTS + 1, 3 * 100_003, 784 * 512])
def test_split_covers_the_range_once_in_parts_on_two_threads(count: int) -> None:
    work = Recorder()
    pool.split(count, work)
    ranges = work.ranges()
    assert ranges[0][0] == 0 and ranges[-1][1] == count
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:])), ranges
    if TWO_THREADS and pool._driver() is not None:
        assert len(ranges) >= 2
        assert len({thread for *_, thread in work.calls}) >= 2  # OpenBLAS's thread ran a part
        assert threading.get_ident() in {thread for *_, thread in work.calls}  # and the caller one
        assert all(start % pool.UNIT == 0 for start, _ in ranges)  # parts start on whole units
        assert all(stop - start >= 2 * blas.MIN_SIZE - pool.UNIT for start, stop in ranges)


@pytest.mark.parametrize("count", [0, 1, 1000, pool.MIN_ELEMENTS - 1])
def test_a_small_range_is_one_call_on_the_calling_thread(count: int) -> None:
    work = Recorder()
    pool.split(count, work)
    assert work.calls == [(0, count, threading.get_ident())]


def test_one_blas_thread_means_one_call() -> None:
    work = Recorder()
    with blas.threads(1):
        pool.split(pool.MIN_ELEMENTS * 2, work)
    assert work.calls == [(0, pool.MIN_ELEMENTS * 2, threading.get_ident())]


def test_an_error_in_a_part_is_raised_after_every_part_has_finished() -> None:
    count, finished = 4 * pool.MIN_ELEMENTS, []

    def work(start: int, stop: int) -> None:
        if start == 0:
            raise ValueError("first part fails")
        finished.append((start, stop))

    with pytest.raises(ValueError, match="first part fails"):
        pool.split(count, work)
    if TWO_THREADS and pool._driver() is not None:
        assert finished and finished[-1][1] == count
    assert pool._job is None and not blas.COUNT_LOCK.locked()  # the pool is free for the next split
    work_after = Recorder()
    pool.split(count, work_after)
    assert work_after.ranges()[-1][1] == count


def test_blas_inside_a_part_and_a_split_inside_a_part() -> None:
    """A part may call BLAS (the pool is on one thread meanwhile, so the call runs on the part's own
    thread) and may split again (it runs alone: no part waits for the pool it is running on)."""
    count = 4 * pool.MIN_ELEMENTS
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(count).astype(np.float32), rng.standard_normal(count).astype(np.float32)
    expected, inner = y.copy(), Recorder()
    assert blas.axpby(0.5, x, 0.25, expected)

    def work(start: int, stop: int) -> None:
        assert blas.axpby(0.5, x[start:stop], 0.25, y[start:stop])
        pool.split(stop - start, inner)

    threads_before = blas.thread_count()
    pool.split(count, work)
    assert np.array_equal(y, expected)
    assert blas.thread_count() == threads_before  # the pool's size is restored
    assert sum(stop - start for start, stop, _ in inner.calls) == count


def run_threads(*targets, timeout: float = 60.0) -> list[BaseException]:
    """Run each target on its own thread; return what they raised. Fails if any is still running after
    `timeout` seconds (a deadlock)."""
    errors: list[BaseException] = []

    def guarded(target) -> None:
        try:
            target()
        except BaseException as error:  # noqa: BLE001 (collected for the test to see)
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(target,), daemon=True) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), "a thread is stuck: deadlock"
    return errors


def test_splits_from_two_python_threads_at_once_are_both_complete() -> None:
    count, results = 4 * pool.MIN_ELEMENTS, {}

    def run(name: str) -> None:
        out = np.zeros(count, np.float32)

        def work(start: int, stop: int) -> None:
            out[start:stop] += np.arange(start, stop, dtype=np.float32)

        for _ in range(20):
            pool.split(count, work)
        results[name] = out

    assert run_threads(lambda: run("a"), lambda: run("b")) == []
    assert sorted(results) == ["a", "b"]
    for out in results.values():
        np.testing.assert_array_equal(out, 20 * np.arange(count, dtype=np.float32))


@pytest.mark.parametrize("attempt", range(10))
def test_two_threads_using_the_pool_first_at_once_both_split(attempt, monkeypatch) -> None:
    """The first use probes the driver; two threads' first splits at once must not disturb it."""
    monkeypatch.setattr(pool, "_DRIVER", [])
    barrier, count, seen = threading.Barrier(2), 4 * pool.MIN_ELEMENTS, []

    def first_split() -> None:
        work = Recorder()
        barrier.wait()
        pool.split(count, work)
        seen.append(work.ranges())

    assert run_threads(first_split, first_split) == []
    assert all(ranges[0][0] == 0 and ranges[-1][1] == count for ranges in seen) and len(seen) == 2
    if TWO_THREADS and blas.numpy_blas_library() is not None:
        assert pool._DRIVER[0] is not None


def test_another_threads_blas_threads_block_never_raises_the_count_under_a_split() -> None:
    """Batch-1 training (blas.threads(1)) on one thread and pooled Adam steps on another: a block
    closing while a split runs would set the count back to two under its parts, whose BLAS would then
    wait for the very thread running them."""
    rng = np.random.default_rng(5)
    w0, grads = rng.standard_normal((784, 512)).astype(np.float32), [
        rng.standard_normal((784, 512)).astype(np.float32) for _ in range(40)]
    stop, weights = threading.Event(), {}

    def steps(name: str) -> None:
        optimizer, w = Adam(), w0.copy()
        for g in grads:
            optimizer.step({"w": w}, {"w": g}, 1e-3)
        weights[name] = w

    def toggling() -> None:
        while not stop.is_set():
            with blas.threads(1):
                pass

    def pooled() -> None:
        try:
            steps("pooled")
        finally:
            stop.set()

    assert run_threads(pooled, toggling) == []
    steps("alone")
    assert np.array_equal(weights["pooled"], weights["alone"])
    assert blas.thread_count() == (2 if TWO_THREADS else blas.thread_count())


def test_the_callers_numpy_error_handling_reaches_every_part() -> None:
    """np.errstate is per thread: a part on OpenBLAS's thread must raise, warn or keep quiet as the caller asked."""
    count = 4 * pool.MIN_ELEMENTS
    x = np.ones(count, np.float32)
    x[-1] = np.finfo(np.float32).max  # overflows in the last part only

    def work(start: int, stop: int) -> None:
        np.multiply(x[start:stop], np.float32(2), out=np.empty(stop - start, np.float32))

    with np.errstate(over="raise"), pytest.raises(FloatingPointError):
        pool.split(count, work)
    calls = []
    with np.errstate(over="call", call=lambda kind, flag: calls.append(kind)):
        pool.split(count, work)
    assert calls == ["overflow"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="ignore"):
            pool.split(count, work)


class Tick(Exception):
    """Raised by the test's signal handler, as KeyboardInterrupt is by Python's on Ctrl-C."""


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="no interval timer")
def test_an_exception_from_a_signal_handler_during_splits_is_raised_as_it_is_and_leaves_nothing_set() -> None:
    """A signal handler's exception may come at any call: inside a part (also at the very entry of
    the routine OpenBLAS calls, where ctypes would only print it), or around the driver. It is raised
    from split unchanged, the pool's thread count and lock are back, and nothing half done is hidden."""
    count, armed, outcomes, reported = 4 * pool.MIN_ELEMENTS, [False], collections.Counter(), []
    x = np.zeros(count, np.float32)
    threads_before = blas.thread_count()

    def handler(signum, frame) -> None:
        if armed[0]:  # only while a split is called: the test's own lines stay out of it
            raise Tick()

    def work(start: int, stop: int) -> None:
        np.add(x[start:stop], 1, out=x[start:stop])

    previous_handler, previous_hook = signal.signal(signal.SIGALRM, handler), sys.unraisablehook
    sys.unraisablehook = reported.append
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.00013)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            try:
                armed[0] = True
                pool.split(count, work)
                armed[0] = False
                outcomes["completed"] += 1
            except Tick:
                armed[0] = False
                outcomes["Tick"] += 1
            except Exception as error:  # noqa: BLE001 (the fault this test looks for)
                armed[0] = False
                outcomes[repr(error)] += 1
            if blas.thread_count() != threads_before or blas.COUNT_LOCK.locked():
                outcomes["left set"] += 1
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        sys.unraisablehook = previous_hook
    assert outcomes["Tick"] > 0 and set(outcomes) <= {"completed", "Tick"}, (outcomes, [(u.object, u.exc_value, u.err_msg) for u in reported])
    assert reported == [] and blas.thread_count() == threads_before and not blas.COUNT_LOCK.locked()


def test_without_a_second_blas_thread_nothing_is_probed(monkeypatch) -> None:
    monkeypatch.setattr(pool, "_DRIVER", [])
    with blas.threads(1):
        assert pool._driver() is None
    assert pool._DRIVER == []


FORK_DURING_SPLITS = """
import os, threading, numpy as np
from sgdcli.engine import pool
from sgdcli.engine.optimizers import Adam
w, g = np.zeros((784, 512), np.float32), np.ones((784, 512), np.float32)
done = threading.Event()
def steps():
    optimizer = Adam()
    while not done.is_set():
        optimizer.step({"w": w}, {"w": g}, 1e-3)
thread = threading.Thread(target=steps)
thread.start()
for _ in range(8):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
done.set()
thread.join()
pool.split(4 * pool.MIN_ELEMENTS, lambda start, stop: None)
print("pinned after forks", len(pool._pinned))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_fork_from_another_thread_waits_for_the_split_in_progress() -> None:
    """OpenBLAS stops its threads before a fork; a part waiting for the GIL the forking thread holds
    would never stop. In a child process, with a timeout: a deadlock fails the test, not the suite."""
    result = subprocess.run([sys.executable, "-c", FORK_DURING_SPLITS], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    if TWO_THREADS and pool._driver() is not None:
        assert "pinned after forks 1" in result.stdout  # the new OpenBLAS thread's state kept again


def test_split_array_calls_builds_each_parts_calls_first_and_hands_whole_non_contiguous_arrays() -> None:
    a = np.arange(pool.MIN_ELEMENTS * 2, dtype=np.float32).reshape(256, -1)
    b = np.zeros_like(a)
    built = []

    def copy(parts: list[np.ndarray]) -> list:
        x, y = parts
        assert x.ndim == 1 and x.shape == y.shape
        built.append((x.shape, threading.get_ident()))
        return [(np.copyto, (y, x))]

    pool.split_array_calls(copy, a, b)
    assert np.array_equal(a, b)
    assert len(built) == len(pool.cuts(a.size)) - 1  # one list per part, each built once
    assert {thread for _, thread in built} == {threading.get_ident()}  # before the split, on this thread
    shapes = []
    pool.split_array_calls(lambda parts: shapes.append([p.shape for p in parts]) or [], a.T, b)  # not C-contiguous
    assert shapes == [[a.T.shape, b.shape]]


@pytest.mark.parametrize("count", [pool.MIN_ELEMENTS, pool.MIN_ELEMENTS + 1, 3 * 100_003, 784 * 512, 5 * pool.MIN_ELEMENTS + 77])
def test_cuts_are_the_ranges_the_driver_gives_the_parts(count: int) -> None:
    work = Recorder()
    pool.split(count, work)
    edges = pool.cuts(count)
    assert list(zip(edges, edges[1:])) == work.ranges()
    assert pool.cuts(pool.MIN_ELEMENTS - 1) == [0, pool.MIN_ELEMENTS - 1]


def test_a_part_cut_elsewhere_than_planned_builds_its_own_calls(monkeypatch) -> None:
    """The plans are an optimisation: a part whose range has none (the pool's count changed between the
    plan and the split) builds its calls itself, and every element is still done once."""
    count = 784 * 512
    real_cuts = pool.cuts(count)
    monkeypatch.setattr(pool, "cuts", lambda n, unit=pool.UNIT: [0, 1000, n])  # not where the driver cuts
    target = np.zeros(count, np.float32)
    ranges = []

    def calls(start: int, stop: int) -> list:
        ranges.append((start, stop))
        return [(np.add, (target[start:stop], 1.0, target[start:stop]))]

    pool.split_calls(count, calls)
    assert (target == 1.0).all()
    if len(real_cuts) > 2:  # in parts: the two planned lists, then one per driver range that had none
        assert ranges[:2] == [(0, 1000), (1000, count)] and len(ranges) >= 3


OPTIMIZERS = [Adam, AdamW, RMSProp, AdaGrad, lambda: RMSProp(momentum=0.9), lambda: Adam(weight_decay=1e-3)]


@pytest.mark.parametrize("make", OPTIMIZERS)
@pytest.mark.parametrize("shape", [(784, 512), (3, 100_003), (pool.MIN_ELEMENTS,)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_element_wise_optimizers_give_the_same_bits_in_parts(make, shape, dtype, monkeypatch) -> None:
    """Five steps with the pool and five with one call per array (pool.MIN_ELEMENTS out of reach) on one BLAS
    thread, as a split run whole runs it (``whole_on_one_thread``): the same weights and state, bit for bit, and the
    pooled steps did split. (Not against the whole on two threads: OpenBLAS's own threads cut an axpy anywhere, and
    where a kernel's scalar tail rounds otherwise than its vector body, as its Haswell kernels' on AMD Zen 5, the
    elements at that cut differ.)"""
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal(shape).astype(dtype)
    grads = [rng.standard_normal(shape).astype(dtype) for _ in range(5)]
    splits = []
    real_split = pool.split
    monkeypatch.setattr(pool, "split", lambda count, work, *more, **named: (splits.append(count), real_split(count, work, *more, **named)))
    results = []
    for least, whole in ((pool.MIN_ELEMENTS, False), (1 << 62, True)):
        monkeypatch.setattr(pool, "MIN_ELEMENTS", least)
        optimizer, w = make(), w0.copy()
        with blas.threads(1) if whole else contextlib.nullcontext():
            for g in grads:
                optimizer.step({"w": w}, {"w": g}, 1e-2)
        results.append((w, optimizer.state_dict()))
    (w_parts, state_parts), (w_whole, state_whole) = results
    assert splits == [w0.size] * 5
    assert np.array_equal(w_parts, w_whole)
    assert state_parts.keys() == state_whole.keys()
    for key in state_parts:
        assert np.array_equal(state_parts[key], state_whole[key]), key
    assert not np.array_equal(w_parts, w0)


def test_sgd_does_not_split() -> None:
    """SGD's update is BLAS passes already on every thread (axpy, gemm into the velocity): no pool."""
    assert not SGD.elementwise and Adam.elementwise and RMSProp.elementwise and AdaGrad.elementwise


@pytest.mark.parametrize("optimizer", [{"type": "adam", "learning_rate": 0.01},
                                       {"type": "rmsprop", "learning_rate": 0.01, "momentum": 0.5}],
                         ids=["adam", "rmsprop"])
def test_training_in_parts_resumes_bit_identically_and_matches_one_thread(tmp_path, monkeypatch, optimizer) -> None:
    """A run whose updates go through the pool (the tiny model's arrays made large enough) resumes to
    the same bits, and gives the same bits as the run with the pool out of reach. (The forward products stay
    OpenBLAS's: in parts they are a sum of parts, other bits than the pool out of reach gives by design;
    tests/test_forward_parts.py has them.)"""
    monkeypatch.setattr(forward_parts, "product", lambda x, weight: x @ weight)
    monkeypatch.setattr(blas, "MIN_SIZE", 0)
    monkeypatch.setattr(pool, "MIN_ELEMENTS", 4 * pool.UNIT)  # the 2 x 256 and 256 x 2 weights (8 units), the first bias (4)
    splits = []
    real_split = pool.split
    monkeypatch.setattr(pool, "split", lambda count, work, *more, **named: (splits.append(count), real_split(count, work, *more, **named)))
    config = load_config(tiny_config(training__epochs=6, optimizer=optimizer, model__layers__0__units=256))
    reference = api.train(config, runs_dir=tmp_path / "reference")
    assert splits and set(splits) == {512, 256}  # the weights and the first bias
    interrupted = interrupt(config, tmp_path / "runs", 14)  # mid-epoch 3 (6 updates an epoch)
    assert interrupted.status == "interrupted"
    resumed = api.resume(interrupted.run_dir)
    assert resumed.status == "completed"
    assert_identical(reference.run_dir, resumed.run_dir)
    monkeypatch.setattr(pool, "MIN_ELEMENTS", 1 << 62)
    splits.clear()
    whole = api.train(config, runs_dir=tmp_path / "whole")
    assert all(count < pool.MIN_ELEMENTS for count in splits)  # (a gradient built by rows asks, and runs whole)
    assert_identical(reference.run_dir, whole.run_dir)


def ways(timing: split_timing.SplitTiming, seconds: dict[bool, float], calls: int) -> list[bool]:
    """The ways `calls` splits take when a split in parts takes seconds[True] and whole seconds[False]."""
    taken = []
    for _ in range(calls):
        parts = timing.choose()
        timing.add(parts, seconds[parts])
        taken.append(parts)
    return taken


def test_splits_go_the_faster_way_and_look_at_the_other_ever_less_often() -> None:
    timing = split_timing.SplitTiming()
    taken = ways(timing, {True: 1.0, False: 2.0}, 2000)
    assert taken[:4] == [True, True, False, False]  # each way once untimed (first-use costs), then timed
    probes = [i for i, parts in enumerate(taken) if not parts][2:]
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert gaps[0] >= split_timing.PROBE_EVERY and gaps == sorted(gaps) and max(gaps) == split_timing.MAX_INTERVAL, probes
    assert timing.interval == split_timing.MAX_INTERVAL


def test_when_parts_turn_slow_the_splits_go_whole_and_come_back_when_they_are_fast_again() -> None:
    """Another process taking the second core makes each hand-over wait for the scheduler."""
    timing = split_timing.SplitTiming()
    ways(timing, {True: 1.0, False: 2.0}, 300)
    contended = ways(timing, {True: 20.0, False: 4.0}, 2000)
    in_parts = [i for i, parts in enumerate(contended) if parts]
    assert in_parts[:3] == [0, 1, 2]  # the median of five turns after three slow ones
    assert len(in_parts) <= 3 + 2000 // split_timing.MAX_INTERVAL + 1, in_parts  # then tried ever less often
    free = ways(timing, {True: 1.0, False: 2.0}, 3000)
    assert sum(not parts for parts in free[-1000:]) <= 1000 // split_timing.MAX_INTERVAL + 1
    assert sum(not parts for parts in free) <= split_timing.MAX_INTERVAL + 4 * split_timing.PROBE_EVERY + 3000 // split_timing.MAX_INTERVAL


def test_parts_a_little_slower_than_whole_stay_in_parts() -> None:
    """The choice is a guard against a taken core, not a fine one: placement noise moves both ways'
    times by more than the parts gain, and a run should not flip between them on it."""
    timing = split_timing.SplitTiming()
    taken = ways(timing, {True: 1.2, False: 1.0}, 1000)
    assert sum(not parts for parts in taken[4:]) <= 1000 // split_timing.PROBE_EVERY
    assert all(taken[4:split_timing.PROBE_EVERY - 1])


def test_a_sweeps_members_share_the_cores_between_their_blas_pools(monkeypatch) -> None:
    """`--jobs N` members each get the usable cores divided by N for OpenBLAS (two members with a
    two-thread pool each on two cores took 4-20x longer an epoch); the user's own setting is kept."""
    from sgdcli.training.sweep import member_environment

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert member_environment(1, {"PATH": "/bin"}) == {"PATH": "/bin"}
    assert member_environment(2, {})["OPENBLAS_NUM_THREADS"] == "4"
    assert member_environment(3, {})["OMP_NUM_THREADS"] == "2"
    assert member_environment(16, {})["OPENBLAS_NUM_THREADS"] == "1"
    assert member_environment(2, {"OPENBLAS_NUM_THREADS": "8"}) == {"OPENBLAS_NUM_THREADS": "8"}
    assert member_environment(2, {"OMP_NUM_THREADS": "3"}) == {"OMP_NUM_THREADS": "3"}


def test_processes_sharing_a_machine_divide_its_usable_cores(monkeypatch) -> None:
    from sgdcli.training.sweep import member_environment

    """The rule sweep members and MPI ranks share (workers.threads_each): the usable cores divided by the
    processes, at least 1; None (the user's count holds) when OPENBLAS_NUM_THREADS or OMP_NUM_THREADS is set."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    assert [workers.threads_each(n, {}) for n in (1, 2, 3, 4, 6, 7, 100)] == [6, 3, 2, 1, 1, 1, 1]
    assert workers.threads_each(0, {}) == 6  # (no processes counted: this one)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        assert workers.threads_each(2, {name: "5"}) is None
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert workers.threads_each(2) is None  # the process's own environment by default
    monkeypatch.delenv("OMP_NUM_THREADS")
    for name in workers.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert workers.threads_each(2) == 3
    # What OpenBLAS reads as "every core" (C atoi: empty, 0, negative, not a number) is no count of the user's
    for value in ("", "0", "-1", "abc", " ", "+0"):
        assert workers.user_threads({"OPENBLAS_NUM_THREADS": value}) is None
        assert workers.threads_each(2, {"OPENBLAS_NUM_THREADS": value, "OMP_NUM_THREADS": value}) == 3
        assert member_environment(2, {"OPENBLAS_NUM_THREADS": value})["OPENBLAS_NUM_THREADS"] == "3"
    # ... and, as atoi, leading spaces and a trailing rest are read past; OpenBLAS's order of the variables
    assert [workers.user_threads({"OMP_NUM_THREADS": v}) for v in (" 3", "2abc", "+4", "7")] == [3, 2, 4, 7]
    assert workers.user_threads({"OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "5"}) == 2
    assert workers.user_threads({"OPENBLAS_NUM_THREADS": "x", "GOTO_NUM_THREADS": "4", "OMP_NUM_THREADS": "5"}) == 4
    assert workers.user_threads({"OPENBLAS_NUM_THREADS": "", "OMP_NUM_THREADS": "5"}) == 5
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1x")
    assert not workers.two_threads()  # one thread for OpenBLAS: none for the engine's passes either
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "0")
    assert workers.two_threads()


def test_a_split_inside_a_whole_runs_work_runs_alone(monkeypatch) -> None:
    """When the timing sends a split whole, its work still holds the lock: a split in it must not wait for it."""
    monkeypatch.setattr(split_timing.SplitTiming, "choose", lambda self: False)
    count, inner = 4 * pool.MIN_ELEMENTS, Recorder()
    outer = Recorder()

    def work(start: int, stop: int) -> None:
        outer(start, stop)
        pool.split(stop - start, inner)

    assert run_threads(lambda: pool.split(count, work), timeout=30) == []
    assert outer.ranges() == [(0, count)] and inner.ranges() == [(0, count)]


def test_other_processes_busy_on_the_cores_send_splits_whole(monkeypatch) -> None:
    """Two trainings at once: parts hand over between two threads, and each hand-over waits for the scheduler."""
    now, samples = [0.0], iter([(100.0, 10.0, 0.0), (100.9, 10.8, 1.0), (102.5, 11.4, 2.0), (103.3, 12.2, 3.0)])
    others = busy.Others(sample=lambda: next(samples), clock=lambda: now[0], every=0.5)
    assert others() is False  # one sample: nothing to compare yet
    now[0] = 0.2
    assert others() is False  # (not sampled again before `every` seconds)
    now[0] = 1.0
    assert others() is False  # the machine's 0.9 s, 0.8 of them ours: others 0.1 core
    now[0] = 2.0
    assert others() is True  # 1.6 s, 0.6 ours: others a whole core
    now[0] = 3.0
    assert others() is False  # quiet again
    assert busy.Others(sample=lambda: None)() is False  # no /proc/stat: only the timing guards
    sample = busy.cpu_sample()
    if sample is not None:
        machine, own, _ = sample
        assert machine > 0 and 0 <= own


def test_while_others_are_busy_a_split_is_one_whole_call_and_is_not_timed(monkeypatch) -> None:
    monkeypatch.setattr(pool, "_OTHERS", lambda: True)
    work, count = Recorder(), 4 * pool.MIN_ELEMENTS
    pool.split(count, work)
    assert work.calls == [(0, count, threading.get_ident())]
    timing = pool._TIMINGS.get(("", count))  # (none with one BLAS thread: no split is timed)
    assert timing is None or (timing.calls == 0 and timing.typical == {})
    assert timing is not None or not TWO_THREADS or pool._driver() is None


def test_a_blas_threads_block_restores_the_count_when_an_interrupt_cuts_its_wait_for_the_lock(monkeypatch) -> None:
    """Ctrl-C while a block's `finally` waits for the lock (a split on another thread holds it): the
    count is still set back, and the interrupt raised after."""
    library = blas.numpy_blas_library()
    if library is None or not TWO_THREADS:
        pytest.skip("needs NumPy's OpenBLAS on two threads")

    class FlakyLock:
        """A lock whose first wait is cut by an interrupt, as Lock.acquire is by a signal handler's exception."""

        def __init__(self) -> None:
            self.lock, self.waits = threading.Lock(), 0

        def __enter__(self):
            self.waits += 1
            if self.waits == 2:  # the first wait of the block's `finally`
                raise Tick()
            return self.lock.__enter__()

        def __exit__(self, *exc):
            return self.lock.__exit__(*exc)

    monkeypatch.setattr(blas, "COUNT_LOCK", FlakyLock())
    with pytest.raises(Tick):
        with blas.threads(1):
            assert blas.thread_count() == 1
    assert blas.thread_count() == 2 and blas.COUNT_LOCK.waits == 3
