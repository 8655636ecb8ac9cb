"""Elementwise activation functions: small stateless objects with forward and backward."""

from __future__ import annotations

import numpy as np

from .workers import MIN_BYTES, split


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function 1 / (1 + exp(-z)), same dtype as ``z``.

    Only exp(-|z|) <= 1 is ever evaluated, so large |z| cannot overflow:
    z >= 0: 1 / (1 + e),  z < 0: e / (1 + e),  with e = exp(-|z|).
    """
    e = np.exp(-np.abs(z))
    # The numerator: 1 where z >= 0, else e (as e <= 1, this max is it; np.where is far slower).
    numerator = np.maximum(e, z >= 0)
    e += 1
    numerator /= e
    return numerator


class Activation:
    """Base class: ``a = forward(z)`` elementwise and ``dz = backward(dout, z, a)``.

    ``backward`` receives dL/da (``dout``), the pre-activation ``z`` and the output ``a``
    of the matching forward call and returns dL/dz as a new array; it never writes into
    ``dout``. Activations hold hyperparameters only, so one instance can be shared.

    ``forward_in_place(z)`` is for a caller that no longer needs z (a Dense layer): an
    activation whose backward reads only ``a`` computes a in z's own buffer, so the layer
    keeps one activation-sized array instead of two. By default it is ``forward(z)``.

    ``non_decreasing``: z1 <= z2 implies forward(z1) <= forward(z2) exactly in floating point, so a
    maximum commutes with the activation (``fusion.ConvMaxPool`` pools before activating). True for
    the piecewise-linear ones; sigmoid and tanh are non-decreasing in exact arithmetic, but their
    float exp need not be to the last bit, so they say False.
    """

    non_decreasing = False

    def forward(self, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def forward_in_place(self, z: np.ndarray) -> np.ndarray:
        """``forward(z)``, possibly overwriting z; only for activations whose backward never reads z."""
        return self.forward(z)

    def backward(self, dout: np.ndarray, z: np.ndarray, a: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(vars(self).items()))))


def _zero_row(z: np.ndarray) -> np.ndarray:
    # np.maximum(z, 0) takes an unvectorised loop for the scalar; a broadcast row of zeros is ~4x faster.
    return np.zeros(z.shape[-1:], z.dtype)


class ReLU(Activation):
    """a = max(z, 0);  dz = dout * [a > 0]  (= [z > 0]; subgradient 0 at z = 0).

    Backward reads only a, so ``forward_in_place`` reuses z's buffer. Backward writes the mask
    as 0.0 / 1.0 into its result and multiplies in place: no temporary, and np.where would be
    ~10x slower on a random mask. Large arrays go by rows on two threads (``workers.split``).
    """

    non_decreasing = True

    def forward(self, z: np.ndarray) -> np.ndarray:
        return self._maximum(z, np.empty_like(z))

    def forward_in_place(self, z: np.ndarray) -> np.ndarray:
        return self._maximum(z, z)

    @staticmethod
    def _maximum(z: np.ndarray, out: np.ndarray) -> np.ndarray:
        zero = _zero_row(z)
        if z.ndim == 0 or 2 * z.nbytes < MIN_BYTES:  # one thread: the whole pass, no slices (a batch-1 row)
            return np.maximum(z, zero, out=out)
        split(len(z), lambda a, b: np.maximum(z[a:b], zero, out=out[a:b]), 2 * z.nbytes)
        return out

    def backward(self, dout: np.ndarray, z: np.ndarray, a: np.ndarray) -> np.ndarray:
        dz = np.empty_like(dout)
        if dz.ndim == 0:
            return np.multiply(dout, a > 0, out=dz)
        if 3 * dz.nbytes < MIN_BYTES:  # one thread, one chunk: the two passes whole (a batch-1 row: ~2 us less)
            np.greater(a, 0, out=dz)
            dz *= dout
            return dz

        def rows(start: int, stop: int) -> None:
            np.greater(a[start:stop], 0, out=dz[start:stop])
            dz[start:stop] *= dout[start:stop]

        split(len(dz), rows, 3 * dz.nbytes, chunked=True)
        return dz


class LeakyReLU(Activation):
    """a = z if z > 0 else negative_slope * z;  dz = dout * (1 if z > 0 else negative_slope)."""

    non_decreasing = True

    def __init__(self, negative_slope: float = 0.01) -> None:
        if not 0 <= negative_slope <= 1:
            raise ValueError(f"negative_slope must be in [0, 1], got {negative_slope}")
        self.negative_slope = float(negative_slope)

    def forward(self, z: np.ndarray) -> np.ndarray:
        # With 0 <= negative_slope <= 1 this max is the formula (np.where is ~10x slower).
        return np.maximum(z, np.multiply(z, self.negative_slope))

    def backward(self, dout: np.ndarray, z: np.ndarray, a: np.ndarray) -> np.ndarray:
        dz = np.multiply(dout, z > 0)
        dz += np.multiply(dout, self.negative_slope) * (z <= 0)
        return dz

    def __repr__(self) -> str:
        return f"LeakyReLU(negative_slope={self.negative_slope})"


class Sigmoid(Activation):
    """a = 1 / (1 + exp(-z)) (stable for any z);  dz = dout * a * (1 - a)."""

    def forward(self, z: np.ndarray) -> np.ndarray:
        return sigmoid(z)

    def forward_in_place(self, z: np.ndarray) -> np.ndarray:
        z[...] = sigmoid(z)
        return z

    def backward(self, dout: np.ndarray, z: np.ndarray, a: np.ndarray) -> np.ndarray:
        dz = np.subtract(1, a)
        dz *= a
        dz *= dout
        return dz


class Tanh(Activation):
    """a = tanh(z);  dz = dout * (1 - a^2)."""

    def forward(self, z: np.ndarray) -> np.ndarray:
        return np.tanh(z)

    def forward_in_place(self, z: np.ndarray) -> np.ndarray:
        return np.tanh(z, out=z)

    def backward(self, dout: np.ndarray, z: np.ndarray, a: np.ndarray) -> np.ndarray:
        dz = np.square(a)
        np.subtract(1, dz, out=dz)
        dz *= dout
        return dz


class Identity(Activation):
    """a = z;  dz = dout. Returns its inputs unchanged (no copy); callers never write into them."""

    non_decreasing = True

    def forward(self, z: np.ndarray) -> np.ndarray:
        return z

    def backward(self, dout: np.ndarray, z: np.ndarray, a: np.ndarray) -> np.ndarray:
        return dout
