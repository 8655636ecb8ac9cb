"""Layers in the cs231n pattern: ``forward -> (out, cache)``, ``backward(dout, cache) -> (dx, grads)``.

Parameters live in ``layer.params`` (local names such as "weight", "bias"), non-trainable
state in ``layer.buffers`` (batch norm's running statistics); nothing else is stored on a
layer between calls, so forward is re-entrant and ``backward`` depends only on
the cache it is handed. ``backward`` never writes into ``dout``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import DTypeLike

from . import blas, forward_parts
from .allocator import aligned_copy, aligned_full
from .activations import Activation
from .gradients import BatchProduct, Gradient, OuterProduct

Initializer = Callable[..., np.ndarray]  # (rng, fan_in, fan_out, dtype[, shape]), see init.py


class Layer:
    """Base class. ``params`` maps local names to the layer's trainable arrays ({} for parameter-free
    layers); ``buffers`` to its non-trainable state (updated by the layer itself, never by an optimizer)."""

    params: dict[str, np.ndarray]
    buffers: dict[str, np.ndarray]
    # Whether training treats each sample on its own: its output and gradient do not depend on the other
    # rows of the batch (False for batch norm, which normalises with the batch's statistics).
    per_sample = True

    def __init__(self) -> None:
        self.params = {}
        self.buffers = {}

    @property
    def weight(self) -> np.ndarray:
        """``params["weight"]`` of a layer that has one (Dense (D, M), Conv2d (F, C, kh, kw), BatchNorm (C,))."""
        return self.params["weight"]

    @property
    def bias(self) -> np.ndarray | None:
        """``params["bias"]``, or None for a layer built without one."""
        return self.params.get("bias")

    def forward(
        self, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, object]:
        """Return ``(out, cache)``; ``cache`` is whatever ``backward`` needs."""
        raise NotImplementedError

    def backward(
        self, dout: np.ndarray, cache: object, *, need_dx: bool = True
    ) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        """Return ``(dx, grads)`` with ``grads`` keyed like ``params``; ``dx`` is None when not ``need_dx``."""
        raise NotImplementedError

    def backward_factored(
        self, dout: np.ndarray, cache: object, *, need_dx: bool = True
    ) -> tuple[np.ndarray | None, dict[str, Gradient]]:
        """``backward``, but a gradient may come as its factors (``gradients.OuterProduct``) where the
        layer can give them; the default gives the arrays of ``backward``."""
        return self.backward(dout, cache, need_dx=need_dx)

    def backward_into(
        self, dout: np.ndarray, cache: object, into: dict[str, np.ndarray], *, need_dx: bool = True
    ) -> np.ndarray | None:
        """``backward``, with each gradient written into ``into[name]`` (an array shaped and typed as the
        parameter, e.g. a view of a buffer that is sent to other processes as it is); returns ``dx``.
        The default copies ``backward``'s arrays; a layer may write its products there directly."""
        dx, grads = self.backward(dout, cache, need_dx=need_dx)
        for name, grad in grads.items():
            np.copyto(into[name], grad)
        return dx


class Dense(Layer):
    """Fully connected layer with a fused activation: ``y = activation(x @ weight + bias)``.

    Shapes: x (N, D), weight (D, M), bias (M,), y (N, M). Backward, with z = x @ weight + bias:
    dz = activation.backward(dout, z, y); dweight = x.T @ dz; dbias = sum_n dz; dx = dz @ weight.T.
    The activation is applied in z's buffer when its backward needs only y
    (``Activation.forward_in_place``): one (N, M) array per layer in the cache, not two.
    """

    def __init__(self, weight: np.ndarray, bias: np.ndarray, activation: Activation) -> None:
        super().__init__()
        if weight.ndim != 2:
            raise ValueError(f"Dense weight must have shape (D, M), got shape {weight.shape}")
        if bias.shape != (weight.shape[1],):
            raise ValueError(f"Dense bias must have shape ({weight.shape[1]},) to match weight {weight.shape}, got {bias.shape}")
        if bias.dtype != weight.dtype:
            raise ValueError(f"Dense weight and bias must share a dtype, got {weight.dtype} and {bias.dtype}")
        if not isinstance(activation, Activation):
            raise TypeError(f"Dense activation must be an Activation instance, got {activation!r}")
        self.params = {"weight": weight, "bias": bias}
        self.activation = activation

    @classmethod
    def create(
        cls,
        in_features: int,
        units: int,
        activation: Activation,
        init: Initializer,
        rng: np.random.Generator,
        dtype: DTypeLike,
    ) -> Dense:
        """A new layer with ``weight = init(rng, in_features, units, dtype)`` and zero bias."""
        weight = aligned_copy(init(rng, in_features, units, dtype))  # on a cache line (allocator.py)
        return cls(weight, aligned_full((units,), weight.dtype, 0), activation)

    @property
    def in_features(self) -> int:
        return self.weight.shape[0]

    @property
    def units(self) -> int:
        return self.weight.shape[1]

    def forward(
        self, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"Dense layer expects inputs of shape (N, {self.in_features}), got shape {x.shape}"
            )
        # Training: in parts of the weight's rows on the cores that update them (forward_parts), where it can
        z = forward_parts.product(x, self.weight) if training else x @ self.weight
        z += self.bias
        out = self.activation.forward_in_place(z)  # may be z itself, overwritten
        return out, (x, z, out)

    def backward(
        self, dout: np.ndarray, cache: tuple[np.ndarray, np.ndarray, np.ndarray], *, need_dx: bool = True
    ) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        x, z, out = cache
        dz = self.activation.backward(dout, z, out)
        # One sample: x.T @ dz is an outer product, which np.matmul (inner dimension 1) computes
        # several times slower than a broadcast multiply, x_i * dz_j with the same single rounding.
        dweight = np.multiply(x.T, dz) if len(x) == 1 else x.T @ dz
        grads = {"weight": dweight, "bias": dz.sum(axis=0)}
        dx = dz @ self.weight.T if need_dx else None
        return dx, grads

    def backward_into(
        self, dout: np.ndarray, cache: tuple[np.ndarray, np.ndarray, np.ndarray], into: dict[str, np.ndarray],
        *, need_dx: bool = True
    ) -> np.ndarray | None:
        """``backward``, its products written straight into ``into["weight"]`` (D, M), ``into["bias"]`` (M,):
        the same operations, so the same bits."""
        x, z, out = cache
        dz = self.activation.backward(dout, z, out)
        (np.multiply if len(x) == 1 else np.matmul)(x.T, dz, out=into["weight"])
        np.sum(dz, axis=0, out=into["bias"])
        return dz @ self.weight.T if need_dx else None

    def backward_factored(
        self, dout: np.ndarray, cache: tuple[np.ndarray, np.ndarray, np.ndarray], *, need_dx: bool = True
    ) -> tuple[np.ndarray | None, dict[str, Gradient]]:
        """``backward``; the weight gradient is not built: ``OuterProduct(x[0], dz[0])`` with one sample,
        ``BatchProduct(x, dz)`` with more when the weight is large enough for BLAS (``blas.writes_in_place``)."""
        x, z, out = cache
        if len(x) != 1 and not blas.writes_in_place(self.weight, x):
            return self.backward(dout, cache, need_dx=need_dx)
        dz = self.activation.backward(dout, z, out)
        # The bias gradient is a copy: clipping scales it in place, and dz is the product's factor.
        weight = OuterProduct(x[0], dz[0]) if len(x) == 1 else BatchProduct(x, dz)
        # One row's sum is the row (+ 0.0: a sum turns -0.0 into 0.0 too, so the bits are the sum's).
        grads = {"weight": weight, "bias": dz[0] + 0.0 if len(x) == 1 else dz.sum(axis=0)}
        dx = dz @ self.weight.T if need_dx else None
        return dx, grads

    def __repr__(self) -> str:
        return f"Dense(in_features={self.in_features}, units={self.units}, activation={self.activation!r})"


class ActivationLayer(Layer):
    """A standalone activation: ``y = activation(x)``, any shape, no parameters."""

    def __init__(self, activation: Activation) -> None:
        super().__init__()
        if not isinstance(activation, Activation):
            raise TypeError(f"ActivationLayer needs an Activation instance, got {activation!r}")
        self.activation = activation

    def forward(
        self, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        out = self.activation.forward(x)
        return out, (x, out)

    def backward(
        self, dout: np.ndarray, cache: tuple[np.ndarray, np.ndarray], *, need_dx: bool = True
    ) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        if not need_dx:
            return None, {}
        x, out = cache
        return self.activation.backward(dout, x, out), {}

    def __repr__(self) -> str:
        return f"ActivationLayer({self.activation!r})"


class Dropout(Layer):
    """Inverted dropout: in training ``y = x * mask / (1 - rate)`` with ``mask ~ Bernoulli(1 - rate)``.

    The mask is drawn from the ``rng`` passed to ``forward`` (required when training with
    rate > 0), in float64 so the same seed drops the same units in float32 and float64.
    Outside training, or with rate 0, the layer is the identity. Backward: dx = dout * mask / (1 - rate).
    """

    def __init__(self, rate: float) -> None:
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"Dropout rate must be in [0, 1), got {rate}")
        self.rate = float(rate)

    def forward(
        self, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        if not training or self.rate == 0.0:
            return x, None
        if rng is None:
            raise ValueError("Dropout needs a random generator (rng) in training mode")
        # The scaled mask doubles as the cache: backward is one multiply.
        scaled_mask = np.multiply(rng.random(x.shape) >= self.rate, 1.0 / (1.0 - self.rate), dtype=x.dtype)
        return x * scaled_mask, scaled_mask

    def backward(
        self, dout: np.ndarray, cache: np.ndarray | None, *, need_dx: bool = True
    ) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        if not need_dx:
            return None, {}
        if cache is None:
            return dout, {}
        return dout * cache, {}

    def __repr__(self) -> str:
        return f"Dropout(rate={self.rate})"


class Flatten(Layer):
    """y = x.reshape(N, -1) in C order (PyTorch's ``flatten(1)``): (N, C, H, W) -> (N, C*H*W); dx = dout reshaped back."""

    def forward(
        self, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, tuple[int, ...]]:
        return x.reshape(len(x), -1), x.shape

    def backward(
        self, dout: np.ndarray, cache: tuple[int, ...], *, need_dx: bool = True
    ) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        return (dout.reshape(cache) if need_dx else None), {}

    def __repr__(self) -> str:
        return "Flatten()"
