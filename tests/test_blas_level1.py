"""The one-pass optimizer updates through NumPy's own BLAS (engine/blas.py axpby / axpy, issue 16):
each checked against NumPy's passes, the BLAS routine shown to have run (not a silent fallback),
NumPy's NaN and in-place semantics kept where BLAS would differ, and every optimizer's step on that
path against its NumPy path and through an interrupted, resumed minibatch run bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from test_resume import assert_identical, interrupt

from sgdcli import api
from sgdcli.config.loading import load_config
from sgdcli.engine import blas
from sgdcli.engine.gradients import add_scaled, add_squared
from sgdcli.engine.optimizers import SGD, AdaGrad, Adam, AdamW, RMSProp
from conftest import tiny_config

needs_numpy_blas = pytest.mark.skipif(blas._numpy_blas() is None, reason="NumPy is not built with scipy-openblas64")
TOLERANCE = {np.float32: 2e-6, np.float64: 1e-14}


@pytest.fixture
def calls(monkeypatch) -> list[tuple[str, bool]]:
    """Which BLAS routines an update prepared, and whether BLAS takes the arrays (True), while the test body
    runs (``gradients.scaled_calls`` prepares them with ``blas.axpy_call`` / ``axpby_call``, then runs them)."""
    seen: list[tuple[str, bool]] = []

    def watched(name: str):
        original = getattr(blas, f"{name}_call")

        def prepare(*args):
            call = original(*args)
            seen.append((name, call is not None))
            return call
        return prepare

    for name in ("axpy", "axpby"):
        monkeypatch.setattr(blas, f"{name}_call", watched(name))
    return seen


@needs_numpy_blas
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_axpby_and_axpy_compute_numpys_formula_in_place(dtype) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 200)).astype(dtype), rng.normal(size=(300, 200)).astype(dtype)
    buffer, expected = y.ctypes.data, 0.25 * x + 0.9 * y
    assert blas.axpby(0.25, x, 0.9, y) is True
    assert y.ctypes.data == buffer
    np.testing.assert_allclose(y, expected, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])
    expected = y - 3.0 * x
    assert blas.axpy(-3.0, x, y) is True
    np.testing.assert_allclose(y, expected, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


def refused_arrays(case: str, monkeypatch) -> tuple[np.ndarray, np.ndarray]:
    """x and y as one case of what BLAS must not take (or with NumPy's BLAS out of reach: "no library")."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(300, 200)), rng.normal(size=(300, 200))
    if case == "small":
        x, y = x[:2], y[:2]
    elif case == "strided":
        x, y = x[:, ::2], y[:, ::2]
    elif case == "overlapping":
        x = y
    elif case == "int":
        x, y = x.astype(np.int64), y.astype(np.int64)
    elif case == "mixed dtypes":
        x = x.astype(np.float32)
    elif case == "read-only x":
        x.flags.writeable = False
    elif case == "no library":
        monkeypatch.setattr(blas, "_NUMPY_BLAS", [None])
    return x, y


@pytest.mark.parametrize("case", ["small", "strided", "overlapping", "zero scale", "int", "mixed dtypes", "no library"])
def test_arrays_blas_must_not_take_are_refused_untouched(case, monkeypatch) -> None:
    x, y = refused_arrays(case, monkeypatch)
    alpha, beta = 0.5, 0.0 if case == "zero scale" else 0.5
    before = y.copy()
    assert blas.axpby(alpha, x, beta, y) is False
    assert blas.axpy(beta, x, y) is False
    np.testing.assert_array_equal(y, before)


def test_a_zero_decay_keeps_numpys_nan_where_blas_would_skip_the_target() -> None:
    # NumPy: NaN * 0 = NaN; a BLAS axpby with beta = 0 may not read y at all and return finite values.
    target = np.full((300, 200), np.nan)
    add_scaled(target, 1.0, np.ones((300, 200)), np.empty((300, 200)), decay=0.0)
    assert np.isnan(target).all()


@needs_numpy_blas
def test_add_squared_with_a_decay_is_one_blas_pass(calls) -> None:
    rng = np.random.default_rng(2)
    target, grad = rng.random((300, 200)), rng.normal(size=(300, 200))
    expected = 0.9 * target + 0.1 * grad * grad
    add_squared(target, 0.1, grad, np.empty_like(grad), decay=0.9)
    assert calls == [("axpby", True)]
    np.testing.assert_allclose(target, expected, rtol=1e-14)


OPTIMIZERS = {
    "sgd": SGD, "sgd_momentum": lambda: SGD(momentum=0.9), "sgd_nesterov": lambda: SGD(momentum=0.9, nesterov=True),
    "adagrad": AdaGrad, "rmsprop": RMSProp, "rmsprop_momentum": lambda: RMSProp(momentum=0.9),
    "adam": Adam, "adamw": AdamW,
}


@needs_numpy_blas
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_on_the_blas_path_equals_its_numpy_path(name, dtype, calls, monkeypatch) -> None:
    """Ten steps on a 300x200 weight, once through BLAS and once through NumPy's passes."""
    rng = np.random.default_rng(3)
    start = rng.normal(size=(300, 200)).astype(dtype)
    grads = [rng.normal(size=(300, 200)).astype(dtype) for _ in range(10)]
    results = {}
    for path in ("blas", "numpy"):
        if path == "numpy":
            monkeypatch.setattr(blas, "_NUMPY_BLAS", [None])
        optimizer, params = OPTIMIZERS[name](), {"w": start.copy()}
        for g in grads:
            optimizer.step(params, {"w": g}, 0.01)
        results[path] = (params["w"], optimizer.state_dict())
        if path == "blas":
            assert calls and all(ran for _, ran in calls), calls  # BLAS ran, every time
            calls.clear()
    assert calls and not any(ran for _, ran in calls)
    (w_blas, state_blas), (w_numpy, state_numpy) = results["blas"], results["numpy"]
    assert w_blas.dtype == dtype and not np.array_equal(w_blas, start)
    np.testing.assert_allclose(w_blas, w_numpy, rtol=TOLERANCE[dtype] * 10, atol=TOLERANCE[dtype])
    for key, value in state_numpy.items():
        np.testing.assert_allclose(state_blas[key], value, rtol=TOLERANCE[dtype] * 10, atol=TOLERANCE[dtype], err_msg=key)


@needs_numpy_blas
@pytest.mark.parametrize("optimizer", [{"type": "sgd", "learning_rate": 0.1, "momentum": 0.9},
                                       {"type": "adam", "learning_rate": 0.01},
                                       {"type": "rmsprop", "learning_rate": 0.01, "momentum": 0.5}],
                         ids=["momentum", "adam", "rmsprop"])
def test_minibatch_resume_on_the_blas_path_is_bit_identical(tmp_path, monkeypatch, calls, optimizer) -> None:
    monkeypatch.setattr(blas, "MIN_SIZE", 0)  # the tiny model's arrays take the BLAS path
    config = load_config(tiny_config(training__epochs=6, optimizer=optimizer))
    reference = api.train(config, runs_dir=tmp_path / "reference")
    assert calls and all(ran for _, ran in calls)
    interrupted = interrupt(config, tmp_path / "runs", 14)  # mid-epoch 3 (6 updates an epoch)
    assert interrupted.status == "interrupted"
    resumed = api.resume(interrupted.run_dir)
    assert resumed.status == "completed"
    assert_identical(reference.run_dir, resumed.run_dir)


@needs_numpy_blas
@pytest.mark.parametrize("name", ["sgd_momentum", "adam", "rmsprop"])
def test_a_batch_one_update_stays_in_numpys_blas_pool(name, monkeypatch) -> None:
    # scipy's ger (its own OpenBLAS pool) next to NumPy-BLAS axpy made a momentum update 17x slower.
    from sgdcli.engine.gradients import OuterProduct

    monkeypatch.setattr(blas, "_ROUTINES", {})
    rng = np.random.default_rng(4)
    params = {"w": rng.normal(size=(300, 200)).astype(np.float32)}
    grad = OuterProduct(rng.normal(size=300).astype(np.float32), rng.normal(size=200).astype(np.float32))
    expected = params["w"] - 0.01 * np.outer(grad.x, grad.dz) if name == "sgd_momentum" else None
    OPTIMIZERS[name]().step(params, {"w": grad}, 0.01)
    assert blas._ROUTINES == {}  # scipy's BLAS never loaded
    if expected is not None:
        np.testing.assert_allclose(params["w"], expected, rtol=1e-5, atol=1e-6)


@needs_numpy_blas
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rotm_updates_both_arrays_at_once_in_place(dtype) -> None:
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(300, 200)).astype(dtype), rng.normal(size=(300, 200)).astype(dtype)
    buffers = x.ctypes.data, y.ctypes.data
    expected = 0.5 * x + 0.9 * y, -0.25 * x + 0.75 * y
    call = blas.rotm_call(x, y, 0.5, 0.9, -0.25, 0.75)
    assert "rotm" in call[0].__name__
    call[0](*call[1])
    call = None  # (its arguments held H: nothing else needs to)
    assert (x.ctypes.data, y.ctypes.data) == buffers
    for got, want in zip((x, y), expected):
        np.testing.assert_allclose(got, want, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


@pytest.mark.parametrize("case", ["small", "strided", "overlapping", "int", "mixed dtypes", "read-only x", "no library"])
def test_rotm_refuses_what_blas_must_not_take(case, monkeypatch) -> None:
    x, y = refused_arrays(case, monkeypatch)
    assert blas.rotm_call(x, y, 1.0, 0.9, 0.0, 0.9) is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum", [0.9, 0.5, 2.0**-12])
def test_batch_one_momentum_keeps_its_formula_on_every_path(dtype, momentum) -> None:
    # v = m v - lr g; w += v for a rank-1 g: ger then rotm (w and v in one pass) from PRE_DECAY_MIN on, where
    # BLAS runs rotm; gemm (beta = m) then w += v below it and for arrays BLAS does not take (too small).
    from sgdcli.engine.gradients import OuterProduct
    from sgdcli.engine.optimizers import PRE_DECAY_MIN

    rng = np.random.default_rng(8)
    for shape in ((300, 200), (20, 30)):
        w = rng.normal(size=shape).astype(dtype)
        optimizer, v, reference = SGD(momentum=momentum), np.zeros(shape), w.astype(np.float64)
        for step in range(4):
            g = OuterProduct(rng.normal(size=shape[0]).astype(dtype), rng.normal(size=shape[1]).astype(dtype))
            optimizer.begin_step({"w": w})
            calls = optimizer.step_calls({"w": w}, {"w": g}, 0.1)
            names = [getattr(function, "__name__", "") for function, _ in calls]
            rotated = momentum >= PRE_DECAY_MIN and w.size >= blas.MIN_SIZE and blas._numpy_blas() is not None
            assert any("rotm" in name for name in names) == rotated, names
            for function, arguments in calls:
                function(*arguments)
            v = momentum * v - 0.1 * np.outer(g.x, g.dz)
            reference += v
            tolerance = 2e-5 if dtype == np.float32 else 1e-12
            np.testing.assert_allclose(optimizer._state["w"]["velocity"], v, rtol=tolerance, atol=tolerance)
            np.testing.assert_allclose(w, reference, rtol=tolerance, atol=tolerance)
