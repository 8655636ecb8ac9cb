"""Weight initialisers: ``fn(rng, fan_in, fan_out, dtype, shape=None) -> array``.

The array has shape (fan_in, fan_out) unless ``shape`` is given: a conv kernel (F, C, kh, kw)
passes fan_in = C*kh*kw and fan_out = F*kh*kw (the convention of PyTorch and Keras).

Values are always drawn in float64 from the given generator and then cast, so a float32
and a float64 model built from the same seed start from the same (rounded) weights.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import DTypeLike

Shape = tuple[int, ...] | None


def _uniform(rng: np.random.Generator, limit: float, fan_in: int, fan_out: int, dtype: DTypeLike,
             shape: Shape) -> np.ndarray:
    return rng.uniform(-limit, limit, size=shape or (fan_in, fan_out)).astype(dtype, copy=False)


def _normal(rng: np.random.Generator, std: float, fan_in: int, fan_out: int, dtype: DTypeLike,
            shape: Shape) -> np.ndarray:
    return rng.normal(0.0, std, size=shape or (fan_in, fan_out)).astype(dtype, copy=False)


def glorot_uniform(rng: np.random.Generator, fan_in: int, fan_out: int, dtype: DTypeLike,
                shape: Shape = None) -> np.ndarray:
    """Glorot/Xavier uniform: W ~ U(-limit, limit), limit = sqrt(6 / (fan_in + fan_out))."""
    return _uniform(rng, math.sqrt(6.0 / (fan_in + fan_out)), fan_in, fan_out, dtype, shape)


def glorot_normal(rng: np.random.Generator, fan_in: int, fan_out: int, dtype: DTypeLike,
                shape: Shape = None) -> np.ndarray:
    """Glorot/Xavier normal: W ~ N(0, std^2), std = sqrt(2 / (fan_in + fan_out))."""
    return _normal(rng, math.sqrt(2.0 / (fan_in + fan_out)), fan_in, fan_out, dtype, shape)


def he_uniform(rng: np.random.Generator, fan_in: int, fan_out: int, dtype: DTypeLike,
                shape: Shape = None) -> np.ndarray:
    """He/Kaiming uniform: W ~ U(-limit, limit), limit = sqrt(6 / fan_in)."""
    return _uniform(rng, math.sqrt(6.0 / fan_in), fan_in, fan_out, dtype, shape)


def he_normal(rng: np.random.Generator, fan_in: int, fan_out: int, dtype: DTypeLike,
                shape: Shape = None) -> np.ndarray:
    """He/Kaiming normal: W ~ N(0, std^2), std = sqrt(2 / fan_in)."""
    return _normal(rng, math.sqrt(2.0 / fan_in), fan_in, fan_out, dtype, shape)


def small_normal(rng: np.random.Generator, fan_in: int, fan_out: int, dtype: DTypeLike,
                shape: Shape = None) -> np.ndarray:
    """Small Gaussian: W ~ N(0, 0.01^2), independent of the fan sizes."""
    return _normal(rng, 0.01, fan_in, fan_out, dtype, shape)
