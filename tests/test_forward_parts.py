"""engine/forward_parts.py: a dense layer's training product in parts of its weight rows. It is the product
(to rounding), the same bits however the pool runs it, and training with it resumes bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config
from test_resume import assert_identical, interrupt

from sgdcli import api
from sgdcli.config.loading import load_config
from sgdcli.engine import activations, blas, forward_parts, pool
from sgdcli.engine.layers import Dense

TWO_THREADS = (blas.thread_count() or 1) >= 2 and pool._driver() is not None


@pytest.fixture(autouse=True)
def fresh_timings(monkeypatch) -> None:
    monkeypatch.setattr(pool, "_TIMINGS", {})
    monkeypatch.setattr(pool, "_OTHERS", lambda: False)


def arrays(n: int, d: int, m: int, dtype, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(dtype), rng.standard_normal((d, m)).astype(dtype)


def parts_run(monkeypatch) -> list[tuple[int, int]]:
    """Records the weight rows of every part's product (``blas.gemm_nn_rows_call``)."""
    seen: list[tuple[int, int]] = []
    real = blas.gemm_nn_rows_call
    monkeypatch.setattr(blas, "gemm_nn_rows_call", lambda a, b, c, first, stop: seen.append((first, stop)) or real(a, b, c, first, stop))
    return seen


@pytest.mark.parametrize("n, d, m", [(128, 784, 512), (96, 784, 512), (2, 784, 512), (64, 512, 512), (256, 1000, 300),
                                     (500, 784, 512), (128, 784, 64), (1, 784, 512)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_product_is_x_times_w_to_rounding(n, d, m, dtype, monkeypatch) -> None:
    """In parts where the batch is at most a part's rows and the arrays are large enough, OpenBLAS's product
    elsewhere (500 rows: more than a part's 392; 784 x 64: too small to split; one row); each time x @ W to
    its dtype's rounding, a new C-contiguous array of the dtype."""
    seen = parts_run(monkeypatch)
    x, weight = arrays(n, d, m, dtype)
    z = forward_parts.product(x, weight)
    exact = x.astype(np.float64) @ weight.astype(np.float64)
    tolerance = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(z, exact, rtol=0, atol=tolerance * np.abs(exact).max())
    assert z.dtype == dtype and z.flags.c_contiguous and z.shape == (n, m)
    edges = pool.cuts(weight.size, pool.row_unit(m))
    rows = [edge // m for edge in edges]
    in_parts = len(rows) > 2 and 2 <= n <= min(d, max(b - a for a, b in zip(rows, rows[1:]))) and n * m >= blas.MIN_SIZE
    assert (seen == list(zip(rows, rows[1:]))) if in_parts else not seen
    if TWO_THREADS and (n, d, m) == (128, 784, 512):
        assert seen == [(0, 392), (392, 784)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parts_at_once_and_in_turn_give_the_same_bits(dtype, monkeypatch) -> None:
    """The pool runs the parts at once, or whole (another process busy: the parts in turn on one thread): the
    sum of the same parts' products in the same order, bit for bit, and each part's rows once."""
    x, weight = arrays(128, 784, 512, dtype, seed=1)
    seen = parts_run(monkeypatch)
    at_once = forward_parts.product(x, weight)
    at_once_rows, seen[:] = sorted(seen), []
    monkeypatch.setattr(pool, "_OTHERS", lambda: True)
    in_turn = forward_parts.product(x, weight)
    assert np.array_equal(at_once.view(np.uint8), in_turn.view(np.uint8))
    assert at_once_rows == sorted(seen)
    if TWO_THREADS:
        assert len(seen) == 2


def test_parts_cut_elsewhere_by_the_pool_are_computed_as_planned_in_turn(monkeypatch) -> None:
    """The pool's thread count can change between the plan and the split (another thread's ``blas.threads``):
    its parts are then not the planned ones, and the planned parts are computed in turn, the same bits as
    the planned sum."""
    x, weight = arrays(128, 784, 512, np.float32, seed=2)
    planned = [0, 256 * 512, 520 * 512, weight.size]  # three parts, where the pool cuts two (or runs whole)
    real_cuts, calls = pool.cuts, []
    monkeypatch.setattr(pool, "cuts", lambda count, unit=pool.UNIT: calls.append(count) or (planned if len(calls) == 1 else real_cuts(count, unit)))
    z = forward_parts.product(x, weight)
    expected = None
    with blas.threads(1):
        for first, last in ((0, 256), (256, 520), (520, 784)):
            part = np.ascontiguousarray(x[:, first:last]) @ weight[first:last]
            expected = part if expected is None else expected + part
    assert np.array_equal(z.view(np.uint8), expected.view(np.uint8))


def test_only_a_training_forward_takes_the_parts(monkeypatch) -> None:
    """Evaluation and prediction (training=False) keep OpenBLAS's product; a training forward of a large layer
    and a small batch takes the parts."""
    seen = parts_run(monkeypatch)
    x, weight = arrays(64, 784, 512, np.float32, seed=3)
    layer = Dense(weight, np.zeros(512, np.float32), activations.ReLU())
    evaluated, _ = layer.forward(x, training=False)
    assert not seen
    trained, _ = layer.forward(x, training=True)
    assert seen == ([(0, 392), (392, 784)] if TWO_THREADS else [])  # (one thread: OpenBLAS's product)
    np.testing.assert_allclose(trained, evaluated, rtol=0, atol=1e-5 * np.abs(evaluated).max())


def wide_digits(**changes) -> dict:
    """Digits (64 features) into 2,048 hidden units: a 64 x 2,048 weight, split in two parts of 32 rows, and
    batches of 32: every update's first product in parts."""
    digits = Path(__file__).resolve().parents[1] / "data" / "digits.csv"
    return load_config(tiny_config(**{
        "training__epochs": 2, "training__batch__size": 32,
        "data": {"source": "csv", "path": str(digits), "target": "digit", "validation": 0.2},
        "model__layers__0__units": 2048, "model__layers__1__units": 10,
        "optimizer": {"type": "adam", "learning_rate": 0.001}, **changes}))


def test_training_in_parts_resumes_bit_for_bit_and_matches_the_pool_run_whole(tmp_path, monkeypatch) -> None:
    seen = parts_run(monkeypatch)
    config = wide_digits()
    reference = api.train(config, runs_dir=tmp_path / "reference")
    assert reference.status == "completed"
    if TWO_THREADS:  # 45 updates an epoch, two products each (layer 1's is too small to split)
        assert seen.count((0, 32)) >= 90 and seen.count((32, 64)) >= 90
    interrupted = interrupt(config, tmp_path / "runs", 50)  # mid-epoch 2
    assert interrupted.status == "interrupted"
    resumed = api.resume(interrupted.run_dir)
    assert_identical(reference.run_dir, resumed.run_dir)
    monkeypatch.setattr(pool, "_OTHERS", lambda: True)  # the pool runs every split whole
    whole = api.train(config, runs_dir=tmp_path / "whole")
    assert_identical(reference.run_dir, whole.run_dir)
