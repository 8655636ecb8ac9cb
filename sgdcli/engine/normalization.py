"""Batch normalization (Ioffe & Szegedy 2015) for dense outputs (N, D) and conv outputs (N, C, H, W)."""

from __future__ import annotations

import numpy as np
from numpy.typing import DTypeLike

from .layers import Layer


def _rows(x: np.ndarray) -> np.ndarray:
    """x as (M, C): (N, D) itself; (N, C, H, W) as (N*H*W, C), a view for channels-last memory."""
    return x if x.ndim == 2 else x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1])


def _like(rows: np.ndarray, x_shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of ``_rows``: (M, C) back to x's logical shape (a view)."""
    if len(x_shape) == 2:
        return rows
    n, c, h, w = x_shape
    return rows.reshape(n, h, w, c).transpose(0, 3, 1, 2)


def _channel_sum(rows: np.ndarray, x_shape: tuple[int, ...], other: np.ndarray | None = None) -> np.ndarray:
    """sum over rows of `rows` (or of rows * other) per channel, (M, C) -> (C,), summed per sample first.

    Two levels (H*W values, then N partial sums) keep float32 rounding near (H*W + N) ulps instead of
    the M = N*H*W of one running sum down the rows, so statistics agree with PyTorch's to ~1e-6.
    """
    if len(x_shape) == 4:
        shape = (x_shape[0], -1, x_shape[1])
        rows, other = rows.reshape(shape), None if other is None else other.reshape(shape)
        if other is None:  # a product with a row of ones: BLAS, ~9x faster than NumPy's sum over axis 1
            partial = np.matmul(np.ones((1, rows.shape[1]), dtype=rows.dtype), rows)[:, 0]
        else:
            partial = np.einsum("nmc,nmc->nc", rows, other)
        return partial.sum(axis=0)
    return rows.sum(axis=0) if other is None else np.einsum("mc,mc->c", rows, other)


class BatchNorm(Layer):
    """y = weight * (x - mean) / sqrt(var + epsilon) + bias, per feature (dense) or channel (conv).

    Shapes: x (N, C) or (N, C, H, W); weight, bias, running_mean, running_var (C,). Statistics
    are over N (and H, W). In training, mean and var are the batch's (biased var); in evaluation
    the running estimates. Backward (training), with xhat = (x - mean) / sqrt(var + epsilon) and
    M values per channel: dx = weight / sqrt(var + epsilon) / M * (M*dy - sum dy - xhat * sum(dy*xhat)),
    dweight = sum(dy*xhat), dbias = sum dy; in evaluation dx = dy * weight / sqrt(running_var + epsilon). Conventions of PyTorch's BatchNorm: the running
    statistics move by running = (1 - momentum) * running + momentum * batch, and use the
    unbiased batch variance var * M / (M - 1).

    The running statistics are non-trainable state in ``buffers`` ("running_mean",
    "running_var"), saved in checkpoints next to the parameters. The one exception to "nothing
    changes on a layer in forward": ``forward(training=True)`` updates them in place, as every
    framework does; evaluation and backward never touch them.
    """

    def __init__(self, weight: np.ndarray, bias: np.ndarray, running_mean: np.ndarray, running_var: np.ndarray,
                 momentum: float = 0.1, epsilon: float = 1e-5) -> None:
        super().__init__()
        shapes = {a.shape for a in (weight, bias, running_mean, running_var)}
        dtypes = {a.dtype for a in (weight, bias, running_mean, running_var)}
        if len(shapes) != 1 or weight.ndim != 1 or len(dtypes) != 1:
            raise ValueError(f"BatchNorm arrays must share one shape (C,) and dtype, got {sorted(map(str, shapes))}, "
                             f"{sorted(map(str, dtypes))}")
        if not 0.0 <= momentum <= 1.0 or not epsilon > 0:
            raise ValueError(f"BatchNorm needs momentum in [0, 1] and epsilon > 0, got {momentum}, {epsilon}")
        self.params = {"weight": weight, "bias": bias}
        self.buffers = {"running_mean": running_mean, "running_var": running_var}
        self.momentum, self.epsilon = float(momentum), float(epsilon)

    @classmethod
    def create(cls, features: int, dtype: DTypeLike, momentum: float = 0.1, epsilon: float = 1e-5) -> "BatchNorm":
        """weight 1, bias 0, running mean 0 and running variance 1 (PyTorch's initial values)."""
        ones, zeros = np.ones(features, dtype=dtype), np.zeros(features, dtype=dtype)
        return cls(ones, zeros, zeros.copy(), ones.copy(), momentum, epsilon)

    @property
    def running_mean(self) -> np.ndarray:
        return self.buffers["running_mean"]

    @property
    def running_var(self) -> np.ndarray:
        return self.buffers["running_var"]

    @property
    def features(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None):
        if x.ndim not in (2, 4) or x.shape[1] != self.features:
            raise ValueError(f"BatchNorm expects inputs of shape (N, {self.features}) or (N, {self.features}, H, W), "
                             f"got shape {x.shape}")
        rows = _rows(x)
        if training:
            count = len(rows)
            if count < 2:
                raise ValueError(f"BatchNorm needs more than one value per channel in training, got inputs of shape {x.shape}")
            mean = _channel_sum(rows, x.shape) / count
            centred = rows - mean
            var = _channel_sum(centred, x.shape, centred) / count
            self._update_running_statistics(mean, var * (count / (count - 1)))
        else:
            centred, var = rows - self.running_mean, self.running_var
        inv_std = 1.0 / np.sqrt(var + self.epsilon)
        out = centred * (self.weight * inv_std)  # xhat * weight, xhat = centred * inv_std never stored
        out += self.bias
        return _like(out, x.shape), (x.shape, centred, inv_std, training)

    def _update_running_statistics(self, mean: np.ndarray, unbiased_var: np.ndarray) -> None:
        """running = (1 - momentum) * running + momentum * batch, in place (the documented exception)."""
        for running, batch in ((self.running_mean, mean), (self.running_var, unbiased_var)):
            running *= 1.0 - self.momentum
            running += self.momentum * batch

    def backward(self, dout: np.ndarray, cache, *, need_dx: bool = True):
        x_shape, centred, inv_std, training = cache
        dy = _rows(dout)
        dbias = _channel_sum(dy, x_shape)
        dweight = _channel_sum(dy, x_shape, centred) * inv_std  # sum(dy * xhat)
        grads = {"weight": dweight, "bias": dbias}
        if not need_dx:
            return None, grads
        scale = self.weight * inv_std
        if not training:  # fixed statistics: an affine map, dx = dy * weight / sqrt(running_var + epsilon)
            return _like(dy * scale, x_shape), grads
        # The formula above expanded per channel into dx = dy * scale + centred * slope + offset: four
        # passes over the activation instead of six.
        count = len(dy)
        dx = dy * scale
        dx += centred * (scale * inv_std * dweight * (-1.0 / count))
        dx += scale * dbias * (-1.0 / count)
        return _like(dx, x_shape), grads

    def __repr__(self) -> str:
        return f"BatchNorm(features={self.features}, momentum={self.momentum}, epsilon={self.epsilon})"
