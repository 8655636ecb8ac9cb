"""Stages of a Sequential: each layer on its own, or conv2d -> max_pool2d fused into one stage.

A stage computes exactly what its layers compute in order (the same function and, up to where
float32 rounding ties two values of a window, the same gradient); it only does less work. The
layers themselves, their parameters, checkpoints and exports do not change.
"""

from __future__ import annotations

import numpy as np

from .conv import Conv2d
from .layers import Layer
from .pooling import MaxPool2d


class ConvMaxPool(Layer):
    """conv2d (with a non-decreasing activation) then max_pool2d, as one stage: pool first.

    Shapes: x (N, C, H, W) -> y (N, F, PH, PW), as ``pool.forward(conv.forward(x))``. A maximum
    commutes with adding a per-channel constant and with any non-decreasing function (both keep
    the order within a window, and float rounding is monotone too), so
        maxpool(activation(z + bias)) = activation(maxpool(z) + bias),  z = the convolution's product,
    and the bias and activation touch one value per window instead of every output pixel. Output
    pixels that no pool window reads (the last row or column when the pool does not tile the
    conv output, e.g. 11 -> 5) are never computed: their gradient is zero and nothing else reads them.
    Backward: the activation's derivative at the pooled value, routed to each window's argmax (the
    first maximum of z in row-major order, as ``MaxPool2d``), then the convolution's gradients.

    Against the two layers run one after the other: the forward values are the same bit for bit
    (with transposed columns the bias is inside the product, before pooling, exactly as there).
    The argmax is the same unless rounding ties two different products once the bias is added
    (fl(z1 + b) = fl(z2 + b) with z1 < z2: the layers route to the first, this stage to z2); the
    weight and bias gradients are sums over fewer (only zero-gradient rows left out) rows, so they
    agree up to float rounding of the sum's order. ``params`` is the conv's own dict.
    """

    def __init__(self, conv: Conv2d, pool: MaxPool2d) -> None:
        super().__init__()
        if not fusable(conv, pool):
            raise ValueError(f"cannot fuse {conv!r} with {pool!r}: the activation must be non-decreasing")
        self.conv, self.pool = conv, pool
        self.params = conv.params

    def forward(self, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None):
        conv, pool = self.conv, self.pool
        f, oh, ow = conv.output_shape(x.shape[1:]) if x.ndim == 4 else (conv.filters, 1, 1)
        _, ph, pw = pool.output_shape((f, oh, ow))
        read = ((ph - 1) * pool.stride[0] + pool.pool_size[0], (pw - 1) * pool.stride[1] + pool.pool_size[1])
        z, cols, transposed, (zh, zw) = conv.linear(x, read if min(ph, pw) >= 1 else None, defer_bias=True)
        n = len(x)
        pooled, (z_shape, argmax) = pool.forward(z.reshape(n, zh, zw, f).transpose(0, 3, 1, 2))
        rows = pooled.transpose(0, 2, 3, 1).reshape(-1, f)  # a view: pooled keeps z's channels-last memory
        if conv.bias is not None and not transposed:
            rows += conv.bias
        out = conv.activation.forward_in_place(rows)  # may be rows itself, overwritten
        images = out.reshape(n, ph, pw, f).transpose(0, 3, 1, 2)
        return images, (x.shape, cols, transposed, z_shape, argmax, rows, out)

    def backward(self, dout: np.ndarray, cache, *, need_dx: bool = True):
        x_shape, cols, transposed, z_shape, argmax, rows, out = cache
        n, f, ph, pw = dout.shape
        drows = self.conv.activation.backward(dout.transpose(0, 2, 3, 1).reshape(-1, f), rows, out)
        dimages, _ = self.pool.backward(drows.reshape(n, ph, pw, f).transpose(0, 3, 1, 2), (z_shape, argmax))
        dz = dimages.transpose(0, 2, 3, 1).reshape(-1, f)  # a view: dimages has argmax's channels-last memory
        return self.conv.linear_backward(dz, x_shape, cols, transposed, z_shape[2:], need_dx=need_dx)

    def __repr__(self) -> str:
        return f"ConvMaxPool({self.conv!r}, {self.pool!r})"


def fusable(layer: Layer, following: Layer | None) -> bool:
    """Whether ``layer`` then ``following`` run as one ``ConvMaxPool`` stage."""
    return (isinstance(layer, Conv2d) and isinstance(following, MaxPool2d)
            and layer.activation.non_decreasing)


def stages(layers: list[Layer]) -> list[tuple[int, Layer]]:
    """The stages of ``layers`` in order, each as (index of its first layer, the stage): a layer itself,
    or a ``ConvMaxPool`` standing for layers index and index + 1. A stage's parameters are those of its
    first layer."""
    result, index = [], 0
    while index < len(layers):
        following = layers[index + 1] if index + 1 < len(layers) else None
        if fusable(layers[index], following):
            result.append((index, ConvMaxPool(layers[index], following)))
            index += 2
        else:
            result.append((index, layers[index]))
            index += 1
    return result
