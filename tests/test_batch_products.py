"""A dense weight's gradient from a batch kept as its factors (gradients.BatchProduct, issue 16):
plain and momentum SGD take it as one BLAS gemm writing into the weights or the velocity, and
the divergence check bounds it from the factors. Checked here: the gemm against NumPy's product,
the layer handing it over only where BLAS runs, no weight-sized array built in an update, the
check's verdicts (equal to the built array's; a bound near overflow falls back to it; the update is
then not applied), and bit-identical resume on this path. The formulas of every optimizer with
it (weight decay, clipping) are in tests/test_fused_updates.py (batch 3)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from conftest import tiny_config
from test_fused_updates import check_verdicts, count_materialized, resume_is_bit_identical

from sgdcli.config.loading import load_config
from sgdcli.engine import blas
from sgdcli.engine.activations import Identity, ReLU
from sgdcli.engine.gradients import BatchProduct, as_array, clip_by_global_norm, squared_norm, surely_finite
from sgdcli.engine.init import glorot_uniform, he_uniform
from sgdcli.engine.layers import Dense
from sgdcli.engine.losses import CrossEntropy
from sgdcli.engine.model import Sequential
from sgdcli.engine.optimizers import SGD, Adam
from sgdcli.engine.schedules import Constant
from sgdcli.errors import DivergenceError
from sgdcli.training.loop import Position, Problem, _check_gradients, train_epochs


# ---------------------------------------------------------------- the gemm
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 0.0), (-0.01, 0.9), (0.5, 1.0)])
def test_gemm_tn_writes_alpha_xt_dz_plus_beta_c_into_c_itself(dtype, alpha: float, beta: float) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 300)).astype(dtype), rng.normal(size=(7, 200)).astype(dtype)
    c = rng.normal(size=(300, 200)).astype(dtype)  # 60,000 elements: above blas.MIN_SIZE, the BLAS path
    expected = alpha * (a.astype(np.float64).T @ b) + beta * c
    target = c
    blas.gemm_tn(alpha, a, b, beta, c)
    assert c is target and c.dtype == dtype
    np.testing.assert_allclose(c, expected, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5 if dtype == np.float32 else 1e-12)


def test_gemm_tn_with_beta_zero_ignores_what_c_held_on_both_paths(monkeypatch) -> None:
    a, b = np.ones((2, 300)), np.ones((2, 200))
    for min_size in (0, 1 << 62):  # BLAS, then the NumPy fallback
        monkeypatch.setattr(blas, "MIN_SIZE", min_size)
        c = np.full((300, 200), np.nan)
        blas.gemm_tn(1.0, a, b, 0.0, c)
        np.testing.assert_array_equal(c, 2.0)


def test_gemm_tn_on_a_target_blas_cannot_write_takes_numpys_product() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3, 300)), rng.normal(size=(3, 200))
    base = rng.normal(size=(300, 400))
    c = base[:, ::2]  # not contiguous
    expected = 0.9 * c + 2.0 * (a.T @ b)
    blas.gemm_tn(2.0, a, b, 0.9, c)
    np.testing.assert_allclose(base[:, ::2], expected, rtol=1e-12)
    with pytest.raises(ValueError, match="gemm_tn: c has shape"):
        blas.gemm_tn(1.0, a, b, 0.0, np.empty((200, 300)))


# ---------------------------------------------------------------- the layer and the optimizers
def large_model(rng: np.random.Generator, dtype=np.float32) -> Sequential:
    """A first weight above blas.MIN_SIZE (300 x 120) and a small second one (120 x 3)."""
    return Sequential([Dense.create(300, 120, ReLU(), he_uniform, rng, dtype),
                       Dense.create(120, 3, Identity(), glorot_uniform, rng, dtype)])


def batch_gradients(model: Sequential, rng: np.random.Generator, rows: int = 8, factored: bool = True):
    x = rng.normal(size=(rows, 300)).astype(model.dtype)
    out, caches = model.forward(x, training=True)
    _, dout = CrossEntropy().value_and_grad(out, rng.integers(0, 3, size=rows))
    return model.backward(dout, caches, factored=factored)


def test_a_large_dense_weights_batch_gradient_comes_as_its_factors_and_equals_the_built_one() -> None:
    rng = np.random.default_rng(2)
    model = large_model(rng, np.float64)
    factored = batch_gradients(model, np.random.default_rng(3))
    built = batch_gradients(model, np.random.default_rng(3), factored=False)
    assert isinstance(factored["0.weight"], BatchProduct)
    assert isinstance(factored["1.weight"], np.ndarray)  # 360 elements: NumPy's product, as before
    for key in built:
        np.testing.assert_allclose(as_array(factored[key]), built[key], rtol=1e-12, atol=1e-15)
    assert squared_norm(factored["0.weight"]) == pytest.approx(squared_norm(built["0.weight"]), rel=1e-12)


@pytest.mark.parametrize("momentum", [0.0, 0.9], ids=["plain", "momentum"])
def test_sgd_takes_a_batch_product_by_one_gemm_and_builds_no_weight_sized_array(momentum: float) -> None:
    rng = np.random.default_rng(4)
    model = large_model(rng)
    params, optimizer = model.parameters(), SGD(momentum=momentum)
    expected = {key: value.copy() for key, value in params.items()}
    reference = SGD(momentum=momentum)
    for step in range(3):
        plain = {key: as_array(g).copy() for key, g in batch_gradients(model, np.random.default_rng(10 + step)).items()}
        reference.step(expected, plain, 0.05)
        tracemalloc.start()
        try:
            grads = batch_gradients(model, np.random.default_rng(10 + step))  # backward: x.T @ dz is not built,
            _check_gradients(grads, Position())  # nor by the divergence check,
            optimizer.step(params, grads, 0.05)  # nor by the update: one gemm into v (momentum) or w
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        if step:  # the first step makes the velocity and the scratch
            assert peak < params["0.weight"].nbytes / 4, f"step {step}: {peak} bytes allocated"
        for key in params:
            np.testing.assert_allclose(params[key], expected[key], rtol=1e-5, atol=1e-6)
    assert "0.weight" not in optimizer._built and all(a.dtype == np.float32 for a in optimizer._scratch.values())


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_a_clipped_update_computes_the_product_once(name: str, monkeypatch) -> None:
    # Clipping needs the norm, hence the values: the product built for it is the one the update uses.
    rng = np.random.default_rng(8)
    model, reference = large_model(rng), large_model(np.random.default_rng(8))
    make = (lambda: SGD(momentum=0.9)) if name == "momentum" else Adam
    optimizer, expected_optimizer = make(), make()
    products: list[tuple] = []  # each product of x.T @ dz: one gemm, or built by rows (BatchProduct._build)
    original, build = blas.gemm_tn, BatchProduct._build
    monkeypatch.setattr(blas, "gemm_tn", lambda *args: products.append(args[3:]) or original(*args))
    monkeypatch.setattr(BatchProduct, "_build", lambda self, *args: products.append(args) or build(self, *args))
    for step in range(2):
        grads = batch_gradients(model, np.random.default_rng(20 + step))
        plain = {key: as_array(g).copy() for key, g in grads.items()}
        products.clear()
        _check_gradients(grads, Position())
        norm = clip_by_global_norm(grads, 0.01)
        optimizer.step(model.parameters(), grads, 0.05)
        assert len(products) == 1, f"step {step}: {len(products)} products of x.T @ dz"
        assert norm == pytest.approx(np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in plain.values())), rel=1e-5)
        clip_by_global_norm(plain, 0.01)
        expected_optimizer.step(reference.parameters(), plain, 0.05)
        for key, value in model.parameters().items():
            np.testing.assert_allclose(value, reference.parameters()[key], rtol=1e-5, atol=1e-7)


def test_optimizers_that_need_the_values_get_the_product_built_into_a_reused_array() -> None:
    rng = np.random.default_rng(5)
    model = large_model(rng)
    optimizer = Adam()
    optimizer.step(model.parameters(), batch_gradients(model, rng), 1e-3)
    built = optimizer._built["0.weight"]
    tracemalloc.start()
    try:
        optimizer.step(model.parameters(), batch_gradients(model, rng), 1e-3)  # backward and update
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert optimizer._built["0.weight"] is built and peak < built.nbytes / 4


# ---------------------------------------------------------------- the divergence check
def product(x_scale: float, dz_scale: float, x_entry=None, rows: int = 4) -> BatchProduct:
    rng = np.random.default_rng(6)
    x = (rng.normal(size=(rows, 300)) * x_scale).astype(np.float32)
    dz = (rng.normal(size=(rows, 120)) * dz_scale).astype(np.float32)
    if x_entry is not None:
        x[1, 5] = x_entry
    return BatchProduct(x, dz)


@pytest.mark.parametrize(("x_scale", "dz_scale", "x_entry", "verdict", "bounded"), [
    (1.0, 1.0, None, None, True),
    (1.0, 1.0, np.nan, "is not finite", False),
    (1.0, 0.0, np.inf, "is not finite", False),  # inf * 0 is NaN in the built array too
    (1e19, 1e20, None, "is not finite", False),  # entries overflow float32
    (1e17, 1e17, None, "overflowed", False),  # entries ~1e34 finite, their squares' sum overflows
    (1e20, 1e-20, None, None, False),  # ‖x‖² overflows float32, g (entries ~1) does not: the built verdict
    (1e12, 1e3, None, None, True),
], ids=["finite", "nan", "inf times zero", "entries overflow", "squares overflow", "large factors, finite g",
        "bounded well below overflow"])
def test_the_check_on_a_batch_product_gives_the_built_arrays_verdict(x_scale, dz_scale, x_entry, verdict, bounded) -> None:
    with np.errstate(over="ignore", invalid="ignore"):
        assert surely_finite(product(x_scale, dz_scale, x_entry)) == bounded
        outcomes = check_verdicts(product(x_scale, dz_scale, x_entry), as_array(product(x_scale, dz_scale, x_entry)))
    assert outcomes[0] == outcomes[1]
    assert (outcomes[0] is None) if verdict is None else (verdict in outcomes[0])


def test_the_bound_never_calls_finite_a_gradient_whose_squares_overflow() -> None:
    # Scales swept across the boundary in steps of 2: where the bound says finite, the built array's
    # sum of squares (in float32, as the check computes it) is finite; near the edge it says nothing.
    said_finite = overflowed = 0
    with np.errstate(over="ignore", invalid="ignore"):
        for power in range(90, 130):  # the factors' scale 2^(power/4): sum(g * g) ~ 2^power
            for rows in (1, 4, 64):
                g = product(2.0 ** (power / 4), 2.0 ** (power / 4), rows=rows)
                finite = np.isfinite(squared_norm(as_array(g)))
                overflowed += not finite
                if surely_finite(g):
                    said_finite += 1
                    assert finite, (power, rows)
    assert said_finite > 20 and overflowed > 20


def test_a_batch_that_diverges_is_not_applied(monkeypatch) -> None:
    built = count_materialized(monkeypatch, BatchProduct)
    rng = np.random.default_rng(7)
    model = large_model(rng)
    x = rng.normal(size=(24, 300)).astype(np.float32)
    x[13, 7] = np.nan  # in the second batch of 8
    problem = Problem(model=model, loss=CrossEntropy(), optimizer=SGD(momentum=0.9), schedule=Constant(0.01),
                      x=x, y=rng.integers(0, 3, size=24), batch_size=8, shuffle=False)
    position = Position()
    with pytest.raises(DivergenceError, match="update 2: the loss is nan"):
        list(train_epochs(problem, position, 1, np.random.default_rng(0), np.random.default_rng(1)))
    assert built == []  # the first update was applied from the factors, checked by their bound
    # A gradient that overflows while the loss stays finite: a huge input in a column whose weights
    # are 0 leaves the outputs alone; its bound is far above overflow, so the check builds the product.
    model = large_model(np.random.default_rng(7))
    model.layers[0].weight[7] = 0.0
    x = rng.normal(size=(16, 300)).astype(np.float32)
    x[:, 7] = 0.0  # so the first update leaves those weights at 0 too
    x[10, 7] = 1e30
    optimizer = SGD(momentum=0.9)
    problem = Problem(model=model, loss=CrossEntropy(), optimizer=optimizer, schedule=Constant(0.01),
                      x=x, y=rng.integers(0, 3, size=16), batch_size=8, shuffle=False)
    after_first: dict[str, np.ndarray] = {}

    def keep(batch: int, value: float) -> None:
        after_first.update({key: value.copy() for key, value in model.parameters().items()})
        after_first.update({key: value.copy() for key, value in optimizer.state_dict().items()})

    position = Position()
    with np.errstate(over="ignore"), pytest.raises(DivergenceError, match=r"update 2: the gradient of layer 0 .* overflowed"):
        list(train_epochs(problem, position, 1, np.random.default_rng(0), np.random.default_rng(1), on_batch=keep))
    assert position.updates == 1 and built  # the bound said nothing: the check built the product
    for key, value in {**model.parameters(), **optimizer.state_dict()}.items():
        np.testing.assert_array_equal(value, after_first[key], err_msg=key)  # the second update was not applied


# ---------------------------------------------------------------- resume
@pytest.mark.parametrize("optimizer", [{"type": "sgd", "learning_rate": 0.05},
                                       {"type": "sgd", "learning_rate": 0.02, "momentum": 0.9, "clip_norm": 0.5},
                                       {"type": "rmsprop", "learning_rate": 0.01}],
                         ids=["sgd", "momentum clipped", "rmsprop"])
def test_minibatch_resume_on_the_gemm_path_is_bit_identical(tmp_path, monkeypatch, optimizer) -> None:
    monkeypatch.setattr(blas, "MIN_SIZE", 0)  # the tiny model's arrays take the BLAS path
    made: list[BatchProduct] = []
    original = BatchProduct.__init__
    monkeypatch.setattr(BatchProduct, "__init__", lambda self, *a, **k: made.append(self) or original(self, *a, **k))
    config = load_config(tiny_config(training__epochs=3, optimizer=optimizer))
    resume_is_bit_identical(config, tmp_path, 8)  # stopped mid-epoch 2 (6 updates an epoch)
    assert made  # the gradients came as batch products
