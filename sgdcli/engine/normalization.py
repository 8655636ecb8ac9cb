"""Batch normalization (Ioffe & Szegedy 2015) for dense outputs (N, D) and conv outputs (N, C, H, W)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import DTypeLike

from .channels import WideRows
from .layers import Layer
from .workers import split


def rows_of(x: np.ndarray) -> np.ndarray:
    """x as (M, C): (N, D) itself; (N, C, H, W) as (N*H*W, C), a view for channels-last memory."""
    return x if x.ndim == 2 else x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1])


def shaped_like(rows: np.ndarray, x_shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of ``_rows``: (M, C) back to x's logical shape (a view)."""
    if len(x_shape) == 2:
        return rows
    n, c, h, w = x_shape
    return rows.reshape(n, h, w, c).transpose(0, 3, 1, 2)


def channel_sums(x_shape: tuple[int, ...], *terms: tuple[np.ndarray, np.ndarray | None],
                 prepare: Callable[[int, int], None] | None = None) -> list[np.ndarray]:
    """For each (rows, other): the sum over rows of `rows` (or of rows * other) per channel, (M, C) -> (C,),
    summed per sample first. ``prepare(start, stop)``: a pass that writes rows [start, stop) of the
    terms, run on each chunk just before its sums read it (in cache), e.g. a subtraction or a ReLU.

    Two levels (H*W values, then N partial sums) keep float32 rounding near (H*W + N) ulps instead of
    the M = N*H*W of one running sum down the rows, so statistics agree with PyTorch's to ~1e-6. The
    per-sample sums of all terms run in one chunked pass on two threads (``workers.split``; each
    sample's sum is the same however the samples are split). A product term is formed per chunk and
    summed by the same BLAS product as a plain sum (~1.7x faster than ``einsum`` over the chunk).
    """
    if len(x_shape) == 2:
        if prepare is not None:
            prepare(0, x_shape[0])
        return [rows.sum(axis=0) if other is None else np.einsum("mc,mc->c", rows, other) for rows, other in terms]
    shape = (x_shape[0], -1, x_shape[1])
    shaped = [(rows.reshape(shape), None if other is None else other.reshape(shape)) for rows, other in terms]
    partials = np.empty((len(terms), x_shape[0], x_shape[1]), dtype=terms[0][0].dtype)
    ones = np.ones((1, shaped[0][0].shape[1]), dtype=partials.dtype)

    def samples(a: int, b: int) -> None:
        if prepare is not None:
            prepare(a * shaped[0][0].shape[1], b * shaped[0][0].shape[1])
        for partial, (rows, other) in zip(partials, shaped):
            # a product with a row of ones: BLAS, ~9x faster than NumPy's sum over axis 1
            np.matmul(ones, rows[a:b] if other is None else rows[a:b] * other[a:b], out=partial[a:b, None])

    nbytes = sum(rows.nbytes * (1 if other is None else 2) for rows, other in terms)
    split(x_shape[0], samples, nbytes + (2 * terms[0][0].nbytes if prepare else 0), chunked=True)
    return list(partials.sum(axis=1))


def _by_sample(rows: np.ndarray, x_shape: tuple[int, ...], work, nbytes: int) -> None:
    """``work(start, stop)`` over the rows of `rows` (M, C) in chunks of whole samples, on two threads."""
    per = len(rows) // x_shape[0]
    split(x_shape[0], lambda a, b: work(a * per, b * per), nbytes, chunked=True)


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

    per_sample = False  # statistics of the whole batch

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

    def forward(self, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None, *,
                relu: bool = False):
        """``relu``: x is the pre-activation of a ReLU (a conv's z): batch norm of max(x, 0), the ReLU
        applied in place in x's rows (overwriting them) within batch norm's own passes, and its mask
        in ``input_gradient``'s (``fusion.ConvLinear``); the same bits as the two one after the other."""
        centred, inv_std, active = self.centre(x, training, relu=relu)
        out = self.normalize(centred, inv_std, x.shape)
        return shaped_like(out, x.shape), (x.shape, centred, inv_std, training, active)

    def centre(self, x: np.ndarray, training: bool, *, relu: bool = False):
        """``(centred, inv_std, active)``: x - mean as rows (M, C) and 1 / sqrt(var + epsilon) (C,), the
        batch's statistics in training (the running ones then updated), the running ones in evaluation.
        ``relu``: of max(x, 0) instead, computed in place in x's rows, which ``active`` then is (else None)."""
        if x.ndim not in (2, 4) or x.shape[1] != self.features:
            raise ValueError(f"BatchNorm expects inputs of shape (N, {self.features}) or (N, {self.features}, H, W), "
                             f"got shape {x.shape}")
        rows = rows_of(x)
        centred = np.empty_like(rows)
        wide = WideRows(len(rows) // len(x), self.features, rows, centred)  # channels.py: long loops
        wide_rows, wide_centred = wide.view(rows), wide.view(centred)
        zero = np.zeros(wide.g * self.features, dtype=rows.dtype)  # a row: ~4x faster than the scalar

        def activate(a: int, b: int) -> None:
            if relu:
                span = wide.span(a, b)
                np.maximum(wide_rows[span], zero, out=wide_rows[span])

        if training:
            count = len(rows)
            if count < 2:
                raise ValueError(f"BatchNorm needs more than one value per channel in training, got inputs of shape {x.shape}")
            mean = channel_sums(x.shape, (rows, None), prepare=activate if relu else None)[0] / count
        else:
            mean, var = self.running_mean, self.running_var
        tiled_mean = wide.tile(mean)

        def subtract(a: int, b: int) -> None:
            if not training:
                activate(a, b)
            span = wide.span(a, b)
            np.subtract(wide_rows[span], tiled_mean, out=wide_centred[span])

        if training:
            var = channel_sums(x.shape, (centred, centred), prepare=subtract)[0] / count
            self._update_running_statistics(mean, var * (count / (count - 1)))
        else:
            _by_sample(rows, x.shape, subtract, 2 * rows.nbytes)
        return centred, 1.0 / np.sqrt(var + self.epsilon), rows if relu else None

    def normalize(self, centred: np.ndarray, inv_std: np.ndarray, x_shape: tuple[int, ...]) -> np.ndarray:
        """centred * (weight * inv_std) + bias as new rows (M, C): xhat * weight + bias, xhat never stored.
        ``x_shape``: the logical shape the rows stand for ((N, C) or (N, C, H, W))."""
        out = np.empty_like(centred)
        wide = WideRows(len(centred) // x_shape[0], self.features, centred, out)
        wide_centred, wide_out = wide.view(centred), wide.view(out)
        scale, bias = wide.tile(self.weight * inv_std), wide.tile(self.bias)

        def rows(a: int, b: int) -> None:
            span = wide.span(a, b)
            np.multiply(wide_centred[span], scale, out=wide_out[span])
            wide_out[span] += bias

        _by_sample(centred, x_shape, rows, 3 * centred.nbytes)
        return out

    def _update_running_statistics(self, mean: np.ndarray, unbiased_var: np.ndarray) -> None:
        """running = (1 - momentum) * running + momentum * batch, in place (the documented exception)."""
        for running, batch in ((self.running_mean, mean), (self.running_var, unbiased_var)):
            running *= 1.0 - self.momentum
            running += self.momentum * batch

    def backward(self, dout: np.ndarray, cache, *, need_dx: bool = True):
        x_shape, centred, inv_std, _, _ = cache
        dy = rows_of(dout)
        dbias, dweight = channel_sums(x_shape, (dy, None), (dy, centred))
        dweight *= inv_std  # sum(dy * xhat)
        grads = {"weight": dweight, "bias": dbias}
        if not need_dx:
            return None, grads
        return shaped_like(self.input_gradient(dy, cache, dweight, dbias), x_shape), grads

    def input_gradient(self, dy: np.ndarray, cache, dweight: np.ndarray, dbias: np.ndarray, *,
                       scaled: bool = False) -> np.ndarray:
        """dx as rows (M, C), given dy rows, the cache of ``forward`` and the parameter gradients.

        The formula in the class docstring expanded per channel into dx = dy * scale + centred * slope
        + offset (scale = weight * inv_std): four passes over the activation instead of six. Fixed
        statistics (evaluation): an affine map, dx = dy * scale. ``scaled``: `dy` already holds
        dy * scale, and is overwritten with dx. After a ``relu`` forward, dx is the gradient of the
        ReLU's input: times [max(x, 0) > 0] (``ReLU.backward``'s mask) in the same chunked pass.
        """
        x_shape, centred, inv_std, training, active = cache
        scale, count = self.weight * inv_std, len(dy)
        slope, offset = scale * inv_std * dweight * (-1.0 / count), scale * dbias * (-1.0 / count)
        dx = dy if scaled else np.empty_like(dy)
        wide = WideRows(count // x_shape[0], self.features, dy, dx, centred, *([] if active is None else [active]))
        wdy, wdx, wcentred = wide.view(dy), wide.view(dx), wide.view(centred)
        wactive = None if active is None else wide.view(active)
        scale, slope, offset = wide.tile(scale), wide.tile(slope), wide.tile(offset)

        def rows(a: int, b: int) -> None:
            span = wide.span(a, b)
            if not scaled:
                np.multiply(wdy[span], scale, out=wdx[span])
            if training:
                wdx[span] += wcentred[span] * slope
                wdx[span] += offset
            if wactive is not None:
                np.multiply(wdx[span], wactive[span] > 0, out=wdx[span])

        _by_sample(dx, x_shape, rows, 4 * dx.nbytes)
        return dx

    def __repr__(self) -> str:
        return f"BatchNorm(features={self.features}, momentum={self.momentum}, epsilon={self.epsilon})"
