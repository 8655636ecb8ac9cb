"""Feature scaling fit on the training split: standard, minmax, unit (pixels) or none."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CHUNK = 4096  # rows converted at a time: temporaries stay a few MB whatever the data size


@dataclass(frozen=True)
class Scaler:
    """x -> (x - shift) / scale per feature, fit on the training split."""

    shift: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, kind: str) -> "Scaler":
        """standard: mean and standard deviation; minmax: to [0, 1]; unit: integer pixels / their
        type's maximum (uint8: 255); none: unchanged."""
        width = x.shape[1]
        shift, scale = np.zeros(width), np.ones(width)
        if kind == "standard":
            shift, variance = _moments(x)
            scale = np.sqrt(variance)
        elif kind == "minmax":
            shift = x.min(axis=0).astype(np.float64)
            scale = x.max(axis=0) - shift
        elif kind == "unit" and x.dtype.kind in "ui":
            scale = np.full(width, float(np.iinfo(x.dtype).max))
        scale = np.where(scale > 0, scale, 1.0)  # constant features stay constant (0)
        return cls(shift.astype(np.float64), scale.astype(np.float64))

    def transform(self, x: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """A new array of `dtype`, filled chunk by chunk (no full-size float64 temporary)."""
        out = np.empty(x.shape, dtype=dtype)
        for start in range(0, len(x), CHUNK):
            out[start : start + CHUNK] = (x[start : start + CHUNK] - self.shift) / self.scale
        return out


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and variance in float64, merging chunk statistics (Chan et al.)."""
    count, mean, m2 = 0, np.zeros(x.shape[1]), np.zeros(x.shape[1])
    for start in range(0, len(x), CHUNK):
        chunk = x[start : start + CHUNK].astype(np.float64)
        n = len(chunk)
        chunk_mean = chunk.mean(axis=0)
        chunk_m2 = ((chunk - chunk_mean) ** 2).sum(axis=0)
        delta = chunk_mean - mean
        total = count + n
        mean = mean + delta * (n / total)
        m2 = m2 + chunk_m2 + delta**2 * (count * n / total)
        count = total
    return mean, m2 / max(count, 1)
