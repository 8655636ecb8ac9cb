"""Finite-difference checks (float64) of every layer type, activation and loss; dtype preservation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from image_cases import IMAGE_LAYER_CASES

from sgdcli.analysis.gradcheck import (
    TensorCheck,
    check_gradients,
    check_layer,
    check_loss,
    check_model,
    numeric_gradient,
)
from sgdcli.engine.activations import Identity, LeakyReLU, ReLU, Sigmoid, Tanh
from sgdcli.engine.init import glorot_normal, he_normal
from sgdcli.engine.layers import ActivationLayer, Dense, Dropout
from sgdcli.engine.losses import (
    BinaryCrossEntropy,
    CrossEntropy,
    Huber,
    MeanAbsoluteError,
    MeanSquaredError,
)
from sgdcli.engine.model import Sequential
from sgdcli.engine.optimizers import SGD, Adam


def assert_all_passed(checks: list[TensorCheck]) -> None:
    assert checks, "no tensors were checked"
    failed = [str(check) for check in checks if not check.passed]
    assert not failed, "\n".join(failed)


def away_from_zero(rng: np.random.Generator, shape: tuple[int, ...], low: float = 0.1, high: float = 2.0) -> np.ndarray:
    """Random values with |v| in [low, high]: keeps finite differences away from kinks at 0."""
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(low, high, size=shape)


# --- cases keyed by the config names ------------------------------------------------------------

ACTIVATION_CASES = {
    "relu": ReLU,
    "leaky_relu": lambda: LeakyReLU(negative_slope=0.1),
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "identity": Identity,
}


def _dense_case(rng: np.random.Generator):
    layer = Dense.create(4, 3, Tanh(), glorot_normal, rng, np.float64)
    layer.params["bias"][:] = rng.normal(size=3)  # a zero bias would hide a wrong bias gradient
    return layer, rng.normal(size=(5, 4)), False


def _dropout_case(rng: np.random.Generator):
    # Training mode: check_layer re-creates the forward rng from one seed, so the mask is fixed.
    return Dropout(0.4), rng.normal(size=(6, 5)), True


def _activation_case(rng: np.random.Generator):
    return ActivationLayer(Sigmoid()), rng.normal(size=(5, 4)), False


LAYER_CASES = {
    "dense": _dense_case,
    "dropout": _dropout_case,
    "activation": _activation_case,
    **IMAGE_LAYER_CASES,
}


def _huber_case(rng: np.random.Generator):
    # Differences on both sides of delta = 1, but none within 0.1 of the kinks at +-delta.
    magnitudes = np.concatenate([rng.uniform(0.1, 0.9, size=6), rng.uniform(1.1, 3.0, size=6)])
    diff = (rng.choice([-1.0, 1.0], size=12) * magnitudes).reshape(4, 3)
    target = rng.normal(size=(4, 3))
    return Huber(delta=1.0), target + diff, target


def _mae_case(rng: np.random.Generator):
    # pred = target +- [0.2, 1]: no difference near the kink at 0.
    target = rng.normal(size=(5, 3))
    return MeanAbsoluteError(), target + away_from_zero(rng, target.shape, 0.2, 1.0), target


def _soft_labels(rng: np.random.Generator, n: int, classes: int) -> np.ndarray:
    weights = rng.uniform(0.1, 1.0, size=(n, classes))
    return weights / weights.sum(axis=1, keepdims=True)


LOSS_CASES = {
    "mse": {
        "matrix": lambda rng: (MeanSquaredError(), rng.normal(size=(5, 3)), rng.normal(size=(5, 3))),
        "column_vs_vector": lambda rng: (MeanSquaredError(), rng.normal(size=(6, 1)), rng.normal(size=6)),
    },
    "mae": {"matrix": _mae_case},
    "huber": {"both_regions": _huber_case},
    "binary_cross_entropy": {
        "column_vs_vector": lambda rng: (BinaryCrossEntropy(), rng.normal(size=(6, 1)) * 2, rng.integers(0, 2, size=6).astype(float)),
        "multi_label": lambda rng: (BinaryCrossEntropy(), rng.normal(size=(4, 3)) * 2, rng.integers(0, 2, size=(4, 3)).astype(float)),
    },
    "cross_entropy": {
        "int_labels": lambda rng: (CrossEntropy(), rng.normal(size=(6, 4)) * 2, rng.integers(0, 4, size=6)),
        "one_hot": lambda rng: (CrossEntropy(), rng.normal(size=(6, 4)) * 2, np.eye(4)[rng.integers(0, 4, size=6)]),
        "probabilities": lambda rng: (CrossEntropy(), rng.normal(size=(6, 4)) * 2, _soft_labels(rng, 6, 4)),
        # Rows not summing to 1 (e.g. per-sample weights): gradient softmax * sum(t) - t, not softmax - t.
        "unnormalized": lambda rng: (CrossEntropy(), rng.normal(size=(6, 4)) * 2, rng.uniform(0, 2, size=(6, 4))),
    },
}

LOSS_VARIANTS = [(name, variant) for name, variants in LOSS_CASES.items() for variant in variants]
LOSS_IDS = [f"{name}-{variant}" for name, variant in LOSS_VARIANTS]


# --- gradient checks ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", LAYER_CASES)
def test_layer_gradients(name: str) -> None:
    rng = np.random.default_rng(1)
    layer, x, training = LAYER_CASES[name](rng)
    checks = check_layer(layer, x, rng=rng, training=training)
    assert {check.name for check in checks} == {"x", *layer.params}
    assert_all_passed(checks)


@pytest.mark.parametrize("name", ACTIVATION_CASES)
def test_dense_gradients_with_each_activation(name: str) -> None:
    rng = np.random.default_rng(2)
    layer = Dense.create(4, 3, ACTIVATION_CASES[name](), glorot_normal, rng, np.float64)
    layer.params["bias"][:] = rng.normal(size=3)
    x = rng.normal(size=(5, 4))
    # Precondition: no pre-activation within 1e-3 of the ReLU kink, so the check is meaningful.
    assert np.abs(x @ layer.weight + layer.bias).min() > 1e-3
    assert_all_passed(check_layer(layer, x, rng=rng))


@pytest.mark.parametrize("name", ACTIVATION_CASES)
def test_standalone_activation_gradients(name: str) -> None:
    rng = np.random.default_rng(3)
    checks = check_layer(ActivationLayer(ACTIVATION_CASES[name]()), away_from_zero(rng, (4, 5)), rng=rng)
    assert [check.name for check in checks] == ["x"]
    assert_all_passed(checks)


@pytest.mark.parametrize(("name", "variant"), LOSS_VARIANTS, ids=LOSS_IDS)
def test_loss_gradients(name: str, variant: str) -> None:
    rng = np.random.default_rng(4)
    loss, pred, target = LOSS_CASES[name][variant](rng)
    assert_all_passed(check_loss(loss, pred, target))


@pytest.mark.parametrize(("name", "variant"), LOSS_VARIANTS, ids=LOSS_IDS)
def test_loss_value_matches_value_and_grad(name: str, variant: str) -> None:
    loss, pred, target = LOSS_CASES[name][variant](np.random.default_rng(5))
    value, grad = loss.value_and_grad(pred, target)
    assert isinstance(value, float) and isinstance(loss.value(pred, target), float)
    assert value == pytest.approx(loss.value(pred, target), rel=1e-12)
    assert grad.shape == pred.shape


def test_whole_network_gradients_with_dropout_in_training() -> None:
    rng = np.random.default_rng(6)
    model = Sequential([
        Dense.create(5, 8, ReLU(), he_normal, rng, np.float64),
        Dropout(0.25),
        Dense.create(8, 3, Identity(), glorot_normal, rng, np.float64),
    ])
    model.layers[0].params["bias"][:] = rng.normal(size=8) * 0.5
    x, labels = rng.normal(size=(7, 5)), rng.integers(0, 3, size=7)
    hidden = x @ model.layers[0].weight + model.layers[0].bias
    assert np.abs(hidden).min() > 1e-3  # away from the ReLU kink
    checks = check_model(model, CrossEntropy(), x, labels, training=True, seed=11)
    assert [check.name for check in checks] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert_all_passed(checks)


def test_known_simple_gradient() -> None:
    # f(w) = sum(w^2 * c): df/dw = 2 c w, e.g. w = [1, -2], c = [3, 0.5] -> [6, -2].
    w, c = np.array([1.0, -2.0]), np.array([3.0, 0.5])
    np.testing.assert_allclose(numeric_gradient(lambda: float(np.sum(w * w * c)), w), [6.0, -2.0], rtol=1e-8)


# --- the checker itself -------------------------------------------------------------------------


class _SlightlyWrongDense(Dense):
    """A Dense layer whose weight gradient is 0.1% too large."""

    def backward(self, dout, cache, *, need_dx=True):
        dx, grads = super().backward(dout, cache, need_dx=need_dx)
        return dx, {**grads, "weight": grads["weight"] * 1.001}


@pytest.mark.parametrize("max_entries", [None, 4])
def test_checker_fails_a_gradient_off_by_a_tenth_of_a_percent(max_entries: int | None) -> None:
    rng = np.random.default_rng(7)
    correct = Dense.create(4, 3, Tanh(), glorot_normal, rng, np.float64)
    wrong = _SlightlyWrongDense(correct.weight.copy(), rng.normal(size=3), Tanh())
    x = rng.normal(size=(5, 4))
    checks = {check.name: check for check in check_layer(wrong, x, rng=rng, max_entries=max_entries)}
    assert not checks["weight"].passed
    assert checks["weight"].max_rel_error > 1e-4  # 0.1% off is relative error ~5e-4
    assert checks["x"].passed and checks["bias"].passed
    message = str(checks["weight"])
    assert "weight" in message and "FAILED" in message and str(checks["weight"].worst_index) in message
    assert f"{checks['weight'].analytic:.10g}" in message and f"{checks['weight'].numeric:.10g}" in message


def test_directional_check_catches_an_error_outside_the_sampled_entries() -> None:
    # f(w) = sum(c * w^2), gradient 2 c w, corrupted at one entry the random subset skips.
    size, max_entries, seed = 20, 5, 3
    sampled = set(np.random.default_rng(seed).choice(size, size=max_entries, replace=False).tolist())
    bad = next(i for i in range(size) if i not in sampled)
    init = np.random.default_rng(0)
    w, c = init.normal(size=size), init.uniform(1, 2, size=size)
    grad = 2 * c * w
    grad[bad] += 0.5
    checks = check_gradients(lambda: float(np.sum(c * w * w)), {"w": w}, {"w": grad}, max_entries=max_entries, rng=np.random.default_rng(seed))
    by_name = {check.name: check for check in checks}
    assert by_name["w"].passed and by_name["w"].checked == max_entries
    assert not by_name["w (random direction)"].passed


def test_numeric_gradient_restores_the_array_exactly() -> None:
    w = np.random.default_rng(8).normal(size=(3, 4))
    before = w.copy()
    numeric_gradient(lambda: float(np.sum(np.sin(w))), w)
    numeric_gradient(lambda: float(np.sum(np.sin(w))), w, indices=[(0, 1), 5])
    assert np.array_equal(w, before)  # bitwise, not approximately


def test_numeric_gradient_restores_the_array_when_f_raises() -> None:
    w = np.array([0.1, 0.2])
    before = w.copy()

    def explode() -> float:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        numeric_gradient(explode, w)
    assert np.array_equal(w, before)


def test_checker_refuses_float32() -> None:
    rng = np.random.default_rng(9)
    layer = Dense.create(3, 2, Tanh(), glorot_normal, rng, np.float32)
    with pytest.raises(TypeError, match="float64"):
        check_layer(layer, rng.normal(size=(2, 3)).astype(np.float32), rng=rng)
    with pytest.raises(TypeError, match="float64"):
        numeric_gradient(lambda: 0.0, np.zeros(3, dtype=np.float32))


# --- numerical stability and no mutation ----------------------------------------------------------


def test_sigmoid_and_logit_losses_are_stable_for_huge_inputs() -> None:
    z = np.array([[-1000.0, -100.5, 0.0, 100.5, 1000.0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        a = Sigmoid().forward(z)
        bce, bce_grad = BinaryCrossEntropy().value_and_grad(z.T, np.array([1.0, 1.0, 0.0, 0.0, 0.0]))
        ce, ce_grad = CrossEntropy().value_and_grad(z, np.array([0]))
    np.testing.assert_allclose(a, [[0.0, np.exp(-100.5), 0.5, 1.0, 1.0]], rtol=1e-12, atol=0)
    # BCE per element softplus(x) - x y, every label confidently wrong except the middle one:
    # [0 + 1000, 0 + 100.5, log 2, 100.5 - 0, 1000 - 0] (softplus(-100.5) ~ 4e-44) -> mean (2201 + log 2) / 5.
    assert bce == pytest.approx((2201 + np.log(2)) / 5, rel=1e-12)
    # CE: label 0 has logit -1000, 2000 below the max: loss = 2000 (the other terms vanish).
    assert ce == pytest.approx(2000.0)
    assert np.all(np.isfinite(bce_grad)) and np.all(np.isfinite(ce_grad))


@pytest.mark.parametrize("name", ACTIVATION_CASES)
def test_backward_does_not_mutate_dout(name: str) -> None:
    rng = np.random.default_rng(10)
    x = away_from_zero(rng, (4, 3))
    layers = [
        ActivationLayer(ACTIVATION_CASES[name]()),
        Dense.create(3, 3, ACTIVATION_CASES[name](), glorot_normal, rng, np.float64),
        Dropout(0.5),
    ]
    for layer in layers:
        out, cache = layer.forward(x, training=True, rng=np.random.default_rng(0))
        dout = rng.normal(size=out.shape)
        before = dout.copy()
        layer.backward(dout, cache)
        assert np.array_equal(dout, before), repr(layer)


# --- loss input validation ------------------------------------------------------------------------


def test_cross_entropy_rejects_out_of_range_labels_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match=r"class label 12 out of range for 10 outputs \(expected 0\.\.9\)"):
        CrossEntropy().value_and_grad(np.zeros((3, 10)), np.array([1, 12, 3]))
    with pytest.raises(ValueError, match=r"class label -1 out of range"):
        CrossEntropy().value(np.zeros((3, 10)), np.array([1, -1, 3]))


@pytest.mark.parametrize(
    ("loss", "pred", "target", "expected"),
    [
        (CrossEntropy(), np.zeros((4, 3)), np.zeros(5, dtype=int), r"expected target of shape \(4,\).*got \(5,\)"),
        (CrossEntropy(), np.zeros((4, 3)), np.array([0.0, 1.5, 2.0, 1.0]), "integer class labels"),
        (CrossEntropy(), np.zeros(4), np.zeros(4, dtype=int), r"logits of shape \(N, C\)"),
        (MeanSquaredError(), np.zeros((4, 2)), np.zeros(4), r"expected target of shape \(4, 2\).*got \(4,\)"),
        (Huber(), np.zeros((4, 1)), np.zeros(3), r"expected target of shape \(4, 1\) or \(4,\).*got \(3,\)"),
        (BinaryCrossEntropy(), np.zeros((4, 1)), np.array([0.0, 1.0, 2.0, 1.0]), r"targets in \[0, 1\].*got 2"),
        (MeanAbsoluteError(), np.zeros((0, 1)), np.zeros(0), "non-empty batch"),
    ],
)
def test_losses_reject_bad_targets(loss, pred, target, expected) -> None:
    with pytest.raises(ValueError, match=expected):
        loss.value_and_grad(pred, target)
    with pytest.raises(ValueError, match=expected):
        loss.value(pred, target)


def test_cross_entropy_accepts_whole_number_float_labels() -> None:
    logits = np.random.default_rng(16).normal(size=(3, 4))
    assert CrossEntropy().value(logits, np.array([0.0, 3.0, 1.0])) == CrossEntropy().value(logits, np.array([0, 3, 1]))


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64])
def test_cross_entropy_takes_labels_of_every_integer_dtype(dtype) -> None:
    # The label positions are worked out in the flat (N * C) logits: an unsigned 64-bit label plus a
    # signed offset must stay an integer index. Reference: the same labels as Python ints.
    logits = np.random.default_rng(17).normal(size=(5, 4)).astype(np.float32)
    labels = [0, 3, 2, 1, 3]
    value, grad = CrossEntropy().value_and_grad(logits, np.array(labels, dtype=dtype))
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert value == pytest.approx(-log_softmax[np.arange(5), labels].mean(), rel=1e-6)
    expected = np.exp(log_softmax)
    expected[np.arange(5), labels] -= 1.0
    np.testing.assert_allclose(grad, expected / 5, rtol=1e-5, atol=1e-7)
    assert CrossEntropy().value(logits, np.array(labels, dtype=dtype)) == pytest.approx(value, rel=1e-6)


@pytest.mark.parametrize("layout", ["Fortran order", "a transposed view"])
def test_cross_entropy_gives_the_same_gradient_whatever_the_logits_layout(layout) -> None:
    # The labels are found in the flattened logits: that must be a view of the gradient, also when the
    # logits handed in are not C-contiguous (before the fix the -1/N at each label went into a copy).
    logits = np.random.default_rng(18).normal(size=(4, 3))
    labels = np.array([0, 2, 1, 2])
    other = np.asfortranarray(logits) if layout == "Fortran order" else logits.T.copy().T
    assert not other.flags.c_contiguous
    value, grad = CrossEntropy().value_and_grad(logits, labels)
    other_value, other_grad = CrossEntropy().value_and_grad(other, labels)
    assert other_value == value and np.array_equal(other_grad, grad)
    np.testing.assert_allclose(other_grad.sum(axis=1), 0.0, atol=1e-15)  # softmax minus one-hot: rows sum to 0


@pytest.mark.parametrize(("dtype", "classes"), [(np.int8, 300), (np.int16, 70_000), (np.int8, 128), (np.int32, 10)])
def test_cross_entropy_rejects_negative_labels_of_narrow_types_with_many_classes(dtype, classes) -> None:
    # Read as unsigned, an int8 -1 is 255: below 300 classes, so the one-reduction range check alone let
    # it through (it then indexed another sample's logits).
    logits = np.zeros((3, classes), dtype=np.float32)
    labels = np.array([-1, 5, 7], dtype=dtype)
    with pytest.raises(ValueError, match=rf"class label -1 out of range for {classes} outputs"):
        CrossEntropy().value_and_grad(logits, labels)
    with pytest.raises(ValueError, match=r"class label -1 out of range"):
        CrossEntropy().value(logits, labels)


def test_regression_losses_against_hand_values() -> None:
    pred, target = np.array([[0.5], [3.0], [-1.0]]), np.array([0.0, 1.0, -1.5])
    # d = [0.5, 2, 0.5]; MSE = (0.25 + 4 + 0.25) / 3 = 1.5, grad 2 d / 3 = [1/3, 4/3, 1/3]
    value, grad = MeanSquaredError().value_and_grad(pred, target)
    assert value == pytest.approx(1.5)
    np.testing.assert_allclose(grad, [[1 / 3], [4 / 3], [1 / 3]])
    # MAE = (0.5 + 2 + 0.5) / 3 = 1, grad sign(d) / 3
    value, grad = MeanAbsoluteError().value_and_grad(pred, target)
    assert value == pytest.approx(1.0)
    np.testing.assert_allclose(grad, [[1 / 3], [1 / 3], [1 / 3]])
    # Huber(1): [0.125, 1 * (2 - 0.5) = 1.5, 0.125] -> mean 1.75 / 3; grad clip(d, -1, 1) / 3
    value, grad = Huber(1.0).value_and_grad(pred, target)
    assert value == pytest.approx(1.75 / 3)
    np.testing.assert_allclose(grad, [[0.5 / 3], [1 / 3], [0.5 / 3]])
    # MAE subgradient at d = 0 is 0.
    assert MeanAbsoluteError().value_and_grad(np.array([1.0, 2.0]), np.array([1.0, 0.0]))[1].tolist() == [0.0, 0.5]


# --- dtype preservation ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ACTIVATION_CASES)
def test_float32_stays_float32_through_dense_layers(name: str) -> None:
    rng = np.random.default_rng(11)
    layer = Dense.create(4, 3, ACTIVATION_CASES[name](), glorot_normal, rng, np.float32)
    x = rng.normal(size=(5, 4)).astype(np.float32)
    out, cache = layer.forward(x)
    dx, grads = layer.backward(np.ones_like(out), cache)
    assert out.dtype == dx.dtype == np.float32
    assert {key: grad.dtype for key, grad in grads.items()} == {"weight": np.float32, "bias": np.float32}
    act_out, act_cache = ActivationLayer(ACTIVATION_CASES[name]()).forward(x)
    assert act_out.dtype == np.float32
    assert ActivationLayer(ACTIVATION_CASES[name]()).backward(np.ones_like(act_out), act_cache)[0].dtype == np.float32


@pytest.mark.parametrize(("name", "variant"), LOSS_VARIANTS, ids=LOSS_IDS)
def test_float32_stays_float32_through_losses(name: str, variant: str) -> None:
    loss, pred, target = LOSS_CASES[name][variant](np.random.default_rng(12))
    # The float64 target must not drag the float32 gradient up to float64.
    value, grad = loss.value_and_grad(pred.astype(np.float32), target)
    assert grad.dtype == np.float32
    assert type(value) is float and type(loss.value(pred.astype(np.float32), target)) is float


def test_float32_stays_float32_through_a_training_step() -> None:
    rng = np.random.default_rng(13)
    model = Sequential([
        Dense.create(4, 6, Sigmoid(), he_normal, rng, np.float32),
        Dropout(0.5),
        Dense.create(6, 3, Identity(), glorot_normal, rng, np.float32),
    ])
    x = rng.normal(size=(8, 4))  # float64 data: the model converts it to its own dtype
    out, caches = model.forward(x, training=True, rng=rng)
    assert out.dtype == np.float32
    _, dout = CrossEntropy().value_and_grad(out, rng.integers(0, 3, size=8))
    grads = model.backward(dout, caches)
    assert all(grad.dtype == np.float32 for grad in grads.values())
    for optimizer in (SGD(momentum=0.9, weight_decay=1e-3), Adam()):
        optimizer.step(model.parameters(), grads, np.float64(0.01))  # an np.float64 step size too
        assert all(param.dtype == np.float32 for param in model.parameters().values())
        state = optimizer.state_dict()
        assert all(array.dtype == np.float32 for key, array in state.items() if key != "iterations")
    assert model.predict(x, batch_size=3).dtype == np.float32


def test_dropout_mask_is_the_same_for_float32_and_float64() -> None:
    x = np.random.default_rng(14).normal(size=(10, 10))
    out64, _ = Dropout(0.5).forward(x, training=True, rng=np.random.default_rng(0))
    out32, _ = Dropout(0.5).forward(x.astype(np.float32), training=True, rng=np.random.default_rng(0))
    assert out32.dtype == np.float32
    assert np.array_equal(out64 == 0, out32 == 0)
    np.testing.assert_allclose(out32, out64, rtol=1e-6)


def test_dropout_scales_kept_units_and_is_identity_in_eval() -> None:
    x = np.ones((200, 50))
    out, _ = Dropout(0.2).forward(x, training=True, rng=np.random.default_rng(15))
    # Inverted dropout: kept entries are 1 / (1 - 0.2) = 1.25, dropped ones 0; ~80% kept.
    assert set(np.unique(out).tolist()) == {0.0, 1.25}
    assert 0.77 < np.mean(out > 0) < 0.83
    assert Dropout(0.2).forward(x, training=False)[0] is x
    with pytest.raises(ValueError, match="rng"):
        Dropout(0.2).forward(x, training=True)
