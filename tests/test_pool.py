"""engine/pool.py: element-wise passes in parts on OpenBLAS's own threads, and the optimizers that use it."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import tiny_config
from test_resume import assert_identical, interrupt

from sgdcli import api
from sgdcli.config.loading import load_config
from sgdcli.engine import blas, pool
from sgdcli.engine.optimizers import SGD, AdaGrad, Adam, AdamW, RMSProp

TWO_THREADS = (blas.thread_count() or 1) >= 2


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
    assert pool._job is None and not pool._lock.locked()  # the pool is free for the next split
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


def test_splits_from_two_python_threads_at_once_are_both_complete() -> None:
    count, results = 4 * pool.MIN_ELEMENTS, {}

    def run(name: str) -> None:
        out = np.zeros(count, np.float32)

        def work(start: int, stop: int) -> None:
            out[start:stop] += np.arange(start, stop, dtype=np.float32)

        for _ in range(20):
            pool.split(count, work)
        results[name] = out

    threads = [threading.Thread(target=run, args=(name,)) for name in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for out in results.values():
        np.testing.assert_array_equal(out, 20 * np.arange(count, dtype=np.float32))


def test_split_arrays_hands_matching_flat_slices_and_whole_non_contiguous_arrays() -> None:
    a = np.arange(pool.MIN_ELEMENTS * 2, dtype=np.float32).reshape(256, -1)
    b = np.zeros_like(a)

    def copy(parts: list[np.ndarray]) -> None:
        x, y = parts
        assert x.ndim == 1 and x.shape == y.shape
        y[...] = x

    pool.split_arrays(copy, a, b)
    assert np.array_equal(a, b)
    shapes = []
    pool.split_arrays(lambda parts: shapes.append([p.shape for p in parts]), a.T, b)  # not C-contiguous: whole
    assert shapes == [[a.T.shape, b.shape]]


OPTIMIZERS = [Adam, AdamW, RMSProp, AdaGrad, lambda: RMSProp(momentum=0.9), lambda: Adam(weight_decay=1e-3)]


@pytest.mark.parametrize("make", OPTIMIZERS)
@pytest.mark.parametrize("shape", [(784, 512), (3, 100_003), (pool.MIN_ELEMENTS,)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_element_wise_optimizers_give_the_same_bits_in_parts(make, shape, dtype, monkeypatch) -> None:
    """Five steps with the pool and five with one call per array (pool.MIN_ELEMENTS out of reach):
    the same weights and state, bit for bit, and the pooled steps did split."""
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal(shape).astype(dtype)
    grads = [rng.standard_normal(shape).astype(dtype) for _ in range(5)]
    splits = []
    real_split = pool.split
    monkeypatch.setattr(pool, "split", lambda count, work: (splits.append(count), real_split(count, work)))
    results = []
    for least in (pool.MIN_ELEMENTS, 1 << 62):
        monkeypatch.setattr(pool, "MIN_ELEMENTS", least)
        optimizer, w = make(), w0.copy()
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
    the same bits, and gives the same bits as the run with the pool out of reach."""
    monkeypatch.setattr(blas, "MIN_SIZE", 0)
    monkeypatch.setattr(pool, "MIN_ELEMENTS", 4 * pool.UNIT)  # the 2 x 256 and 256 x 2 weights (8 units), the first bias (4)
    splits = []
    real_split = pool.split
    monkeypatch.setattr(pool, "split", lambda count, work: (splits.append(count), real_split(count, work)))
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
    assert not splits
    assert_identical(reference.run_dir, whole.run_dir)
