"""Batch-1 updates run NumPy's BLAS on one thread (training/loop.py ``blas_threads_for_updates``
through engine/blas.py ``threads``, issue 16), in training and in lr-find: on two threads the forward's matrix-vector product and the
update's rank-1 ``ger`` split the weights differently, so every update moved half of them between
the cores (a plain-SGD update 3x slower). The count is 1 during batch-1 updates only: back to the
whole pool at each epoch's end and after any way out of the loop (interruption, divergence)."""

from __future__ import annotations

import numpy as np
import pytest
from test_batch_products import large_model
from test_lr_find import _linear_config

from sgdcli.analysis import lr_find
from sgdcli.engine import blas
from sgdcli.engine.losses import CrossEntropy
from sgdcli.engine.optimizers import SGD, Adam
from sgdcli.engine.schedules import Constant
from sgdcli.errors import DivergenceError
from sgdcli.training import build
from sgdcli.training.loop import Interrupted, Position, Problem, train_epochs

POOL = blas.thread_count()
needs_a_pool = pytest.mark.skipif(POOL is None or POOL < 2,
                                  reason="NumPy's BLAS is not scipy-openblas64, or runs on one thread here")


@needs_a_pool
def test_threads_lowers_the_count_inside_and_restores_it_after() -> None:
    with blas.threads(1):
        assert blas.thread_count() == 1
        with blas.threads(1):  # nested: already that small, left alone
            assert blas.thread_count() == 1
        assert blas.thread_count() == 1
    assert blas.thread_count() == POOL
    with pytest.raises(RuntimeError, match="inside"), blas.threads(1):
        raise RuntimeError("inside")
    assert blas.thread_count() == POOL
    with blas.threads(POOL + 3):  # never raises the count
        assert blas.thread_count() == POOL
    assert blas.thread_count() == POOL


def test_threads_refuses_a_count_below_one() -> None:
    with pytest.raises(ValueError, match="count must be >= 1, got 0"), blas.threads(0):
        pass


def problem(size: int, optimizer=None, rows: int = 12, poison: int | None = None) -> Problem:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(rows, 300)).astype(np.float32)
    if poison is not None:
        x[poison, 5] = np.nan
    return Problem(model=large_model(rng), loss=CrossEntropy(), optimizer=optimizer or SGD(momentum=0.9),
                   schedule=Constant(0.01), x=x, y=rng.integers(0, 3, size=rows), batch_size=size, shuffle=True)


@needs_a_pool
@pytest.mark.parametrize("size, inside", [(1, 1), (4, None), (12, None)])  # None: the whole pool
def test_updates_of_batch_one_alone_run_on_one_thread(size: int, inside: int | None) -> None:
    seen: list[int] = []
    at_epoch_end: list[int] = []
    epochs = train_epochs(problem(size, Adam()), Position(), 2, np.random.default_rng(0), np.random.default_rng(1),
                          on_batch=lambda batch, value: seen.append(blas.thread_count()))
    for _ in epochs:
        at_epoch_end.append(blas.thread_count())  # evaluation and checkpoints run here: the whole pool
    assert seen == [inside or POOL] * (2 * (12 // size))
    assert at_epoch_end == [POOL, POOL]


@needs_a_pool
def test_the_pool_is_restored_after_an_interruption_and_a_divergence() -> None:
    calls = iter(range(100))
    with pytest.raises(Interrupted):
        list(train_epochs(problem(1), Position(), 1, np.random.default_rng(0), np.random.default_rng(1),
                          should_stop=lambda: next(calls) == 4))
    assert blas.thread_count() == POOL
    position = Position()
    with pytest.raises(DivergenceError, match="the loss is nan"):
        list(train_epochs(problem(1, poison=7), position, 1, np.random.default_rng(0), np.random.default_rng(1)))
    assert 0 < position.updates < 12 and blas.thread_count() == POOL
    # A generator left unfinished mid-epoch (the caller stops reading it) gives the pool back when closed.
    epochs = train_epochs(problem(1), Position(), 3, np.random.default_rng(0), np.random.default_rng(1))
    next(epochs)
    assert blas.thread_count() == POOL
    epochs.close()
    assert blas.thread_count() == POOL


@needs_a_pool
@pytest.mark.parametrize("mode, inside", [("sgd", 1), ("minibatch", None)])
def test_lr_find_updates_follow_the_same_rule(tmp_path, monkeypatch, mode: str, inside: int | None) -> None:
    seen: list[int] = []
    original = build.build_optimizer

    def recording(config):
        optimizer = original(config)
        step = optimizer.step
        optimizer.step = lambda *args: seen.append(blas.thread_count()) or step(*args)
        return optimizer

    monkeypatch.setattr(build, "build_optimizer", recording)
    lr_find.range_test(_linear_config(tmp_path, mode=mode), start=1e-4, end=1e-2, updates=6)
    assert len(seen) >= 3 and set(seen) == {inside or POOL}
    assert blas.thread_count() == POOL
