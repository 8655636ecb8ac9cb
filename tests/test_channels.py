"""Per-channel arithmetic on wide rows (engine/channels.py) and the layers that use it: the same values as
plain broadcasting, whatever the group size, the split of samples over threads or the memory layout."""

from __future__ import annotations

import numpy as np
import pytest

from sgdcli.engine import channels
from sgdcli.engine.activations import ReLU
from sgdcli.engine.channels import WideRows, group
from sgdcli.engine.conv import Conv2d
from sgdcli.engine.fusion import BatchNormMaxPool, ConvMaxPool
from sgdcli.engine.init import he_uniform
from sgdcli.engine.normalization import BatchNorm
from sgdcli.engine.pooling import MaxPool2d


@pytest.mark.parametrize(("per", "channels_", "expected"), [
    (676, 32, 676),  # 26x26 images, 32 channels: one wide row per image (21632 values)
    (676, 64, 338),  # 43264 values would be over MAX_WIDTH: the largest divisor under it
    (121, 64, 121),
    (49, 1000, 7),
    (7, 10_000, 1),  # no divisor fits: plain rows
    (1, 10, 1),  # dense features: one row per sample
])
def test_group_is_the_largest_divisor_within_the_width(per: int, channels_: int, expected: int) -> None:
    g = group(per, channels_)
    assert g == expected
    assert per % g == 0 and (g == 1 or g * channels_ <= channels.MAX_WIDTH)


def test_wide_rows_compute_what_broadcasting_computes_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((6 * 12, 5)).astype(np.float32)
    vector = rng.standard_normal(5).astype(np.float32)
    wide = WideRows(12, 5, rows)
    assert wide.g == 12 and wide.view(rows).shape == (6, 60)
    assert np.shares_memory(wide.view(rows), rows)
    for op in (np.add, np.subtract, np.multiply, np.maximum):
        got = op(wide.view(rows), wide.tile(vector)).reshape(rows.shape)
        np.testing.assert_array_equal(got, op(rows, vector))
    span = wide.span(2 * 12, 5 * 12)  # samples 2..4
    np.testing.assert_array_equal(wide.view(rows)[span].reshape(-1, 5), rows[24:60])


def test_a_non_contiguous_array_falls_back_to_plain_rows_and_view_refuses_one() -> None:
    rows = np.zeros((24, 10), dtype=np.float32)[:, :5]  # (24, 5), rows 10 values apart
    assert WideRows(12, 5, rows).g == 1
    assert WideRows(12, 5, np.zeros((24, 6)), np.zeros((24, 5))).g == 1  # channel count differs
    wide = WideRows(12, 5, np.zeros((24, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        wide.view(rows)


def _reference(x: np.ndarray, weight, bias, dout: np.ndarray, eps: float, relu: bool):
    """Batch norm (of max(x, 0) if relu) in float64 from its textbook formulas: y, dx, dweight, dbias."""
    a = np.maximum(x, 0) if relu else x
    mean, var = a.mean(axis=(0, 2, 3)), a.var(axis=(0, 2, 3))
    shape = (1, -1, 1, 1)
    xhat = (a - mean.reshape(shape)) / np.sqrt(var + eps).reshape(shape)
    y = xhat * weight.reshape(shape) + bias.reshape(shape)
    count = x.size // x.shape[1]
    dxhat = dout * weight.reshape(shape)
    dx = (count * dxhat - dxhat.sum(axis=(0, 2, 3), keepdims=True)
          - xhat * (dxhat * xhat).sum(axis=(0, 2, 3), keepdims=True)) / (count * np.sqrt(var + eps).reshape(shape))
    if relu:
        dx = dx * (x > 0)
    return y, dx, (dout * xhat).sum(axis=(0, 2, 3)), dout.sum(axis=(0, 2, 3))


@pytest.mark.parametrize("max_width", [1 << 15, 64, 1])  # one wide row per image, a proper divisor, plain rows
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("channels_last", [True, False])
def test_batch_norm_on_wide_rows_matches_the_formulas(monkeypatch, max_width: int, relu: bool,
                                                      channels_last: bool) -> None:
    # 8 images of 26x26x64 float64: 2.8 MB, so the passes are split over two threads and chunked
    monkeypatch.setattr(channels, "MAX_WIDTH", max_width)
    rng = np.random.default_rng(1)
    n, c, h, w = 8, 64, 26, 26
    memory = rng.standard_normal((n, h, w, c)) if channels_last else rng.standard_normal((n, c, h, w))
    x = memory.transpose(0, 3, 1, 2) if channels_last else memory
    norm = BatchNorm.create(c, np.float64)
    norm.params["weight"][:] = rng.uniform(0.5, 2.0, size=c)
    norm.params["bias"][:] = rng.normal(size=c)
    dout = rng.standard_normal((n, c, h, w))
    y_ref, dx_ref, dweight_ref, dbias_ref = _reference(x, norm.weight, norm.bias, dout, norm.epsilon, relu)
    y, cache = norm.forward(x.copy(), training=True, relu=relu)
    dx, grads = norm.backward(dout, cache)
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(grads["weight"], dweight_ref, rtol=1e-10)
    np.testing.assert_allclose(grads["bias"], dbias_ref, rtol=1e-10)
    # evaluation: the running statistics, the same wide passes
    y_eval, _ = norm.forward(x.copy(), training=False, relu=relu)
    a = np.maximum(x, 0) if relu else x
    expected = ((a - norm.running_mean.reshape(1, -1, 1, 1)) / np.sqrt(norm.running_var + norm.epsilon).reshape(1, -1, 1, 1)
                * norm.weight.reshape(1, -1, 1, 1) + norm.bias.reshape(1, -1, 1, 1))
    np.testing.assert_allclose(y_eval, expected, rtol=1e-10, atol=1e-10)


def test_the_fused_stages_do_not_depend_on_the_group_size(monkeypatch) -> None:
    # conv -> max pool (its bias added to the pooled rows) and batch norm -> max pool (its scaled
    # pooled gradient): the same bits with one wide row per image as with plain rows.
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 12, 10, 10)).astype(np.float32)
    conv = Conv2d.create(12, 16, (3, 3), ReLU(), he_uniform, rng, np.float32)
    conv.params["bias"][:] = rng.normal(size=16)
    norm = BatchNorm.create(12, np.float32)
    norm.params["weight"][:] = rng.uniform(0.5, 2.0, size=12)
    results = {}
    for width in (1 << 15, 1):
        monkeypatch.setattr(channels, "MAX_WIDTH", width)
        out = []
        for stage in (ConvMaxPool(conv, MaxPool2d((2, 2))), BatchNormMaxPool(norm, MaxPool2d((2, 2)))):
            y, cache = stage.forward(x.copy(), training=True)
            dx, grads = stage.backward(np.linspace(-1, 1, y.size, dtype=np.float32).reshape(y.shape), cache)
            out += [y, dx, *grads.values()]
        results[width] = out
    for a, b in zip(results[1 << 15], results[1]):
        np.testing.assert_array_equal(a, b)
