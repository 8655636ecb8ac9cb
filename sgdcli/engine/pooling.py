"""Pooling over channels-first images (N, C, H, W): max, average and global average.

Windows have no padding; a window that would run past the edge is dropped (PyTorch's
``ceil_mode=False``): OH = floor((H - ph) / sh) + 1. Outputs keep the input's memory layout.
"""

from __future__ import annotations

import numpy as np

from .conv import Pair, output_size
from .layers import Layer
from .workers import split


class _Pool2d(Layer):
    """Shared window geometry of the max and average pools."""

    def __init__(self, pool_size: Pair, stride: Pair | None = None) -> None:
        super().__init__()
        stride = pool_size if stride is None else stride
        if len(pool_size) != 2 or min(pool_size) < 1 or len(stride) != 2 or min(stride) < 1:
            raise ValueError(f"pool_size and stride must be pairs of positive integers, got {pool_size}, {stride}")
        self.pool_size = (int(pool_size[0]), int(pool_size[1]))
        self.stride = (int(stride[0]), int(stride[1]))

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """(C, OH, OW) for one sample of shape (C, H, W)."""
        c, h, w = input_shape
        return c, output_size(h, self.pool_size[0], self.stride[0]), output_size(w, self.pool_size[1], self.stride[1])

    def _offsets(self, x_shape: tuple[int, ...]):
        """For each window offset (i, j): the slices picking that element of every window."""
        if len(x_shape) != 4:
            raise ValueError(f"{type(self).__name__} expects inputs of shape (N, C, H, W), got shape {x_shape}")
        _, oh, ow = self.output_shape(x_shape[1:])
        if oh < 1 or ow < 1:
            raise ValueError(f"{type(self).__name__} window {self.pool_size} does not fit inputs of shape {x_shape[1:]}")
        (ph, pw), (sh, sw) = self.pool_size, self.stride
        return [(slice(None), slice(None), slice(i, i + sh * (oh - 1) + 1, sh), slice(j, j + sw * (ow - 1) + 1, sw))
                for i in range(ph) for j in range(pw)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(pool_size={self.pool_size}, stride={self.stride})"


class MaxPool2d(_Pool2d):
    """y[n, c, p, q] = max over the window x[n, c, p*sh : p*sh+ph, q*sw : q*sw+pw].

    Shapes: x (N, C, H, W), y (N, C, OH, OW). Backward routes each dout entry to the window's
    argmax, the first one in row-major order on ties (as PyTorch's max_pool2d); overlapping
    windows add up.
    """

    def forward(self, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None):
        offsets = self._offsets(x.shape)
        out = np.empty_like(x[offsets[0]])  # x's memory layout (channels-last after a conv)
        argmax = np.empty_like(out, dtype=np.uint8 if len(offsets) <= 256 else np.int32)

        def rows(start: int, stop: int) -> None:  # images [start, stop)
            windows = [x[start:stop][offset] for offset in offsets]
            target, first = out[start:stop], argmax[start:stop]
            if len(windows) > 1:
                np.maximum(windows[0], windows[1], out=target)
            else:
                target[...] = windows[0]
            for window in windows[2:]:
                np.maximum(target, window, out=target)
            # The first maximum's position k in the window, without a branch per element:
            # k = sum over j < P-1 of prod over i <= j of ne_i, with ne_i = [window_i != max]
            # (the count of leading windows that are not the maximum).
            if len(windows) > 1:
                leading = windows[0] != target
                np.copyto(first, leading)
                for window in windows[1:-1]:
                    leading &= window != target
                    first += leading
            else:
                first[...] = 0

        split(len(x), rows, x.nbytes + out.nbytes)
        return out, (x.shape, argmax)

    def backward(self, dout: np.ndarray, cache, *, need_dx: bool = True):
        if not need_dx:
            return None, {}
        x_shape, argmax = cache
        if _channels_last(dout) != _channels_last(argmax):  # one copy, not a strided sweep per window offset
            converted = np.empty_like(argmax, dtype=dout.dtype)  # argmax's memory layout
            converted[...] = dout
            dout = converted
        tiled = self.stride == self.pool_size  # every input row/column in exactly one window, or past the last
        dx = _zeros_like_layout(x_shape, argmax, dout.dtype, empty=tiled)
        overlapping = self.stride[0] < self.pool_size[0] or self.stride[1] < self.pool_size[1]
        offsets = self._offsets(x_shape)

        def rows(start: int, stop: int) -> None:  # images [start, stop)
            target, grad, first = dx[start:stop], dout[start:stop], argmax[start:stop]
            if tiled:  # only what the windows leave out still needs its zeros
                target[:, :, first.shape[2] * self.pool_size[0] :, :] = 0
                target[:, :, :, first.shape[3] * self.pool_size[1] :] = 0
            for k, window in enumerate(offsets):
                if overlapping:
                    target[window] += grad * (first == k)
                else:  # each input in one window at most: write, do not add
                    np.multiply(grad, first == k, out=target[window])

        split(len(dout), rows, dx.nbytes + dout.nbytes)
        return dx, {}


class AvgPool2d(_Pool2d):
    """y[n, c, p, q] = mean of the window x[n, c, p*sh : p*sh+ph, q*sw : q*sw+pw]; dx spreads dout / (ph*pw)."""

    def forward(self, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None):
        offsets = self._offsets(x.shape)
        out = np.array(x[offsets[0]], order="K")
        for window in offsets[1:]:
            out += x[window]
        out *= 1.0 / (self.pool_size[0] * self.pool_size[1])
        return out, x.shape

    def backward(self, dout: np.ndarray, cache, *, need_dx: bool = True):
        if not need_dx:
            return None, {}
        share = dout * (1.0 / (self.pool_size[0] * self.pool_size[1]))
        dx = _zeros_like_layout(cache, share, dout.dtype)
        for window in self._offsets(cache):
            dx[window] += share
        return dx, {}


class GlobalAvgPool2d(Layer):
    """y[n, c] = mean over h, w of x[n, c, h, w]. Shapes: x (N, C, H, W), y (N, C); dx = dout / (H*W) everywhere."""

    def forward(self, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None):
        if x.ndim != 4:
            raise ValueError(f"GlobalAvgPool2d expects inputs of shape (N, C, H, W), got shape {x.shape}")
        return x.mean(axis=(2, 3)), x.shape

    def backward(self, dout: np.ndarray, cache, *, need_dx: bool = True):
        if not need_dx:
            return None, {}
        n, c, h, w = cache
        dx = np.empty((n, h, w, c), dtype=dout.dtype)
        dx[...] = (dout * (1.0 / (h * w)))[:, None, None, :]
        return dx.transpose(0, 3, 1, 2), {}

    def __repr__(self) -> str:
        return "GlobalAvgPool2d()"


def _channels_last(array: np.ndarray) -> bool:
    """True for an (N, C, H, W) array whose memory is (N, H, W, C), as conv outputs are."""
    return array.ndim == 4 and array.strides[1] < array.strides[3]


def _zeros_like_layout(shape: tuple[int, ...], like: np.ndarray, dtype: np.dtype, empty: bool = False) -> np.ndarray:
    """Zeros (or, with `empty`, uninitialised memory) of logical shape (N, C, H, W), channels-last in
    memory when ``like`` is (as conv outputs are)."""
    n, c, h, w = shape
    allocate = np.empty if empty else np.zeros
    if _channels_last(like):
        return allocate((n, h, w, c), dtype=dtype).transpose(0, 3, 1, 2)
    return allocate(shape, dtype=dtype)
