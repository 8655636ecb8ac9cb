"""conv2d with ReLU before batch_norm: the conv runs as ``ConvLinear`` and batch norm applies the ReLU
and its mask within its own passes (engine/fusion.py). Against the layers one after the other: the
same bits, forward and backward, in training and evaluation; and by finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from sgdcli.analysis.gradcheck import check_model
from sgdcli.engine.activations import Identity, LeakyReLU, ReLU
from sgdcli.engine.conv import FEW_CHANNELS, Conv2d
from sgdcli.engine.fusion import BatchNormMaxPool, ConvLinear, ReLUBatchNorm, stages
from sgdcli.engine.init import glorot_uniform, he_uniform
from sgdcli.engine.layers import Dense, Flatten
from sgdcli.engine.losses import CrossEntropy
from sgdcli.engine.model import Sequential
from sgdcli.engine.normalization import BatchNorm
from sgdcli.engine.pooling import MaxPool2d


def conv_norm_pool(channels: int, pool: bool, negative: bool, seed: int = 20):
    """A conv2d (ReLU, 5 filters, bias spread around 0 so that ~half its outputs are cut), a batch
    norm with random state (one negative weight if ``negative``) and optionally a 2x2 max pool."""
    rng = np.random.default_rng(seed)
    conv = Conv2d.create(channels, 5, (3, 3), ReLU(), he_uniform, rng, np.float32)
    conv.params["bias"][:] = rng.normal(size=5) * 0.3
    norm = BatchNorm.create(5, np.float32)
    norm.params["weight"][:] = [1.0, -0.5, 2.0, 1.5, 0.7] if negative else rng.uniform(0.5, 2.0, size=5)
    norm.params["bias"][:] = rng.normal(size=5)
    norm.buffers["running_mean"][:] = rng.uniform(0.0, 1.0, size=5)
    norm.buffers["running_var"][:] = rng.uniform(0.5, 2.0, size=5)
    return [conv, norm] + ([MaxPool2d((2, 2))] if pool else [])


def run(plan, x, dout, training):
    out, caches = x, []
    for stage in plan:
        out, cache = stage.forward(out, training=training)
        caches.append(cache)
    grads, d = [], dout
    for stage, cache in zip(plan[::-1], caches[::-1]):
        d, g = stage.backward(d, cache)
        grads.append(g)
    return out, d, grads


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("channels", [1, FEW_CHANNELS + 1])  # transposed columns and ordinary ones
@pytest.mark.parametrize("pool, negative", [(False, False), (True, False), (True, True)])
def test_the_relu_goes_into_batch_norm_with_the_same_bits(training, channels, pool, negative) -> None:
    # negative: BatchNormMaxPool runs its layers' own order, the ReLU and its mask still inside batch norm
    rng = np.random.default_rng(21)
    x = rng.normal(size=(6, channels, 9, 8)).astype(np.float32)  # conv output (6, 5, 7, 6), pooled (6, 5, 3, 3)
    dout = rng.normal(size=(6, 5, 3, 3) if pool else (6, 5, 7, 6)).astype(np.float32)
    results = []
    for fused in (False, True):
        layers = conv_norm_pool(channels, pool, negative)
        if fused:
            plan = [stage for _, stage in stages(layers)]
            assert isinstance(plan[0], ConvLinear)
            assert isinstance(plan[1], BatchNormMaxPool if pool else ReLUBatchNorm) and len(plan) == 2
        else:  # the conv with its own ReLU, then batch norm as it ran before (with the pool: the fused stage)
            plan = [layers[0], BatchNormMaxPool(*layers[1:]) if pool else layers[1]]
        results.append((*run(plan, x, dout, training), [v.copy() for v in layers[1].buffers.values()]))
    (out_a, dx_a, grads_a, buffers_a), (out_b, dx_b, grads_b, buffers_b) = results
    assert 0.2 < np.mean(conv_norm_pool(channels, pool, negative)[0].linear(x)[0] < 0) < 0.8  # the ReLU cuts many
    np.testing.assert_array_equal(out_b, out_a)
    np.testing.assert_array_equal(dx_b, dx_a)
    for a, b in zip(grads_a + [dict(enumerate(buffers_a))], grads_b + [dict(enumerate(buffers_b))]):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(b[key], a[key])


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_of_a_relu_on_dense_rows(training) -> None:
    rng = np.random.default_rng(23)
    z, dout = rng.normal(size=(16, 5)).astype(np.float32), rng.normal(size=(16, 5)).astype(np.float32)
    norm, relu = conv_norm_pool(1, False, False)[1], ReLU()
    a = relu.forward(z)
    y_a, cache = norm.forward(a, training=training)
    dx_a, grads_a = norm.backward(dout, cache)
    dz_a = relu.backward(dx_a, z, a)
    norm = conv_norm_pool(1, False, False)[1]  # fresh running statistics
    z_b = z.copy()
    y_b, cache = norm.forward(z_b, training=training, relu=True)
    np.testing.assert_array_equal(z_b, a)  # the ReLU ran in place, as documented
    dz_b, grads_b = norm.backward(dout, cache)
    np.testing.assert_array_equal(y_b, y_a)
    np.testing.assert_array_equal(dz_b, dz_a)
    for key in grads_a:
        np.testing.assert_array_equal(grads_b[key], grads_a[key])


def test_which_convs_leave_their_relu_to_batch_norm() -> None:
    rng = np.random.default_rng(24)
    convs = [Conv2d.create(2, 2, (3, 3), activation, he_uniform, rng, np.float64)
             for activation in (ReLU(), LeakyReLU(), ReLU(), ReLU())]  # leaky ReLU: its own pass, as before
    norms = [BatchNorm.create(2, np.float64) for _ in range(3)]
    layers = [convs[0], norms[0], convs[1], norms[1], convs[2], norms[2], MaxPool2d((2, 2)), convs[3], MaxPool2d((2, 2))]
    plan = stages(layers)
    assert [index for index, _ in plan] == [0, 1, 2, 3, 4, 5, 7]
    assert [type(stage).__name__ for _, stage in plan] == [
        "ConvLinear", "ReLUBatchNorm", "Conv2d", "BatchNorm", "ConvLinear", "BatchNormMaxPool", "ConvMaxPool"]
    assert plan[0][1].params is layers[0].params and plan[1][1].params is layers[1].params
    assert plan[1][1].buffers is layers[1].buffers and plan[5][1].buffers is layers[5].buffers and plan[5][1].relu


def test_a_model_with_relu_into_batch_norm_by_finite_differences() -> None:
    rng = np.random.default_rng(25)
    layers = [Conv2d.create(1, 3, (3, 3), ReLU(), he_uniform, rng, np.float64), BatchNorm.create(3, np.float64),
              MaxPool2d((2, 2)), Conv2d.create(3, FEW_CHANNELS + 1, (2, 2), ReLU(), he_uniform, rng, np.float64),
              BatchNorm.create(FEW_CHANNELS + 1, np.float64), Flatten(),
              Dense.create((FEW_CHANNELS + 1) * 4, 3, Identity(), glorot_uniform, rng, np.float64)]
    for index in (0, 3):
        layers[index].params["bias"][:] = rng.normal(size=layers[index].filters) * 0.3
    model = Sequential(layers, input_shape=(1, 8, 8))  # 8 -> 6 -> 3 -> 2: the dense layer takes (FEW_CHANNELS + 1) * 2 * 2
    assert sum(isinstance(stage, ConvLinear) for _, stage in stages(model.layers)) == 2
    checks = check_model(model, CrossEntropy(), rng.normal(size=(5, 64)), rng.integers(0, 3, size=5))
    assert {check.name for check in checks} >= {"0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "4.weight"}
    assert all(check.passed for check in checks), [str(c) for c in checks if not c.passed]
