"""The image layers against PyTorch's conv2d, max_pool2d, avg_pool2d and batch_norm, forward and
backward, in float64 (skipped when torch is not installed; it is never a dependency)."""

from __future__ import annotations

import numpy as np
import pytest

from sgdcli.engine.activations import Identity
from sgdcli.engine.conv import FEW_CHANNELS, Conv2d
from sgdcli.engine.init import he_uniform
from sgdcli.engine.normalization import BatchNorm
from sgdcli.engine.pooling import AvgPool2d, MaxPool2d

torch = pytest.importorskip("torch")
F = torch.nn.functional


def forward_backward(fn, x: np.ndarray, *params: np.ndarray, dout_seed: int = 0):
    """fn(x, *params) in torch; returns (out, dx, dparams) for dout ~ N(0, 1) with the given seed."""
    tensors = [torch.tensor(a, requires_grad=True) for a in (x, *params)]
    out = fn(*tensors)
    dout = np.random.default_rng(dout_seed).normal(size=tuple(out.shape))
    out.backward(torch.tensor(dout))
    return out.detach().numpy(), dout, [t.grad.numpy() for t in tensors]


@pytest.mark.parametrize(("kernel", "stride", "padding"), [
    ((3, 3), (1, 1), (0, 0, 0, 0)),
    ((3, 2), (2, 1), (1, 1, 2, 2)),
    ((2, 2), (2, 2), (1, 2, 0, 1)),
    ((5, 5), (1, 1), (2, 2, 2, 2)),
])
@pytest.mark.parametrize("channels", [3, FEW_CHANNELS])  # both column layouts
def test_conv2d_matches_torch(kernel, stride, padding, channels) -> None:
    rng = np.random.default_rng(0)
    layer = Conv2d.create(channels, 5, kernel, Identity(), he_uniform, rng, np.float64, stride=stride, padding=padding)
    layer.params["bias"][:] = rng.normal(size=5)
    x = rng.normal(size=(4, channels, 9, 8))
    top, bottom, left, right = padding
    expected, dout, (dx, dweight, dbias) = forward_backward(
        lambda x, w, b: F.conv2d(F.pad(x, (left, right, top, bottom)), w, b, stride=stride), x, layer.weight, layer.bias)
    out, cache = layer.forward(x)
    got_dx, grads = layer.backward(dout, cache)
    np.testing.assert_allclose(out, expected, atol=1e-12)
    np.testing.assert_allclose(got_dx, dx, atol=1e-12)
    np.testing.assert_allclose(grads["weight"], dweight, atol=1e-12)
    np.testing.assert_allclose(grads["bias"], dbias, atol=1e-12)


@pytest.mark.parametrize(("layer", "fn"), [
    (MaxPool2d((2, 2)), lambda x: F.max_pool2d(x, 2)),
    (MaxPool2d((3, 3), (2, 2)), lambda x: F.max_pool2d(x, 3, 2)),
    (MaxPool2d((2, 3), (1, 2)), lambda x: F.max_pool2d(x, (2, 3), (1, 2))),
    (AvgPool2d((2, 2)), lambda x: F.avg_pool2d(x, 2)),
    (AvgPool2d((2, 3), (1, 2)), lambda x: F.avg_pool2d(x, (2, 3), (1, 2))),
], ids=["max2", "max3s2", "max2x3", "avg2", "avg2x3"])
def test_pooling_matches_torch(layer, fn) -> None:
    x = np.random.default_rng(1).normal(size=(3, 4, 9, 8))
    x[0, 0, :2, :2] = 1.5  # a tie: both route to the first maximum
    expected, dout, (dx,) = forward_backward(fn, x)
    out, cache = layer.forward(x)
    np.testing.assert_allclose(out, expected, atol=1e-12)
    np.testing.assert_allclose(layer.backward(dout, cache)[0], dx, atol=1e-12)


@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5, 6)], ids=["dense", "conv"])
def test_batch_norm_matches_torch_in_training_and_evaluation(shape) -> None:
    rng = np.random.default_rng(2)
    layer = BatchNorm.create(3, np.float64, momentum=0.2, epsilon=1e-3)
    layer.params["weight"][:] = rng.uniform(0.5, 2, size=3)
    layer.params["bias"][:] = rng.normal(size=3)
    reference = (torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d)(3, eps=1e-3, momentum=0.2,
                                                                                     dtype=torch.float64)
    with torch.no_grad():
        reference.weight.copy_(torch.tensor(layer.weight))
        reference.bias.copy_(torch.tensor(layer.bias))
    for step in range(3):  # the running statistics after several updates
        x = rng.normal(size=shape) * (step + 1) + step
        expected, dout, (dx,) = forward_backward(reference, x, dout_seed=step)
        reference.weight.grad = reference.bias.grad = None
        out, cache = layer.forward(x, training=True)
        np.testing.assert_allclose(out, expected, atol=1e-12)
        np.testing.assert_allclose(layer.backward(dout, cache)[0], dx, atol=1e-11)
    np.testing.assert_allclose(layer.running_mean, reference.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(layer.running_var, reference.running_var.numpy(), rtol=1e-12)
    reference.eval()
    x = rng.normal(size=shape)
    expected, dout, (dx,) = forward_backward(reference, x)
    out, cache = layer.forward(x, training=False)
    np.testing.assert_allclose(out, expected, atol=1e-12)
    np.testing.assert_allclose(layer.backward(dout, cache)[0], dx, atol=1e-12)
