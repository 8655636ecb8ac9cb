"""2-D convolution on channels-first images (N, C, H, W) as im2col + one GEMM, and its backward.

Layout: tensors have PyTorch's logical shape (N, C, H, W), but the arrays this module returns
are views of channels-last memory (N, H, W, C): the GEMM writes (N*OH*OW, F) rows, and a
transposed view avoids a copy. Every layer here accepts any memory layout, and the next conv's
im2col reads channels-last memory with unit stride.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import DTypeLike

from .allocator import aligned_copy, aligned_full
from .activations import Activation
from .channels import WideRows
from .layers import Initializer, Layer
from .workers import split

Pair = tuple[int, int]
Padding = tuple[int, int, int, int]  # (top, bottom, left, right)
FEW_CHANNELS = 8  # inputs with fewer channels use im2col_transposed
INNER_CHUNK = 1024  # summed_product's chunk of the inner dimension


def output_size(size: int, kernel: int, stride: int, pad_before: int = 0, pad_after: int = 0) -> int:
    """floor((size + pads - kernel) / stride) + 1: the output length of a conv or pool window (PyTorch's)."""
    return (size + pad_before + pad_after - kernel) // stride + 1


def channels_last(x: np.ndarray, padding: Padding = (0, 0, 0, 0)) -> np.ndarray:
    """x (N, C, H, W) as (N, H', W', C), zero-padded by (top, bottom, left, right); a view when no padding."""
    top, bottom, left, right = padding
    if not any(padding):
        return x.transpose(0, 2, 3, 1)
    n, c, h, w = x.shape
    padded = np.zeros((n, h + top + bottom, w + left + right, c), dtype=x.dtype)
    padded[:, top : top + h, left : left + w, :] = x.transpose(0, 2, 3, 1)
    return padded


def window_view(x_nhwc: np.ndarray, kernel: Pair, stride: Pair) -> np.ndarray:
    """Every kernel window of x (N, H, W, C) as a read-only view (N, OH, OW, kh, kw, C)."""
    windows = sliding_window_view(x_nhwc, kernel, axis=(1, 2))  # (N, H-kh+1, W-kw+1, C, kh, kw)
    return windows[:, :: stride[0], :: stride[1]].transpose(0, 1, 2, 4, 5, 3)


def im2col(x: np.ndarray, kernel: Pair, stride: Pair, padding: Padding, out_hw: Pair | None = None) -> np.ndarray:
    """x (N, C, H, W) -> columns (N*OH*OW, kh*kw*C), one row per output pixel, ordered (kh, kw, C).

    ``out_hw``: only the first (OH, OW) rows and columns of output pixels (at most all of them).
    """
    windows = window_view(channels_last(x, padding), kernel, stride)
    if out_hw is not None:
        windows = windows[:, : out_hw[0], : out_hw[1]]
    n, oh, ow, kh, kw, c = windows.shape
    cols = np.empty(windows.shape, dtype=windows.dtype)
    split(n, lambda start, stop: np.copyto(cols[start:stop], windows[start:stop]), 2 * cols.nbytes)  # the one copy
    return cols.reshape(n * oh * ow, kh * kw * c)


def im2col_transposed(x: np.ndarray, kernel: Pair, stride: Pair, padding: Padding, ones_row: bool = False,
                      out_hw: Pair | None = None) -> np.ndarray:
    """x (N, C, H, W) -> columns as rows (kh*kw*C [+ 1], N*OH*OW): ``im2col(x).T``, plus a row of ones if asked.

    For few input channels: im2col's rows would be kh*kw*C values long (9 for a 3x3 kernel on one
    channel), a copy too fine-grained to run at memory speed (~7x slower here), while each row of
    this layout is one strided copy of a shifted image. The row of ones carries the bias through
    the product (z = cols.T @ [W | bias].T), and gives its gradient from the same product.
    """
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (top, bottom, left, right) = kernel, stride, padding
    if any(padding):
        padded = np.zeros((n, c, h + top + bottom, w + left + right), dtype=x.dtype)
        padded[:, :, top : top + h, left : left + w] = x
        x = padded
    oh, ow = output_size(x.shape[2], kh, sh), output_size(x.shape[3], kw, sw)
    if out_hw is not None:
        oh, ow = min(oh, out_hw[0]), min(ow, out_hw[1])
    cols = np.empty((kh * kw * c + ones_row, n, oh, ow), dtype=x.dtype)
    blocks = cols[: kh * kw * c].reshape(kh, kw, c, n, oh, ow)

    def images(start: int, stop: int) -> None:
        for i in range(kh):
            for j in range(kw):
                blocks[i, j, :, start:stop] = x[start:stop, :, i : i + sh * (oh - 1) + 1 : sh,
                                                j : j + sw * (ow - 1) + 1 : sw].transpose(1, 0, 2, 3)

    split(n, images, 2 * blocks.nbytes)
    if ones_row:
        cols[-1] = 1
    return cols.reshape(len(cols), n * oh * ow)


def summed_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a (P, K) @ b (K, Q) -> (P, Q), as the sum of the products of chunks of INNER_CHUNK along K (and the rest).

    For products whose inner dimension is far longer than the outer ones, as the few-channel weight
    gradient cols @ dz: OpenBLAS ran the race's conv 1, (10, 86528) @ (86528, 32), in 2.7 ms, and the
    same as 84 products of 1024 (one batched ``matmul``) summed in 0.6 ms (chunks of 512-3000: 0.6 ms,
    4096: 2.9). The same value up to the rounding of the sums' order; the same bits every time.
    """
    p, k = a.shape
    count = k // INNER_CHUNK
    if count < 2:
        return a @ b
    whole = count * INNER_CHUNK
    chunks = np.matmul(a[:, :whole].reshape(p, count, INNER_CHUNK).transpose(1, 0, 2),
                       b[:whole].reshape(count, INNER_CHUNK, b.shape[1]))
    total = chunks.sum(axis=0)
    if whole < k:
        total += a[:, whole:] @ b[whole:]
    return total


def input_gradient(dz: np.ndarray, weight: np.ndarray, x_shape: tuple[int, ...], stride: Pair, padding: Padding,
                   out_hw: Pair) -> np.ndarray:
    """dx of a convolution: col2im(dz @ W), the adjoint of im2col, one kernel offset at a time.

    dz (N*OH*OW, F), weight (F, C, kh, kw) -> dx (N, C, H, W) (a view of channels-last memory):
    for each offset (i, j), dz @ weight[:, :, i, j] (N*OH*OW, C) is added to the input pixels
    that offset read. One big (N*OH*OW, kh*kw*C) product alone is ~10% faster than the kh*kw small
    ones, but the scatter of its columns made it ~1.6x slower on the benchmark's 3x3 conv (and
    10-50% slower by chunks of images). The products come first, all of them (kh*kw (N*OH*OW, C)
    blocks: 18 MB for the benchmark's conv 2), and then the additions in one pass by chunks of
    images on two threads (``workers.split``), each image's zeros and its kh*kw additions in turn
    while its pixels are in cache: 10-15% faster than adding each product as it came on one thread
    (interleaved with the products, the additions were slower split, the worker waiting on
    OpenBLAS's threads). The additions are in the same order, from zeros: the same bits.
    """
    n, c, h, w = x_shape
    (kh, kw), (sh, sw), (top, bottom, left, right), (oh, ow) = weight.shape[2:], stride, padding, out_hw
    blocks = np.empty((kh * kw, len(dz), c), dtype=dz.dtype)
    for k in range(kh * kw):
        np.matmul(dz, np.ascontiguousarray(weight[:, :, k // kw, k % kw]), out=blocks[k])
    blocks = blocks.reshape(kh * kw, n, oh, ow, c)
    dx = np.empty((n, h + top + bottom, w + left + right, c), dtype=dz.dtype)

    def images(a: int, b: int) -> None:
        dx[a:b] = 0
        for k in range(kh * kw):
            i, j = divmod(k, kw)
            dx[a:b, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw, :] += blocks[k, a:b]

    split(n, images, 2 * blocks.nbytes, chunked=True)
    return dx[:, top : top + h, left : left + w, :].transpose(0, 3, 1, 2)


class Conv2d(Layer):
    """2-D convolution (cross-correlation, as PyTorch's ``conv2d``) with a fused activation.

    Shapes: x (N, C, H, W), weight (F, C, kh, kw), bias (F,) (absent when built without bias),
    y (N, F, OH, OW) with OH = floor((H + top + bottom - kh) / stride_h) + 1 (OW likewise).
    y[n, f, p, q] = activation(bias[f] + sum_{c,i,j} weight[f, c, i, j] * xp[n, c, p*sh + i, q*sw + j]),
    xp being x zero-padded by ``padding`` = (top, bottom, left, right).
    As GEMMs, with cols = im2col(x) (N*OH*OW, kh*kw*C) and W = weight in (F, kh*kw*C) order:
    z = cols @ W.T + bias; dW = dz.T @ cols; dbias = sum_rows dz; dx = col2im(dz @ W) (``input_gradient``).
    Inputs with fewer than FEW_CHANNELS channels use the transposed columns (``im2col_transposed``),
    the bias carried by a row of ones: z = cols.T @ [W | bias].T, [dW | dbias] = (cols @ dz).T.
    """

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, activation: Activation,
                 stride: Pair = (1, 1), padding: Padding = (0, 0, 0, 0)) -> None:
        super().__init__()
        if weight.ndim != 4:
            raise ValueError(f"Conv2d weight must have shape (F, C, kh, kw), got shape {weight.shape}")
        if bias is not None and (bias.shape != (weight.shape[0],) or bias.dtype != weight.dtype):
            raise ValueError(f"Conv2d bias must be {weight.dtype} of shape ({weight.shape[0]},), "
                             f"got {bias.dtype} {bias.shape}")
        if not isinstance(activation, Activation):
            raise TypeError(f"Conv2d activation must be an Activation instance, got {activation!r}")
        if len(stride) != 2 or min(stride) < 1 or len(padding) != 4 or min(padding) < 0:
            raise ValueError(f"Conv2d needs stride (sh, sw) >= 1 and padding (top, bottom, left, right) >= 0, "
                             f"got {stride} and {padding}")
        self.params = {"weight": weight} if bias is None else {"weight": weight, "bias": bias}
        self.activation = activation
        self.stride = (int(stride[0]), int(stride[1]))
        self.padding = tuple(int(p) for p in padding)

    @classmethod
    def create(cls, in_channels: int, filters: int, kernel_size: Pair, activation: Activation, init: Initializer,
               rng: np.random.Generator, dtype: DTypeLike, *, stride: Pair = (1, 1),
               padding: Padding = (0, 0, 0, 0), bias: bool = True) -> "Conv2d":
        """Weights from ``init`` with fan_in = C*kh*kw and fan_out = F*kh*kw; zero bias."""
        kh, kw = kernel_size
        shape = (filters, in_channels, kh, kw)
        weight = aligned_copy(init(rng, in_channels * kh * kw, filters * kh * kw, dtype, shape))  # (allocator.py)
        return cls(weight, aligned_full((filters,), weight.dtype, 0) if bias else None, activation, stride, padding)

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1]

    @property
    def filters(self) -> int:
        return self.weight.shape[0]

    @property
    def kernel_size(self) -> Pair:
        return self.weight.shape[2], self.weight.shape[3]

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """(F, OH, OW) for one sample of shape (C, H, W)."""
        _, h, w = input_shape
        (kh, kw), (sh, sw), (top, bottom, left, right) = self.kernel_size, self.stride, self.padding
        return self.filters, output_size(h, kh, sh, top, bottom), output_size(w, kw, sw, left, right)

    def _weight_matrix(self) -> np.ndarray:
        # (F, C, kh, kw) -> (F, kh*kw*C), the column order of im2col
        return self.weight.transpose(0, 2, 3, 1).reshape(self.filters, -1)

    def linear(self, x: np.ndarray, out_hw: Pair | None = None, *, defer_bias: bool = False):
        """The convolution before its activation: ``(z, cols, transposed, (OH, OW))``.

        z = cols @ W.T + bias, (N*OH*OW, F) rows over the first ``out_hw`` output pixels (all by
        default); ``transposed``: cols are ``im2col_transposed``'s, the bias inside the product.
        ``defer_bias``: without transposed columns, leave the bias out of z (a caller adds it
        later, e.g. after pooling); with them it is always in.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"Conv2d expects inputs of shape (N, {self.in_channels}, H, W), got shape {x.shape}")
        _, oh, ow = self.output_shape(x.shape[1:])
        if oh < 1 or ow < 1:
            raise ValueError(f"Conv2d kernel {self.kernel_size} does not fit inputs of shape {x.shape[1:]} "
                             f"with padding {self.padding}")
        if out_hw is not None:
            oh, ow = min(oh, out_hw[0]), min(ow, out_hw[1])
        wmat = self._weight_matrix()
        transposed = self.in_channels < FEW_CHANNELS
        if transposed:  # columns as rows; the bias rides on a row of ones
            cols = im2col_transposed(x, self.kernel_size, self.stride, self.padding, ones_row=self.bias is not None,
                                     out_hw=(oh, ow))
            z = cols.T @ (wmat if self.bias is None else np.concatenate([wmat, self.bias[:, None]], axis=1)).T
        else:
            cols = im2col(x, self.kernel_size, self.stride, self.padding, out_hw=(oh, ow))
            z = cols @ wmat.T
            if self.bias is not None and not defer_bias:  # by images on two threads: a pass over all of z
                wide = WideRows(oh * ow, self.filters, z)  # channels.py: in long loops
                wide_z, bias, per = wide.view(z), wide.tile(self.bias), oh * ow

                def add(a: int, b: int) -> None:
                    span = wide.span(a * per, b * per)
                    np.add(wide_z[span], bias, out=wide_z[span])

                split(len(x), add, 2 * z.nbytes)
        return z, cols, transposed, (oh, ow)

    def forward(self, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None):
        z, cols, transposed, (oh, ow) = self.linear(x)
        out = self.activation.forward_in_place(z)  # may be z itself, overwritten
        images = out.reshape(len(x), oh, ow, self.filters).transpose(0, 3, 1, 2)
        return images, (x.shape, cols, transposed, z, out)

    def backward(self, dout: np.ndarray, cache, *, need_dx: bool = True):
        x_shape, cols, transposed, z, out = cache
        n, f, oh, ow = dout.shape
        dz = self.activation.backward(dout.transpose(0, 2, 3, 1).reshape(-1, f), z, out)
        return self.linear_backward(dz, x_shape, cols, transposed, (oh, ow), need_dx=need_dx)

    def linear_backward(self, dz: np.ndarray, x_shape: tuple[int, ...], cols: np.ndarray, transposed: bool,
                        out_hw: Pair, *, need_dx: bool = True):
        """``(dx, grads)`` of ``linear``, given dz (N*OH*OW, F) and what ``linear`` returned; dx None unless
        ``need_dx`` (zero for input pixels that the first ``out_hw`` outputs do not read)."""
        (kh, kw), c, f = self.kernel_size, self.in_channels, self.filters
        if transposed:  # the ones row last when there is a bias: one product gives both gradients
            product = summed_product(cols, dz).T
            dweight, dbias = product[:, : kh * kw * c], (None if self.bias is None else product[:, -1].copy())
        else:
            dweight = (cols.T @ dz).T  # this order of the product: ~20% faster than dz.T @ cols in OpenBLAS
            dbias = None if self.bias is None else np.ones(len(dz), dtype=dz.dtype) @ dz  # a BLAS sum, on all cores
        grads = {"weight": np.ascontiguousarray(dweight.reshape(f, kh, kw, c).transpose(0, 3, 1, 2))}
        if dbias is not None:
            grads["bias"] = dbias
        if not need_dx:
            return None, grads
        return input_gradient(dz, self.weight, x_shape, self.stride, self.padding, out_hw), grads

    def __repr__(self) -> str:
        return (f"Conv2d(in_channels={self.in_channels}, filters={self.filters}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}, "
                f"activation={self.activation!r})")
