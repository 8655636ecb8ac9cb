"""Stages of a Sequential: each layer on its own, or conv2d -> max_pool2d or batch_norm -> max_pool2d
fused into one stage; a conv2d with ReLU before a batch_norm leaves its ReLU to batch norm's passes.

A stage computes exactly what its layers compute in order (the same function and, up to where
float32 rounding ties two values of a window, the same gradient); it only does less work. The
layers themselves, their parameters, checkpoints and exports do not change.
"""

from __future__ import annotations

import numpy as np

from .activations import ReLU
from .channels import WideRows
from .conv import Conv2d
from .layers import Layer
from .normalization import BatchNorm, channel_sums, rows_of, shaped_like
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

    Against the two layers run one after the other: when the pool reads every output pixel, the
    forward values are the same bit for bit (with transposed columns the bias is inside the
    product, before pooling, exactly as there); when pixels are left out, the product has fewer
    rows and BLAS may round a value an ulp differently. The argmax is the same unless rounding ties
    two different products once the bias is added (fl(z1 + b) = fl(z2 + b) with z1 < z2: the layers
    route to the first, this stage to z2). The weight and bias gradients are then the same sums
    with zero-gradient rows left out: equal up to the rounding of the sums' order (bit for bit in
    exact arithmetic, ties included: tests/test_fusion.py). ``params`` is the conv's own dict.
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
            wide = WideRows(ph * pw, f, rows)  # channels.py: in long loops
            wide.view(rows)[...] += wide.tile(conv.bias)
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


class BatchNormMaxPool(Layer):
    """batch_norm then max_pool2d, as one stage: pool the centred values, then scale and shift.

    Shapes: x (N, C, H, W) -> y (N, C, PH, PW), as ``pool.forward(bn.forward(x))``. With every
    channel's scale = weight / sqrt(var + epsilon) > 0, y = centred * scale + bias is increasing in
    the centred value (float rounding included), so maxpool(y) = maxpool(centred) * scale + bias:
    the same bits, from a pass over a quarter of the values for a 2x2 pool. Backward from the
    pooled gradient dp: dbias = sum dp, dweight = sum(dp * pooled centred) * inv_std (the centred
    value at each window's argmax), dx = the pool's scatter of dp * scale, plus batch norm's
    centred * slope + offset (``BatchNorm.input_gradient``): no full-size dy is summed twice. The
    statistics, running statistics and dx's formula are batch norm's own; the sums run over the
    pooled values, so the gradients agree with the layers' up to the rounding of their order (and
    the argmax, up to values that rounding ties, as ``ConvMaxPool``). A scale <= 0 anywhere (a
    maximum becomes a minimum there) runs the two layers one after the other instead.
    ``relu``: x is a ReLU's input, applied within batch norm's passes (``BatchNorm.forward``'s ``relu``).
    """

    per_sample = False  # batch norm's statistics of the whole batch

    def __init__(self, norm: BatchNorm, pool: MaxPool2d, *, relu: bool = False) -> None:
        super().__init__()
        self.norm, self.pool, self.relu = norm, pool, relu
        self.params = norm.params
        self.buffers = norm.buffers

    def forward(self, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None):
        norm, pool = self.norm, self.pool
        centred, inv_std, active = norm.centre(x, training, relu=self.relu)
        norm_cache = (x.shape, centred, inv_std, training, active)
        if not (norm.weight * inv_std > 0).all():
            pooled, pool_cache = pool.forward(shaped_like(norm.normalize(centred, inv_std, x.shape), x.shape))
            return pooled, (norm_cache, pool_cache, None)
        pooled, pool_cache = pool.forward(shaped_like(centred, x.shape))
        rows = rows_of(pooled)  # a view: pooled keeps centred's channels-last memory
        return shaped_like(norm.normalize(rows, inv_std, pooled.shape), pooled.shape), (norm_cache, pool_cache, rows)

    def backward(self, dout: np.ndarray, cache, *, need_dx: bool = True):
        norm_cache, pool_cache, pooled_centred = cache
        if pooled_centred is None:  # the layers one after the other
            dy, _ = self.pool.backward(dout, pool_cache)
            return self.norm.backward(dy, norm_cache, need_dx=need_dx)
        x_shape, _, inv_std, _, _ = norm_cache
        dp = rows_of(dout)
        dbias, dweight = channel_sums(dout.shape, (dp, None), (dp, pooled_centred))
        dweight *= inv_std  # sum(dy * xhat): dy is zero off the argmax
        grads = {"weight": dweight, "bias": dbias}
        if not need_dx:
            return None, grads
        wide = WideRows(dout.shape[2] * dout.shape[3], dp.shape[1], dp)  # channels.py: in long loops
        scaled = (wide.view(dp) * wide.tile(self.norm.weight * inv_std)).reshape(dp.shape)
        scaled, _ = self.pool.backward(shaped_like(scaled, dout.shape), pool_cache)
        dx = self.norm.input_gradient(rows_of(scaled), norm_cache, dweight, dbias, scaled=True)
        return shaped_like(dx, x_shape), grads

    def __repr__(self) -> str:
        return f"BatchNormMaxPool({self.norm!r}, {self.pool!r}{', relu=True' if self.relu else ''})"


class ConvLinear(Layer):
    """conv2d with ReLU before a batch_norm stage: the convolution only, z = cols @ W.T + bias.

    Shapes: x (N, C, H, W) -> z (N, F, OH, OW) (channels-last memory, as ``Conv2d``). The batch norm
    stage after it (``ReLUBatchNorm`` or ``BatchNormMaxPool(relu=True)``) takes z, applies the ReLU in
    place within its own chunked passes (the mean's sums in training) and the ReLU's mask within its
    input gradient's, so two full passes over the conv output (ReLU forward and backward) are saved.
    The stages compute the same bits as the layers one after the other (the same operations on each
    value). Backward: dz (the batch norm stage's dx) -> ``Conv2d.linear_backward``.
    """

    def __init__(self, conv: Conv2d) -> None:
        super().__init__()
        self.conv = conv
        self.params = conv.params

    def forward(self, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None):
        z, cols, transposed, (oh, ow) = self.conv.linear(x)
        return z.reshape(len(x), oh, ow, self.conv.filters).transpose(0, 3, 1, 2), (x.shape, cols, transposed)

    def backward(self, dout: np.ndarray, cache, *, need_dx: bool = True):
        x_shape, cols, transposed = cache
        n, f, oh, ow = dout.shape
        dz = dout.transpose(0, 2, 3, 1).reshape(-1, f)  # a view: batch norm's dx is channels-last rows
        return self.conv.linear_backward(dz, x_shape, cols, transposed, (oh, ow), need_dx=need_dx)

    def __repr__(self) -> str:
        return f"ConvLinear({self.conv!r})"


class ReLUBatchNorm(Layer):
    """batch_norm of max(x, 0), x a conv's z from ``ConvLinear``: ``BatchNorm.forward(x, relu=True)``."""

    per_sample = False  # batch norm's statistics of the whole batch

    def __init__(self, norm: BatchNorm) -> None:
        super().__init__()
        self.norm = norm
        self.params = norm.params
        self.buffers = norm.buffers

    def forward(self, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None):
        return self.norm.forward(x, training, relu=True)

    def backward(self, dout: np.ndarray, cache, *, need_dx: bool = True):
        return self.norm.backward(dout, cache, need_dx=need_dx)

    def __repr__(self) -> str:
        return f"ReLUBatchNorm({self.norm!r})"


def fusable(layer: Layer, following: Layer | None) -> bool:
    """Whether ``layer`` then ``following`` run as one stage (``ConvMaxPool`` or ``BatchNormMaxPool``)."""
    if not isinstance(following, MaxPool2d):
        return False
    return isinstance(layer, BatchNorm) or (isinstance(layer, Conv2d) and layer.activation.non_decreasing)


def stages(layers: list[Layer]) -> list[tuple[int, Layer]]:
    """The stages of ``layers`` in order, each as (index of its first layer, the stage): a layer itself,
    or a fused stage standing for layers index and index + 1. A stage's parameters and buffers are
    those of its first layer. A conv2d with ReLU before a batch_norm runs as ``ConvLinear`` and the
    batch norm (with the max_pool2d after it, if any) takes its ReLU."""
    result, index = [], 0
    while index < len(layers):
        following = layers[index + 1] if index + 1 < len(layers) else None
        if isinstance(layers[index], Conv2d) and type(layers[index].activation) is ReLU \
                and isinstance(following, BatchNorm):
            pool = layers[index + 2] if index + 2 < len(layers) else None
            norm = BatchNormMaxPool(following, pool, relu=True) if isinstance(pool, MaxPool2d) \
                else ReLUBatchNorm(following)
            result += [(index, ConvLinear(layers[index])), (index + 1, norm)]
            index += 2 + isinstance(norm, BatchNormMaxPool)
        elif fusable(layers[index], following):
            stage = ConvMaxPool if isinstance(layers[index], Conv2d) else BatchNormMaxPool
            result.append((index, stage(layers[index], following)))
            index += 2
        else:
            result.append((index, layers[index]))
            index += 1
    return result
