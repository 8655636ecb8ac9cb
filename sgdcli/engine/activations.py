"""Elementwise activation functions: small stateless objects with forward and backward."""

from __future__ import annotations

import numpy as np


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function 1 / (1 + exp(-z)), same dtype as ``z``.

    Only exp(-|z|) <= 1 is ever evaluated, so large |z| cannot overflow:
    z >= 0: 1 / (1 + e),  z < 0: e / (1 + e),  with e = exp(-|z|).
    """
    e = np.exp(-np.abs(z))
    numerator = np.where(z >= 0, 1, e)
    e += 1
    numerator /= e
    return numerator


class Activation:
    """Base class: ``a = forward(z)`` elementwise and ``dz = backward(dout, z, a)``.

    ``backward`` receives dL/da (``dout``), the pre-activation ``z`` and the output ``a``
    of the matching forward call and returns dL/dz as a new array; it never writes into
    ``dout``. Activations hold hyperparameters only, so one instance can be shared.
    """

    def forward(self, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dout: np.ndarray, z: np.ndarray, a: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(vars(self).items()))))


class ReLU(Activation):
    """a = max(z, 0);  dz = dout * [z > 0]  (subgradient 0 at z = 0)."""

    def forward(self, z: np.ndarray) -> np.ndarray:
        return np.maximum(z, 0)

    def backward(self, dout: np.ndarray, z: np.ndarray, a: np.ndarray) -> np.ndarray:
        return np.where(z > 0, dout, 0)


class LeakyReLU(Activation):
    """a = z if z > 0 else negative_slope * z;  dz = dout * (1 if z > 0 else negative_slope)."""

    def __init__(self, negative_slope: float = 0.01) -> None:
        self.negative_slope = float(negative_slope)

    def forward(self, z: np.ndarray) -> np.ndarray:
        return np.where(z > 0, z, z * self.negative_slope)

    def backward(self, dout: np.ndarray, z: np.ndarray, a: np.ndarray) -> np.ndarray:
        return np.where(z > 0, dout, dout * self.negative_slope)

    def __repr__(self) -> str:
        return f"LeakyReLU(negative_slope={self.negative_slope})"


class Sigmoid(Activation):
    """a = 1 / (1 + exp(-z)) (stable for any z);  dz = dout * a * (1 - a)."""

    def forward(self, z: np.ndarray) -> np.ndarray:
        return sigmoid(z)

    def backward(self, dout: np.ndarray, z: np.ndarray, a: np.ndarray) -> np.ndarray:
        dz = np.subtract(1, a)
        dz *= a
        dz *= dout
        return dz


class Tanh(Activation):
    """a = tanh(z);  dz = dout * (1 - a^2)."""

    def forward(self, z: np.ndarray) -> np.ndarray:
        return np.tanh(z)

    def backward(self, dout: np.ndarray, z: np.ndarray, a: np.ndarray) -> np.ndarray:
        dz = np.square(a)
        np.subtract(1, dz, out=dz)
        dz *= dout
        return dz


class Identity(Activation):
    """a = z;  dz = dout. Returns its inputs unchanged (no copy); callers never write into them."""

    def forward(self, z: np.ndarray) -> np.ndarray:
        return z

    def backward(self, dout: np.ndarray, z: np.ndarray, a: np.ndarray) -> np.ndarray:
        return dout
