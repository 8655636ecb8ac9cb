"""Sequential: parameter names, loading, prediction in batches, backward keys, re-entrancy; initialisers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sgdcli.engine.activations import Identity, ReLU, Tanh
from sgdcli.engine.init import (
    glorot_normal,
    glorot_uniform,
    he_normal,
    he_uniform,
    small_normal,
)
from sgdcli.engine.layers import ActivationLayer, Dense, Dropout
from sgdcli.engine.losses import CrossEntropy
from sgdcli.engine.model import ParameterMismatch, Sequential


def make_model(dtype=np.float32, seed: int = 0) -> Sequential:
    rng = np.random.default_rng(seed)
    return Sequential([
        Dense.create(4, 5, ReLU(), he_normal, rng, dtype),
        Dropout(0.5),
        Dense.create(5, 3, Identity(), glorot_uniform, rng, dtype),
        ActivationLayer(Tanh()),
    ])


def test_parameter_keys_are_layer_index_and_name() -> None:
    model = make_model()
    params = model.parameters()
    assert list(params) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    # The values are the layers' own arrays, so in-place optimizer updates reach the layers.
    assert params["0.weight"] is model.layers[0].params["weight"]
    assert params["2.bias"] is model.layers[2].params["bias"]
    assert [params[key].shape for key in params] == [(4, 5), (5,), (5, 3), (3,)]
    assert model.num_parameters() == 4 * 5 + 5 + 5 * 3 + 3  # 43
    assert model.dtype == np.float32
    assert make_model(np.float64).dtype == np.float64
    assert Sequential([Dropout(0.1)]).dtype == np.float32


def test_mixed_parameter_dtypes_are_rejected() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="dtype"):
        Sequential([
            Dense.create(2, 2, ReLU(), he_normal, rng, np.float32),
            Dense.create(2, 2, ReLU(), he_normal, rng, np.float64),
        ])


def test_load_parameters_copies_into_the_existing_arrays_with_the_model_dtype() -> None:
    model, source = make_model(np.float32, seed=0), make_model(np.float64, seed=1)
    arrays = model.parameters()
    model.load_parameters(source.parameters())
    for key, array in model.parameters().items():
        assert array is arrays[key] and array.dtype == np.float32
        np.testing.assert_array_equal(array, source.parameters()[key].astype(np.float32))


def test_load_parameters_reports_every_mismatch_and_changes_nothing() -> None:
    model = make_model()
    before = {key: value.copy() for key, value in model.parameters().items()}
    values = {key: np.zeros_like(value) for key, value in model.parameters().items()}
    del values["0.bias"]
    values["3.weight"] = np.zeros((3, 3))
    values["2.weight"] = np.zeros((5, 4))
    with pytest.raises(ParameterMismatch) as caught:
        model.load_parameters(values)
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.missing == ["0.bias"]
    assert error.unexpected == ["3.weight"]
    assert error.wrong_shape == [("2.weight", (5, 3), (5, 4))]
    message = str(error)
    assert "missing 0.bias" in message and "unexpected 3.weight" in message
    assert "2.weight (expected (5, 3), got (5, 4))" in message
    for key, value in model.parameters().items():
        np.testing.assert_array_equal(value, before[key])


def test_load_parameters_refuses_uncastable_values_before_copying_any() -> None:
    model = make_model()
    before = {key: value.copy() for key, value in model.parameters().items()}
    values = {key: np.ones_like(value) for key, value in model.parameters().items()}
    values["2.bias"] = values["2.bias"].astype(np.complex64)  # last key: the others would be copied first
    with pytest.raises(ParameterMismatch, match="2.bias .expected float, got complex64"):
        model.load_parameters(values)
    for key, value in model.parameters().items():
        np.testing.assert_array_equal(value, before[key])


@pytest.mark.parametrize("dtype", [np.int64, np.bool_, np.uint8])
def test_load_parameters_refuses_weights_that_are_not_floating_point(dtype) -> None:
    # int64 or bool weights cast silently to float; no trained model has them (issue 11).
    model = make_model()
    before = {key: value.copy() for key, value in model.parameters().items()}
    values = {key: np.ones_like(value) for key, value in model.parameters().items()}
    values["0.weight"] = values["0.weight"].astype(dtype)
    with pytest.raises(ParameterMismatch, match=f"0.weight .expected float, got {np.dtype(dtype)}"):
        model.load_parameters(values)
    for key, value in model.parameters().items():
        np.testing.assert_array_equal(value, before[key])


@pytest.mark.parametrize("batch_size", [1, 3, 7, 10, 100])
def test_predict_in_batches_equals_unbatched(batch_size: int) -> None:
    model = make_model(np.float64)
    x = np.random.default_rng(1).normal(size=(10, 4))
    whole = model.predict(x)
    assert whole.shape == (10, 3)
    np.testing.assert_allclose(model.predict(x, batch_size=batch_size), whole, rtol=1e-12)
    # Evaluation mode: dropout is off, so predict equals a non-training forward.
    np.testing.assert_array_equal(whole, model.forward(x)[0])


def test_predict_rejects_a_non_positive_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        make_model().predict(np.zeros((2, 4)), batch_size=0)


def test_forward_converts_inputs_to_the_model_dtype() -> None:
    model = make_model(np.float32)
    out, _ = model.forward(np.arange(8).reshape(2, 4))  # int64 input
    assert out.dtype == np.float32


def test_backward_keys_and_shapes_equal_the_parameters() -> None:
    model = make_model(np.float64)
    rng = np.random.default_rng(2)
    out, caches = model.forward(rng.normal(size=(6, 4)), training=True, rng=rng)
    _, dout = CrossEntropy().value_and_grad(out, rng.integers(0, 3, size=6))
    grads = model.backward(dout, caches)
    assert list(grads) == list(model.parameters())
    assert all(grads[key].shape == value.shape for key, value in model.parameters().items())


@pytest.mark.parametrize("kind", ["mlp", "mlp, one sample", "cnn with batch norm"])
def test_backward_into_buffers_gives_backwards_bits_in_those_buffers(kind) -> None:
    # data-parallel training computes gradients straight into memory the processes share: dense layers
    # write their products there, other layers (conv, fused stages) are copied; the same bits either way
    from sgdcli.engine.conv import Conv2d
    from sgdcli.engine.layers import Flatten
    from sgdcli.engine.normalization import BatchNorm
    from sgdcli.engine.pooling import MaxPool2d

    rng = np.random.default_rng(4)
    if kind == "cnn with batch norm":
        model = Sequential([Conv2d.create(1, 3, (3, 3), ReLU(), he_normal, rng, np.float32), BatchNorm.create(3, np.float32),
                            MaxPool2d((2, 2)), Flatten(), Dense.create(3 * 3 * 3, 4, ReLU(), he_normal, rng, np.float32),
                            Dense.create(4, 3, Identity(), glorot_uniform, rng, np.float32)], input_shape=(1, 8, 8))
        x = rng.normal(size=(5, 1, 8, 8)).astype(np.float32)
    else:
        model, x = make_model(np.float32), rng.normal(size=(1 if "one" in kind else 6, 4)).astype(np.float32)
    out, caches = model.forward(x, training=True, rng=np.random.default_rng(5))
    _, dout = CrossEntropy().value_and_grad(out, rng.integers(0, 3, size=len(x)))
    expected = model.backward(dout, caches)
    flat = np.full(model.num_parameters(), np.nan, np.float32)
    into, at = {}, 0
    for key, value in model.parameters().items():
        into[key], at = flat[at : at + value.size].reshape(value.shape), at + value.size
    grads = model.backward(dout, caches, into=into)
    assert all(grads[key] is into[key] for key in into)
    assert all(np.array_equal(into[key], value) for key, value in expected.items())
    assert not np.isnan(flat).any()  # every value written


def test_backward_skips_dx_of_the_first_parameter_layer() -> None:
    calls = []

    class RecordingDense(Dense):
        def backward(self, dout, cache, *, need_dx=True):
            calls.append(need_dx)
            return super().backward(dout, cache, need_dx=need_dx)

    rng = np.random.default_rng(3)
    first = Dense.create(3, 4, ReLU(), he_normal, rng, np.float64)
    second = Dense.create(4, 2, Identity(), he_normal, rng, np.float64)
    model = Sequential([
        Dropout(0.2),  # below the first parameter layer: never visited by backward
        RecordingDense(first.weight, first.bias, ReLU()),
        RecordingDense(second.weight, second.bias, Identity()),
    ])
    out, caches = model.forward(rng.normal(size=(5, 3)), training=True, rng=rng)
    model.backward(np.ones_like(out), caches)
    assert calls == [True, False]  # layer 2 passes dx down; layer 1 computes none


def test_forward_is_re_entrant() -> None:
    model = make_model(np.float64)
    rng = np.random.default_rng(4)
    x1, x2 = rng.normal(size=(5, 4)), rng.normal(size=(3, 4))
    dout = rng.normal(size=(5, 3))
    out1, caches1 = model.forward(x1, training=True, rng=np.random.default_rng(7))
    reference = model.backward(dout, caches1)
    # A second forward on other data in between must not disturb the first one's backward.
    out1_again, caches1_again = model.forward(x1, training=True, rng=np.random.default_rng(7))
    model.forward(x2, training=True, rng=np.random.default_rng(8))
    grads = model.backward(dout, caches1_again)
    np.testing.assert_array_equal(out1, out1_again)
    for key in reference:
        np.testing.assert_array_equal(grads[key], reference[key])


def test_dropout_in_a_model_needs_an_rng_for_training() -> None:
    with pytest.raises(ValueError, match="rng"):
        make_model().forward(np.zeros((2, 4)), training=True)


# --- initialisers -------------------------------------------------------------------------------

INITIALISERS = {
    # name: (function, expected std for fan_in 400, fan_out 200)
    "glorot_uniform": (glorot_uniform, math.sqrt(6 / 600) / math.sqrt(3)),  # U(-l, l) has std l / sqrt(3)
    "glorot_normal": (glorot_normal, math.sqrt(2 / 600)),
    "he_uniform": (he_uniform, math.sqrt(6 / 400) / math.sqrt(3)),
    "he_normal": (he_normal, math.sqrt(2 / 400)),
    "small_normal": (small_normal, 0.01),
}


@pytest.mark.parametrize("name", INITIALISERS)
def test_initialisers_have_the_documented_scale_and_dtype(name: str) -> None:
    init, std = INITIALISERS[name]
    w64 = init(np.random.default_rng(0), 400, 200, np.float64)
    w32 = init(np.random.default_rng(0), 400, 200, np.float32)
    assert w64.shape == (400, 200) and w64.dtype == np.float64 and w32.dtype == np.float32
    # Same seed, same starting point in either precision.
    np.testing.assert_array_equal(w32, w64.astype(np.float32))
    assert np.std(w64) == pytest.approx(std, rel=0.02)  # 80,000 draws
    assert abs(np.mean(w64)) < 0.02 * std * 10
    if name.endswith("uniform"):
        assert np.abs(w64).max() <= std * math.sqrt(3)


def test_dense_create_uses_the_initialiser_and_a_zero_bias() -> None:
    layer = Dense.create(3, 2, ReLU(), he_normal, np.random.default_rng(5), np.float32)
    np.testing.assert_array_equal(layer.weight, he_normal(np.random.default_rng(5), 3, 2, np.float32))
    assert layer.bias.dtype == np.float32 and not layer.bias.any()


def test_dense_rejects_inputs_of_the_wrong_width() -> None:
    layer = Dense.create(3, 2, ReLU(), he_normal, np.random.default_rng(6), np.float32)
    with pytest.raises(ValueError, match=r"\(N, 3\), got shape \(4, 5\)"):
        layer.forward(np.zeros((4, 5), dtype=np.float32))
