"""Image layers against hand-computed tiny examples, against PyTorch when installed, and the
facts the speed rests on (float32 throughout, dout never written, layouts any)."""

from __future__ import annotations

import numpy as np
import pytest
from image_cases import IMAGE_LAYER_CASES

from sgdcli.analysis.gradcheck import check_layer, check_model
from sgdcli.engine.activations import Identity, ReLU
from sgdcli.engine.conv import FEW_CHANNELS, Conv2d, im2col, im2col_transposed, input_gradient
from sgdcli.engine.init import glorot_uniform, he_uniform
from sgdcli.engine.layers import Dense, Dropout, Flatten
from sgdcli.engine.losses import CrossEntropy
from sgdcli.engine.model import ParameterMismatch, Sequential
from sgdcli.engine.normalization import BatchNorm
from sgdcli.engine.optimizers import Adam
from sgdcli.engine.pooling import AvgPool2d, GlobalAvgPool2d, MaxPool2d

X3 = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)  # [[1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_conv2d_by_hand() -> None:
    # kernel [[1, 2], [3, 4]], bias 0.5: y[p, q] = x[p,q] + 2 x[p,q+1] + 3 x[p+1,q] + 4 x[p+1,q+1] + 0.5
    # y[0,0] = 1 + 4 + 12 + 20 = 37, y[0,1] = 2 + 6 + 15 + 24 = 47, y[1,0] = 67, y[1,1] = 77 (+ 0.5)
    layer = Conv2d(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]), np.array([0.5]), Identity())
    out, cache = layer.forward(X3)
    np.testing.assert_array_equal(out, [[[[37.5, 47.5], [67.5, 77.5]]]])
    dx, grads = layer.backward(np.ones((1, 1, 2, 2)), cache)
    # dweight[i, j] = sum of the window entries at offset (i, j): 1+2+4+5, 2+3+5+6, 4+5+7+8, 5+6+8+9
    np.testing.assert_array_equal(grads["weight"], [[[[12.0, 16.0], [24.0, 28.0]]]])
    np.testing.assert_array_equal(grads["bias"], [4.0])
    # dx: each pixel gets the sum of the kernel entries that touched it
    np.testing.assert_array_equal(dx, [[[[1.0, 3.0, 2.0], [4.0, 10.0, 6.0], [3.0, 7.0, 4.0]]]])


def test_conv2d_padding_and_stride_by_hand() -> None:
    # A 1x1 kernel of 2 with padding 1 and stride 2 on 3x3: the padded 5x5 sampled at rows/cols 0, 2, 4
    layer = Conv2d(np.full((1, 1, 1, 1), 2.0), None, Identity(), stride=(2, 2), padding=(1, 1, 1, 1))
    out, cache = layer.forward(X3)
    np.testing.assert_array_equal(out, [[[[0, 0, 0], [0, 10, 0], [0, 0, 0]]]])
    assert "bias" not in layer.params and set(layer.backward(np.ones((1, 1, 3, 3)), cache)[1]) == {"weight"}


def test_input_gradient_is_the_adjoint_of_the_convolution() -> None:
    # <im2col(x) @ W.T, dz> == <x, input_gradient(dz)> for any x and dz: what makes it dx
    rng = np.random.default_rng(0)
    x, weight, stride, padding = rng.normal(size=(2, 3, 7, 6)), rng.normal(size=(4, 3, 3, 2)), (2, 1), (1, 2, 0, 1)
    cols = im2col(x, (3, 2), stride, padding)
    oh, ow = (7 + 3 - 3) // 2 + 1, (6 + 1 - 2) // 1 + 1
    assert cols.shape == (2 * oh * ow, 3 * 2 * 3)
    dz = rng.normal(size=(len(cols), 4))
    forward = cols @ weight.transpose(0, 2, 3, 1).reshape(4, -1).T
    back = input_gradient(dz, weight, x.shape, stride, padding, (oh, ow))
    assert np.sum(forward * dz) == pytest.approx(np.sum(x * back), rel=1e-12)


def test_max_pool_routes_to_the_first_maximum() -> None:
    x = np.array([[[[1.0, 5.0, 2.0, 2.0], [3.0, 0.0, 2.0, 2.0]]]])  # second window: four ties
    out, cache = MaxPool2d((2, 2)).forward(x)
    np.testing.assert_array_equal(out, [[[[5.0, 2.0]]]])
    dx, _ = MaxPool2d((2, 2)).backward(np.array([[[[10.0, 20.0]]]]), cache)
    np.testing.assert_array_equal(dx, [[[[0, 10, 20, 0], [0, 0, 0, 0]]]])


@pytest.mark.parametrize("channels_last", [False, True])
def test_two_by_two_max_pool_routes_every_tie_pattern_to_the_first_maximum(channels_last: bool) -> None:
    # All 3^4 windows over the values {0, 1, 2}: every pattern of ties, against np.argmax (its first maximum).
    windows = np.array(np.meshgrid(*[[0.0, 1.0, 2.0]] * 4, indexing="ij")).reshape(4, -1).T  # (81, 4)
    x = windows.reshape(1, 81, 2, 2)
    if channels_last:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    out, cache = MaxPool2d((2, 2)).forward(x)
    np.testing.assert_array_equal(out.reshape(81), windows.max(axis=1))
    dout = np.arange(1.0, 82.0).reshape(1, 81, 1, 1)
    dx, _ = MaxPool2d((2, 2)).backward(dout, cache)
    expected = np.zeros((81, 4))
    expected[np.arange(81), windows.argmax(axis=1)] = np.arange(1.0, 82.0)
    np.testing.assert_array_equal(dx.reshape(81, 4), expected)


def test_two_by_two_max_pool_gradients() -> None:
    rng = np.random.default_rng(15)  # 5x7: a row and a column in no window; distinct values fix the argmax
    x = rng.permutation(2 * 3 * 5 * 7).reshape(2, 3, 5, 7) * 0.01
    assert all(check.passed for check in check_layer(MaxPool2d((2, 2)), x, rng=rng))


def test_pools_drop_a_partial_window_and_average_by_hand() -> None:
    x = np.arange(15.0).reshape(1, 1, 3, 5)  # 3x5 with 2x2 windows: one row and one column dropped
    out, cache = AvgPool2d((2, 2)).forward(x)
    np.testing.assert_array_equal(out, [[[[(0 + 1 + 5 + 6) / 4, (2 + 3 + 7 + 8) / 4]]]])
    dx, _ = AvgPool2d((2, 2)).backward(np.array([[[[4.0, 8.0]]]]), cache)
    np.testing.assert_array_equal(dx, [[[[1, 1, 2, 2, 0], [1, 1, 2, 2, 0], [0, 0, 0, 0, 0]]]])
    out, cache = GlobalAvgPool2d().forward(x)
    np.testing.assert_array_equal(out, [[7.0]])
    np.testing.assert_array_equal(GlobalAvgPool2d().backward(np.array([[15.0]]), cache)[0], np.ones((1, 1, 3, 5)))


def test_batch_norm_by_hand_and_its_running_statistics() -> None:
    layer = BatchNorm.create(1, np.float64, momentum=0.1, epsilon=1e-5)
    x = np.array([[1.0], [3.0]])  # mean 2, biased var 1, unbiased var 2
    out, _ = layer.forward(x, training=True)
    np.testing.assert_allclose(out, [[-1 / np.sqrt(1 + 1e-5)], [1 / np.sqrt(1 + 1e-5)]], rtol=1e-12)
    # running_mean = 0.9 * 0 + 0.1 * 2 = 0.2; running_var = 0.9 * 1 + 0.1 * 2 = 1.1
    np.testing.assert_allclose(layer.running_mean, [0.2], rtol=1e-12)
    np.testing.assert_allclose(layer.running_var, [1.1], rtol=1e-12)
    evaluated, _ = layer.forward(x)  # evaluation: the running statistics, nothing updated
    np.testing.assert_allclose(evaluated, (x - 0.2) / np.sqrt(1.1 + 1e-5), rtol=1e-12)
    np.testing.assert_allclose(layer.running_mean, [0.2], rtol=1e-12)


def test_batch_norm_gradients_for_dense_outputs_and_in_evaluation() -> None:
    rng = np.random.default_rng(1)
    layer = BatchNorm.create(4, np.float64)
    layer.params["weight"][:] = rng.uniform(0.5, 2, size=4)
    x = rng.normal(size=(6, 4))
    assert all(check.passed for check in check_layer(layer, x, rng=rng, training=True))
    layer.buffers["running_var"][:] = rng.uniform(0.5, 2, size=4)
    layer.buffers["running_mean"][:] = rng.normal(size=4)
    evaluation = check_layer(layer, x, rng=rng, training=False)  # fixed statistics: an affine map
    assert {check.name for check in evaluation} == {"x", "weight", "bias"}
    assert all(check.passed for check in evaluation)


@pytest.mark.parametrize("channels", [2, FEW_CHANNELS + 1])  # transposed columns, then im2col's
@pytest.mark.parametrize("bias", [True, False])
def test_conv_gradients_in_both_column_layouts(channels: int, bias: bool) -> None:
    rng = np.random.default_rng(13)
    layer = Conv2d.create(channels, 3, (3, 2), Identity(), he_uniform, rng, np.float64, stride=(2, 1),
                          padding=(1, 0, 1, 2), bias=bias)
    if bias:
        layer.params["bias"][:] = rng.normal(size=3)
    checks = check_layer(layer, rng.normal(size=(2, channels, 6, 5)), rng=rng)
    assert {check.name for check in checks} == {"x", *layer.params}
    assert all(check.passed for check in checks)


def test_transposed_columns_are_im2col_transposed_with_a_ones_row() -> None:
    rng = np.random.default_rng(14)
    x, stride, padding = rng.normal(size=(2, 3, 7, 6)), (2, 1), (1, 2, 0, 1)
    cols = im2col_transposed(x, (3, 2), stride, padding, ones_row=True)
    np.testing.assert_array_equal(cols[:-1], im2col(x, (3, 2), stride, padding).T)
    np.testing.assert_array_equal(cols[-1], np.ones(cols.shape[1]))


@pytest.mark.parametrize("name", IMAGE_LAYER_CASES)
def test_backward_does_not_write_into_dout(name: str) -> None:
    rng = np.random.default_rng(2)
    layer, x, training = IMAGE_LAYER_CASES[name](rng)
    out, cache = layer.forward(x, training=training)
    dout = rng.normal(size=out.shape)
    before = dout.copy()
    layer.backward(dout, cache)
    assert np.array_equal(dout, before)


@pytest.mark.parametrize("name", IMAGE_LAYER_CASES)
def test_any_memory_layout_gives_the_same_result(name: str) -> None:
    # Layers return channels-last views; the next layer must not care how its input is laid out.
    rng = np.random.default_rng(3)
    layer, x, training = IMAGE_LAYER_CASES[name](rng)
    strided = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    out_a, cache_a = layer.forward(x, training=training)
    out_b, cache_b = layer.forward(strided, training=training)
    np.testing.assert_allclose(out_a, out_b, rtol=1e-12, atol=1e-12)
    dout = rng.normal(size=out_a.shape)
    dx_a, grads_a = layer.backward(dout, cache_a)
    dx_b, grads_b = layer.backward(np.ascontiguousarray(dout), cache_b)
    np.testing.assert_allclose(dx_a, dx_b, rtol=1e-12, atol=1e-12)
    for key in grads_a:
        np.testing.assert_allclose(grads_a[key], grads_b[key], rtol=1e-12, atol=1e-12)


def small_cnn(rng: np.random.Generator, dtype=np.float32, batch_norm: bool = True) -> Sequential:
    layers = [Conv2d.create(1, 4, (3, 3), ReLU(), he_uniform, rng, dtype, padding=(1, 1, 1, 1))]
    layers += [BatchNorm.create(4, dtype)] if batch_norm else []
    layers += [MaxPool2d((2, 2)), Flatten(), Dropout(0.2), Dense.create(4 * 3 * 3, 3, Identity(), glorot_uniform, rng, dtype)]
    return Sequential(layers, input_shape=(1, 6, 6))


def test_a_float32_cnn_training_step_creates_no_float64_array() -> None:
    rng = np.random.default_rng(4)
    model, optimizer = small_cnn(rng), Adam()
    x = rng.normal(size=(5, 36))  # float64 flat rows: viewed as (5, 1, 6, 6) float32 on entry
    out, caches = model.forward(x, training=True, rng=rng)
    _, dout = CrossEntropy().value_and_grad(out, rng.integers(0, 3, size=5))
    grads = model.backward(dout, caches)
    optimizer.step(model.parameters(), grads, np.float64(0.01))
    arrays = {"out": out, **{f"grad {k}": v for k, v in grads.items()}, **model.state_dict()}
    for index, cache in enumerate(caches):
        for position, item in enumerate(cache if isinstance(cache, tuple) else (cache,)):
            if isinstance(item, np.ndarray):
                arrays[f"cache {index}.{position}"] = item
    assert {name for name, array in arrays.items() if array.dtype == np.float64} == set()
    assert model.predict(x).dtype == np.float32


def test_whole_cnn_gradients_in_training_mode() -> None:
    rng = np.random.default_rng(5)
    model = small_cnn(rng, np.float64)
    model.layers[0].params["bias"][:] = rng.normal(size=4) * 0.1
    checks = check_model(model, CrossEntropy(), rng.normal(size=(4, 36)), rng.integers(0, 3, size=4),
                         training=True, seed=3)
    assert {check.name for check in checks} >= {"0.weight", "0.bias", "1.weight", "1.bias", "5.weight"}
    assert all(check.passed for check in checks), [str(c) for c in checks if not c.passed]


def test_buffers_are_state_not_parameters() -> None:
    model = small_cnn(np.random.default_rng(6))
    assert set(model.buffers()) == {"1.running_mean", "1.running_var"}
    assert not set(model.buffers()) & set(model.parameters())  # an optimizer never sees them
    assert set(model.state_dict()) == set(model.parameters()) | set(model.buffers())
    other = small_cnn(np.random.default_rng(7))
    other.forward(np.random.default_rng(8).normal(size=(4, 36)), training=True, rng=np.random.default_rng(0))
    model.load_parameters({k: v.copy() for k, v in other.state_dict().items()})
    assert all(np.array_equal(model.state_dict()[k], v) for k, v in other.state_dict().items())
    with pytest.raises(ParameterMismatch, match="missing 1.running_mean, 1.running_var"):
        model.load_parameters(other.parameters())


def test_model_input_shape_views_flat_rows_and_refuses_others() -> None:
    model = small_cnn(np.random.default_rng(9), np.float64)
    x = np.random.default_rng(10).normal(size=(3, 1, 6, 6))
    np.testing.assert_array_equal(model.predict(x), model.predict(x.reshape(3, 36)))
    with pytest.raises(ValueError, match=r"expected inputs of shape \(N, 1, 6, 6\) or flat rows \(N, 36\), got shape \(3, 35\)"):
        model.predict(np.zeros((3, 35)))


def test_layers_name_what_does_not_fit() -> None:
    with pytest.raises(ValueError, match=r"kernel \(3, 3\) does not fit inputs of shape \(1, 2, 2\)"):
        Conv2d.create(1, 2, (3, 3), ReLU(), he_uniform, np.random.default_rng(0), np.float64).forward(np.zeros((1, 1, 2, 2)))
    with pytest.raises(ValueError, match=r"expects inputs of shape \(N, 3, H, W\)"):
        Conv2d.create(3, 2, (1, 1), ReLU(), he_uniform, np.random.default_rng(0), np.float64).forward(np.zeros((1, 2, 4, 4)))
    with pytest.raises(ValueError, match=r"window \(2, 2\) does not fit"):
        MaxPool2d((2, 2)).forward(np.zeros((1, 1, 1, 5)))


def test_conv_init_uses_the_conv_fans() -> None:
    # he_uniform: limit sqrt(6 / fan_in), fan_in = C*kh*kw = 8*3*3 = 72 -> limit 0.2887, std limit/sqrt(3)
    layer = Conv2d.create(8, 64, (3, 3), ReLU(), he_uniform, np.random.default_rng(11), np.float64)
    assert layer.weight.shape == (64, 8, 3, 3)
    assert np.abs(layer.weight).max() <= np.sqrt(6 / 72)
    assert layer.weight.std() == pytest.approx(np.sqrt(6 / 72) / np.sqrt(3), rel=0.05)


def test_max_pool_backward_zeroes_what_no_window_covers() -> None:
    # 5x7 in 2x2 windows: the last row and column are in none. Freed NaN memory of the same size
    # is what an uninitialised allocation is likely to get back.
    x = np.random.default_rng(12).normal(size=(2, 3, 5, 7))
    pool = MaxPool2d((2, 2))
    out, cache = pool.forward(x)
    for _ in range(5):
        garbage = np.full((2, 5, 7, 3), np.nan)
        del garbage
        dx, _grads = pool.backward(np.ones_like(out), cache)
        assert np.isfinite(dx).all() and dx[:, :, 4, :].sum() == 0 and dx[:, :, :, 6].sum() == 0
        assert dx.sum() == out.size  # each window routes its one gradient


def test_predict_of_an_image_model_is_bounded_by_memory(monkeypatch) -> None:
    from sgdcli.engine import model as model_module
    net = small_cnn(np.random.default_rng(13), np.float64)
    x = np.random.default_rng(14).normal(size=(7, 36))
    whole = net.predict(x)
    # widest per sample: conv columns, 6*6 pixels x 3*3 kernel x 1 channel = 324 > outputs 4*6*6 = 144
    assert net._values_per_sample(x[:1].reshape(1, 1, 6, 6)) == 324
    monkeypatch.setattr(model_module, "PREDICT_VALUES", 700)  # two samples' worth per pass
    passes = []
    infer = net._infer
    monkeypatch.setattr(net, "_infer", lambda rows: passes.append(len(rows)) or infer(rows))
    np.testing.assert_allclose(net.predict(x), whole, rtol=1e-12)
    assert passes == [2, 2, 2, 1]
    passes.clear()
    net.predict(x, batch_size=1)
    assert passes == [1] * 7
