"""The fused update path (issue 16) against the plain formulas: a dense weight's gradient from one
sample kept as its factors (gradients.OuterProduct) and applied by BLAS ger. Hand-derived steps and
float64 references to 1e-12, with weight decay and clipping; the gradient checks (divergence,
clipping, layer statistics) see the same values; BLAS writes in place; batch-1 resume stays
bit-identical on the BLAS path."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from test_resume import assert_identical, interrupt

from sgdcli import api
from sgdcli.config.loading import load_config
from sgdcli.engine import blas
from sgdcli.engine.activations import Identity, ReLU, Tanh
from sgdcli.engine.gradients import (
    OuterProduct,
    add_squared,
    as_array,
    clip_by_global_norm,
    run,
    squared_calls,
    squared_norm,
)
from sgdcli.engine.init import glorot_uniform
from sgdcli.engine.layers import Dense
from sgdcli.engine.losses import CrossEntropy
from sgdcli.engine.model import Sequential
from sgdcli.engine.optimizers import SGD, AdaGrad, Adam, AdamW, RMSProp
from sgdcli.errors import DivergenceError
from sgdcli.training.loop import Position, Problem, _check_gradients, train_epochs
from sgdcli.training.track import LayerTracker
from conftest import tiny_config
from sgdcli.engine.schedules import Constant


@pytest.fixture(params=["blas", "numpy"])
def path(request, monkeypatch) -> str:
    """Both ways an update can run: BLAS (every array counts as large) and the NumPy fallback."""
    monkeypatch.setattr(blas, "MIN_SIZE", 0 if request.param == "blas" else 1 << 62)
    return request.param


# ---------------------------------------------------------------- hand-derived steps
def test_sgd_momentum_on_an_outer_product_by_hand(path: str) -> None:
    # x = [1, 2], dz = [0.5, -1]: g = outer(x, dz) = [[0.5, -1], [1, -2]]; lr 0.1, momentum 0.9.
    # step 1: v = -0.1 g = [[-0.05, 0.1], [-0.1, 0.2]];  w = 1 + v = [[0.95, 1.1], [0.9, 1.2]]
    # step 2: v = 0.9 v - 0.1 g = [[-0.095, 0.19], [-0.19, 0.38]];  w = [[0.855, 1.29], [0.71, 1.58]]
    w = np.ones((2, 2))
    optimizer = SGD(momentum=0.9)
    g = OuterProduct(np.array([1.0, 2.0]), np.array([0.5, -1.0]))
    optimizer.step({"w": w}, {"w": g}, 0.1)
    np.testing.assert_allclose(w, [[0.95, 1.1], [0.9, 1.2]], rtol=0, atol=1e-12)
    optimizer.step({"w": w}, {"w": g}, 0.1)
    np.testing.assert_allclose(w, [[0.855, 1.29], [0.71, 1.58]], rtol=0, atol=1e-12)
    np.testing.assert_allclose(optimizer.state_dict()["velocity/w"], [[-0.095, 0.19], [-0.19, 0.38]], atol=1e-12)
    assert optimizer._built == {}  # applied from its factors: never built


def test_plain_sgd_on_a_clipped_outer_product_by_hand(path: str) -> None:
    # g = outer([3, 4], [1, 0]) = [[3, 0], [4, 0]], ‖g‖ = ‖x‖ ‖dz‖ = 5; clipped to norm 1: g / 5.
    # w -= 0.5 * g / 5: [[1 - 0.3, 1], [1 - 0.4, 1]]
    w = np.ones((2, 2))
    grads = {"w": OuterProduct(np.array([3.0, 4.0]), np.array([1.0, 0.0]))}
    assert clip_by_global_norm(grads, 1.0) == pytest.approx(5.0, rel=1e-15)
    SGD().step({"w": w}, grads, 0.5)
    np.testing.assert_allclose(w, [[0.7, 1.0], [0.6, 1.0]], rtol=0, atol=1e-12)


def test_adam_step_one_on_an_outer_product_moves_every_weight_by_lr_times_sign(path: str) -> None:
    # Adam's first step is -lr * g / (|g| + eps'): -lr * sign(g) wherever |g| >> eps.
    w = np.zeros((3, 2))
    x, dz = np.array([1.0, -2.0, 0.5]), np.array([3.0, -0.25])
    Adam(epsilon=1e-12).step({"w": w}, {"w": OuterProduct(x, dz)}, 0.01)
    np.testing.assert_allclose(w, -0.01 * np.sign(np.outer(x, dz)), rtol=1e-9)


# ---------------------------------------------------------------- every optimizer vs its plain formula
def reference_step(name: str, w, g, state: dict, lr: float, t: int, weight_decay: float):
    """The textbook rule in float64, written out once more (g already clipped)."""
    if name == "adamw":
        w = w * (1 - lr * weight_decay)
    elif weight_decay:
        g = g + weight_decay * w
    if name.startswith("sgd"):
        momentum = 0.0 if name == "sgd" else 0.9
        if not momentum:
            return w - lr * g
        state["v"] = momentum * state.get("v", 0) - lr * g
        return w + (momentum * state["v"] - lr * g if name == "sgd_nesterov" else state["v"])
    if name == "adagrad":
        state["G"] = state.get("G", 0) + g * g
        return w - lr * g / (np.sqrt(state["G"]) + 1e-10)
    if name.startswith("rmsprop"):
        state["s"] = 0.9 * state.get("s", 0) + 0.1 * g * g
        direction = g / (np.sqrt(state["s"]) + 1e-8)
        if name == "rmsprop_momentum":
            state["b"] = 0.9 * state.get("b", 0) + direction
            direction = state["b"]
        return w - lr * direction
    state["m"] = 0.9 * state.get("m", 0) + 0.1 * g
    state["v"] = 0.999 * state.get("v", 0) + 0.001 * g * g
    m_hat, v_hat = state["m"] / (1 - 0.9**t), state["v"] / (1 - 0.999**t)
    return w - lr * m_hat / (np.sqrt(v_hat) + 1e-8)


OPTIMIZERS = {
    "sgd": lambda wd: SGD(weight_decay=wd), "sgd_momentum": lambda wd: SGD(momentum=0.9, weight_decay=wd),
    "sgd_nesterov": lambda wd: SGD(momentum=0.9, nesterov=True, weight_decay=wd),
    "adagrad": lambda wd: AdaGrad(weight_decay=wd), "rmsprop": lambda wd: RMSProp(weight_decay=wd),
    "rmsprop_momentum": lambda wd: RMSProp(momentum=0.9, weight_decay=wd),
    "adam": lambda wd: Adam(weight_decay=wd), "adamw": lambda wd: AdamW(weight_decay=wd if wd else 0.01),
}


def mlp(rng: np.random.Generator) -> Sequential:
    return Sequential([Dense.create(5, 4, Tanh(), glorot_uniform, rng, np.float64),
                       Dense.create(4, 3, Identity(), glorot_uniform, rng, np.float64)])


@pytest.mark.parametrize("clip", [None, 0.05], ids=["unclipped", "clipped"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1], ids=["no decay", "decay"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_training_steps_equal_the_plain_formula(name: str, batch: int, weight_decay: float, clip, path: str) -> None:
    """Three steps of an MLP through model.backward(factored=True) and the optimizer, against the
    formula applied to the built gradients x.T @ dz (float64, 1e-12)."""
    rng = np.random.default_rng(7)
    model = mlp(rng)
    params = model.parameters()
    expected = {key: value.copy() for key, value in params.items()}
    optimizer, states = OPTIMIZERS[name](weight_decay), {key: {} for key in params}
    decay = optimizer.weight_decay
    for t in range(1, 4):
        x, y = rng.normal(size=(batch, 5)), rng.integers(0, 3, size=batch)
        out, caches = model.forward(x, training=True)
        _, dout = CrossEntropy().value_and_grad(out, y)
        plain = {key: as_array(g).copy() for key, g in model.backward(dout, caches).items()}
        grads = model.backward(dout, caches, factored=True)
        if batch == 1:
            assert isinstance(grads["0.weight"], OuterProduct) and isinstance(grads["1.weight"], OuterProduct)
        if clip is not None:
            norm = math.sqrt(sum(float(np.sum(g * g)) for g in plain.values()))
            assert clip_by_global_norm(grads, clip) == pytest.approx(norm, rel=1e-12)
            plain = {key: g * min(1.0, clip / norm) for key, g in plain.items()}
        optimizer.step(params, grads, 0.05)
        for key in params:
            expected[key] = reference_step(name, expected[key], plain[key], states[key], 0.05, t, decay)
            np.testing.assert_allclose(params[key], expected[key], rtol=1e-12, atol=1e-12, err_msg=f"{key} step {t}")


def test_factored_gradients_equal_the_built_ones_that_gradcheck_verifies() -> None:
    rng = np.random.default_rng(8)
    model = Sequential([Dense.create(6, 5, ReLU(), glorot_uniform, rng, np.float64),
                        Dense.create(5, 2, Identity(), glorot_uniform, rng, np.float64)])
    out, caches = model.forward(rng.normal(size=(1, 6)) + 0.1)
    _, dout = CrossEntropy().value_and_grad(out, np.array([1]))
    built, factored = model.backward(dout, caches), model.backward(dout, caches, factored=True)
    for key in built:
        np.testing.assert_array_equal(as_array(factored[key]), built[key])
        assert squared_norm(factored[key]) == pytest.approx(squared_norm(built[key]), rel=1e-14)


# ---------------------------------------------------------------- the checks on a gradient
def factors(x, dz, dtype=np.float32) -> OuterProduct:
    return OuterProduct(np.array(x, dtype=dtype), np.array(dz, dtype=dtype))


def check_verdicts(*grads) -> list[str | None]:
    """The divergence check's message on each gradient as layer 0's weight (None: it passed)."""
    outcomes = []
    with np.errstate(over="ignore", invalid="ignore"):
        for grad in grads:
            try:
                _check_gradients({"0.weight": grad}, Position())
                outcomes.append(None)
            except DivergenceError as error:
                outcomes.append(str(error))
    return outcomes


@pytest.mark.parametrize(("x", "dz", "verdict"), [
    ([1.0, 2.0], [3.0, -4.0], None),
    ([1.0, np.nan], [3.0, 1.0], "is not finite"),
    ([0.0, 1.0], [np.inf, 1.0], "is not finite"),  # inf * 0 is NaN in the built array too
    ([1e19, 1e19], [1e20, 1.0], "is not finite"),  # 1e39: entries overflow float32
    ([1e19, 1e19], [1e1, 1e1], "overflowed"),  # entries finite (1e20), their squares' sum overflows
    ([3e19, 1.0], [1e-19, 1e-19], None),  # ‖x‖² overflows float32, g = [[3, 3], [1e-19, 1e-19]] does not
], ids=["finite", "nan", "inf times zero", "entries overflow", "squares overflow", "large factor, finite g"])
def test_the_divergence_check_gives_the_built_arrays_verdict(x, dz, verdict) -> None:
    with np.errstate(over="ignore", invalid="ignore"):
        outcomes = check_verdicts(factors(x, dz), as_array(factors(x, dz)))
    assert outcomes[0] == outcomes[1]
    assert (outcomes[0] is None) if verdict is None else (verdict in outcomes[0])


def test_squared_norm_of_an_outer_product_is_the_product_of_the_factors_norms() -> None:
    g = factors([1.5, -2.0, 0.25], [4.0, 0.5], np.float64)
    g *= 0.5  # as clipping scales it
    assert g.squared_norm() == pytest.approx(float(np.sum(as_array(g) ** 2)), rel=1e-15)
    np.testing.assert_array_equal(as_array(g), 0.5 * np.outer([1.5, -2.0, 0.25], [4.0, 0.5]))
    np.testing.assert_array_equal(np.asarray(g), as_array(g))


def test_layer_statistics_see_the_norm_of_a_factored_gradient() -> None:
    params = {"0.weight": np.ones((2, 2))}
    tracker = LayerTracker(["grad_norm"], params, updates_per_epoch=1)
    assert tracker.before_step(0, params, {"0.weight": factors([3.0, 4.0], [0.0, 2.0], np.float64)})
    assert tracker.epoch_row(params)["grad_norm/0.weight"] == pytest.approx(10.0, rel=1e-15)


def test_l2_weight_decay_on_an_outer_product_builds_g_plus_decay_times_w(path: str) -> None:
    w = np.full((2, 2), 2.0)
    SGD(weight_decay=0.5).step({"w": w}, {"w": factors([1.0, 2.0], [1.0, -1.0], np.float64)}, 0.1)
    # g + 0.5 w = [[1 + 1, -1 + 1], [2 + 1, -2 + 1]]; w -= 0.1 * that
    np.testing.assert_allclose(w, [[1.8, 2.0], [1.7, 2.1]], rtol=0, atol=1e-12)


# ---------------------------------------------------------------- BLAS writes in place, never into a copy
@pytest.mark.parametrize("library", ["numpy's", "scipy's"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ger_writes_into_the_target_itself(dtype, library, monkeypatch) -> None:
    monkeypatch.setattr(blas, "MIN_SIZE", 0)
    if library == "scipy's":  # as with a NumPy built without scipy-openblas64
        monkeypatch.setattr(blas, "_NUMPY_BLAS", [None])
    rng = np.random.default_rng(9)
    a = rng.normal(size=(7, 5)).astype(dtype)
    x, y = rng.normal(size=7).astype(dtype), rng.normal(size=5).astype(dtype)
    expected, buffer = a + 0.5 * np.outer(x, y), a.ctypes.data
    blas.ger(0.5, x, y, a)
    # (a float32 array handed to dger, or a (D, M) C array handed over untransposed, would be
    # copied by f2py: the update would land in the copy and `a` would keep its values)
    assert a.ctypes.data == buffer
    np.testing.assert_allclose(a, expected, rtol=1e-6 if dtype == np.float32 else 1e-14)
    built = np.full((7, 5), np.nan, dtype)  # materialize on the BLAS path: zero-filled, then ger
    g = OuterProduct(x, y)
    g *= 2.0
    assert g.materialize(out=built) is built
    np.testing.assert_allclose(built, 2.0 * np.outer(x, y), rtol=1e-6 if dtype == np.float32 else 1e-14)


@pytest.mark.parametrize("library", ["numpy's", "scipy's"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_decayed_rank_one_update_is_one_gemm_into_the_target(dtype, library, monkeypatch) -> None:
    # v = m v + alpha x dzᵀ (momentum, Adam's moments): with NumPy's BLAS one gemm of inner dimension
    # 1 (beta = m) writes into v; without it, v *= m and then ger. Both give the formula.
    monkeypatch.setattr(blas, "MIN_SIZE", 0)
    if library == "scipy's":
        monkeypatch.setattr(blas, "_NUMPY_BLAS", [None])
    gemms: list[float] = []
    original = blas.gemm_tn_call
    def recording(alpha, a, b, beta, c):  # the gemms prepared for BLAS (an update's calls are run as prepared)
        call = original(alpha, a, b, beta, c)
        gemms.extend([beta] if call is not None else [])
        return call

    monkeypatch.setattr(blas, "gemm_tn_call", recording)
    rng = np.random.default_rng(12)
    v = rng.normal(size=(9, 6)).astype(dtype)
    x, dz = rng.normal(size=9).astype(dtype), rng.normal(size=6).astype(dtype)
    g = OuterProduct(x, dz)
    g *= 0.5  # a clipped gradient: its scale enters alpha
    expected, buffer = 0.9 * v.astype(np.float64) - 0.1 * 0.5 * np.outer(x, dz), v.ctypes.data
    g.add_to(v, -0.1, decay=0.9)
    assert v.ctypes.data == buffer
    tolerance = 2e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(v, expected, rtol=tolerance, atol=tolerance)
    assert gemms == ([0.9] if library == "numpy's" else [])
    squares = rng.normal(size=(9, 6)).astype(dtype) ** 2  # Adam's second moment: (scale x)² ⊗ dz², decayed
    expected = 0.999 * squares.astype(np.float64) + 0.001 * 0.25 * np.outer(x * x, dz * dz)
    add_squared(squares, 0.001, g, np.empty_like(squares), decay=0.999)
    np.testing.assert_allclose(squares, expected, rtol=tolerance)
    assert gemms == ([0.9, 0.999] if library == "numpy's" else [])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_mid_sized_rank_one_update_runs_blas_with_read_only_factors(dtype) -> None:
    # 40 x 32 = 1,280 elements: under MIN_SIZE, at least RANK1_MIN_SIZE. A rank-1 update (ger, or the gemm of
    # inner dimension 1 with the decay) runs BLAS there: one call instead of NumPy's outer product, scaled and
    # added. Factors that are read-only (training data) are handed over by address all the same.
    assert blas.RANK1_MIN_SIZE <= 40 * 32 < blas.MIN_SIZE
    if blas.numpy_blas_library() is None:
        pytest.skip("NumPy without its own BLAS: rank-1 updates this small stay on NumPy")
    rng = np.random.default_rng(13)
    x, dz = rng.normal(size=40).astype(dtype), rng.normal(size=32).astype(dtype)
    x.flags.writeable = False
    v = rng.normal(size=(40, 32)).astype(dtype)
    w = v.copy()
    expected_v = 0.9 * v.astype(np.float64) - 0.1 * np.outer(x, dz)
    expected_w = w.astype(np.float64) + 0.5 * np.outer(x, dz)
    assert blas.gemm_tn(-0.1, x[None, :], dz[None, :], 0.9, v, fallback=False)  # ran: BLAS wrote v
    assert blas.writes_in_place(w, x, dz, rank_one=True) and not blas.writes_in_place(w, x, dz)
    blas.ger(0.5, x, dz, w)
    tolerance = 2e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(v, expected_v, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(w, expected_w, rtol=tolerance, atol=tolerance)
    small = np.zeros((4, 8), dtype)  # below RANK1_MIN_SIZE: NumPy's passes
    assert not blas.gemm_tn(1.0, x[None, :4], dz[None, :8], 0.9, small, fallback=False)


@pytest.mark.parametrize("rows", [2048, 40_000])  # under and over MIN_SIZE
def test_a_rank_one_update_of_a_single_column_stays_on_numpy(rows) -> None:
    # One output unit: BLAS would walk `rows` columns of one element (4096 x 1: 18 against NumPy's 4 us).
    rng = np.random.default_rng(14)
    x, dz = rng.normal(size=rows), rng.normal(size=1)
    w = rng.normal(size=(rows, 1))
    expected = w + 0.5 * np.outer(x, dz)
    assert not blas.writes_in_place(w, x, dz, rank_one=True)
    assert not blas.gemm_tn(0.5, x[None, :], dz[None, :], 0.9, w.copy(), fallback=False)
    blas.ger(0.5, x, dz, w)
    np.testing.assert_allclose(w, expected, rtol=1e-14)
    if blas.numpy_blas_library() is not None:  # two columns: BLAS again (from RANK1_MIN_SIZE elements)
        assert blas.writes_in_place(np.zeros((rows // 2, 2)), x[: rows // 2], np.ones(2), rank_one=True)


def test_a_target_blas_cannot_write_in_place_takes_the_numpy_path(monkeypatch) -> None:
    monkeypatch.setattr(blas, "MIN_SIZE", 0)
    rng = np.random.default_rng(10)
    base = rng.normal(size=(5, 8))
    a = base[:, ::2]  # not contiguous: f2py would update a copy and leave `a` as it was
    expected = a + np.outer(np.ones(5), np.arange(4.0))
    blas.ger(1.0, np.ones(5), np.arange(4.0), a)
    np.testing.assert_allclose(a, expected, rtol=1e-14)
    np.testing.assert_allclose(base[:, ::2], expected, rtol=1e-14)
    scratch = np.empty((5, 4))
    add_squared(a, 2.0, np.full((5, 4), 3.0), scratch)  # a += 2 * 9
    np.testing.assert_allclose(base[:, ::2], expected + 18.0, rtol=1e-14)


# ---------------------------------------------------------------- through the loop and resume
def count_materialized(monkeypatch, factored_class) -> list[str]:
    """A list that gains an entry whenever a gradient of `factored_class` is built into an array."""
    built: list[str] = []
    original = factored_class.materialize
    monkeypatch.setattr(factored_class, "materialize", lambda self, out=None: built.append("x") or original(self, out))
    return built


def test_the_loop_applies_batch_one_gradients_from_their_factors(monkeypatch) -> None:
    built = count_materialized(monkeypatch, OuterProduct)
    rng = np.random.default_rng(11)
    model = mlp(rng)
    problem = Problem(model=model, loss=CrossEntropy(), optimizer=SGD(momentum=0.9), schedule=Constant(0.01),
                      x=rng.normal(size=(6, 5)), y=rng.integers(0, 3, size=6), batch_size=1, clip_norm=10.0)
    reference = {key: value.copy() for key, value in model.parameters().items()}
    list(train_epochs(problem, Position(), 1, np.random.default_rng(0), np.random.default_rng(1)))
    assert built == []
    # The same six updates with built gradients.
    check = mlp(np.random.default_rng(11))
    optimizer, order = SGD(momentum=0.9), np.random.default_rng(0).permutation(6)
    for i in order:
        out, caches = check.forward(problem.x[i:i + 1], training=True)
        _, dout = CrossEntropy().value_and_grad(out, problem.y[i:i + 1])
        grads = check.backward(dout, caches)
        clip_by_global_norm(grads, 10.0)
        optimizer.step(check.parameters(), grads, 0.01)
    for key, value in check.parameters().items():
        assert not np.array_equal(value, reference[key])
        np.testing.assert_allclose(model.parameters()[key], value, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("optimizer", [{"type": "sgd", "learning_rate": 0.05},
                                       {"type": "sgd", "learning_rate": 0.02, "momentum": 0.9, "clip_norm": 0.5},
                                       {"type": "adam", "learning_rate": 0.01, "weight_decay": 1e-3}],
                         ids=["sgd", "momentum clipped", "adam decay"])
def test_batch_one_resume_on_the_blas_path_is_bit_identical(tmp_path, monkeypatch, optimizer) -> None:
    monkeypatch.setattr(blas, "MIN_SIZE", 0)  # the tiny model's arrays take the BLAS path
    in_place: list[bool] = []
    original = blas.writes_in_place
    monkeypatch.setattr(blas, "writes_in_place", lambda *arrays, **kw: in_place.append(original(*arrays, **kw)) or in_place[-1])
    config = load_config(tiny_config(training__epochs=3, training__batch__mode="sgd", optimizer=optimizer))
    resume_is_bit_identical(config, tmp_path, 130)  # stopped mid-epoch 2 (90 updates an epoch)
    assert any(in_place)  # BLAS ger ran


def resume_is_bit_identical(config, tmp_path, stop_after: int) -> None:
    """A run of `config` stopped after `stop_after` updates and resumed ends with the uninterrupted run's files."""
    reference = api.train(config, runs_dir=tmp_path / "reference")
    interrupted = interrupt(config, tmp_path / "runs", stop_after)
    assert interrupted.status == "interrupted"
    resumed = api.resume(interrupted.run_dir)
    assert resumed.status == "completed"
    assert_identical(reference.run_dir, resumed.run_dir)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_factored_float32_update_allocates_nothing_parameter_sized_and_stays_float32(name: str) -> None:
    rng = np.random.default_rng(12)
    params = {"w": rng.normal(size=(500, 400)).astype(np.float32)}  # above blas.MIN_SIZE: the BLAS path
    grad = {"w": OuterProduct(rng.normal(size=500).astype(np.float32), rng.normal(size=400).astype(np.float32))}
    optimizer = OPTIMIZERS[name](0.0)
    optimizer.step(params, grad, np.float64(0.01))  # creates the state and work arrays (and loads BLAS)
    tracemalloc.start()
    try:
        for _ in range(optimizer.flush_every()):
            optimizer.step(params, grad, np.float64(0.01))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < params["w"].nbytes / 50, f"{name}: an update allocated {peak} bytes"
    arrays = [params["w"], *optimizer._scratch.values(), *optimizer._built.values(),
              *(v for k, v in optimizer.state_dict().items() if k != "iterations")]
    assert all(array.dtype == np.float32 for array in arrays)


def test_prepared_squared_rank_one_calls_keep_their_factors_alive() -> None:
    # Adam's g * g of an OuterProduct is a new pair of squared factors, made when its calls are prepared and
    # read when they run: the calls hold them (a call holding only their addresses would read freed memory,
    # which the next arrays of the same size reuse: NaN here).
    rng = np.random.default_rng(4)
    target = rng.normal(size=(64, 48)).astype(np.float32)  # above blas.RANK1_MIN_SIZE: the BLAS path
    x, dz = rng.normal(size=64).astype(np.float32), rng.normal(size=48).astype(np.float32)
    expected = 0.9 * target.astype(np.float64) + 0.5 * np.outer(x.astype(np.float64) ** 2, dz.astype(np.float64) ** 2)
    calls = squared_calls(target, 0.5, OuterProduct(x, dz), np.empty_like(target), decay=0.9)
    junk = [np.full(n, np.nan, dtype=np.float32) for _ in range(50) for n in (64, 48)]  # noqa: F841 (reuses freed memory)
    run(calls)
    np.testing.assert_allclose(target, expected, rtol=1e-5, atol=1e-6)
