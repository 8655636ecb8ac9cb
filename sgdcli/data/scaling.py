"""Feature scaling fit on the training split: standard, minmax, unit (pixels) or none."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sgdcli.errors import CheckpointError

CHUNK = 4096  # rows converted at a time: temporaries stay a few MB whatever the data size


@dataclass(frozen=True)
class Scaler:
    """x -> (x - shift) / scale per feature, fit on the training split."""

    shift: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, kind: str) -> "Scaler":
        """standard: mean and standard deviation; minmax: to [0, 1]; unit: integer pixels / their
        type's maximum (uint8: 255); none: unchanged.

        A constant column gets scale 1 (it becomes 0, and a new value off the constant stays
        near it). Constant is decided as scikit-learn's scalers do, with a tolerance for the
        rounding residue of the statistics: standard, variance <= N·eps·var + (N·eps·mean)²
        (StandardScaler's `_is_constant_feature`); minmax, range <= 10·eps·max(|min|, |max|)
        (MinMaxScaler's `_handle_zeros_in_scale`, made relative to the column's magnitude).
        """
        width = x.shape[1]
        shift, scale = np.zeros(width), np.ones(width)
        eps = np.finfo(np.float64).eps
        if kind == "standard":
            shift, variance = _moments(x)
            n = len(x)
            constant = variance <= n * eps * variance + (n * shift * eps) ** 2
            scale = np.where(constant, 1.0, np.sqrt(variance))
        elif kind == "minmax":
            shift = x.min(axis=0).astype(np.float64)
            top = x.max(axis=0).astype(np.float64)
            scale = top - shift
            scale = np.where(scale <= 10 * eps * np.maximum(np.abs(shift), np.abs(top)), 1.0, scale)
        elif kind == "unit" and x.dtype.kind in "ui":
            scale = np.full(width, float(np.iinfo(x.dtype).max))
        return cls(shift.astype(np.float64), scale.astype(np.float64))

    @classmethod
    def restore(cls, shift: np.ndarray, scale: np.ndarray, source: str) -> "Scaler":
        """A scaler from stored vectors (a checkpoint's); CheckpointError naming `source` unless
        both are finite float vectors of one length and every scale is > 0."""
        for name, values in (("shift", shift), ("scale", scale)):
            if values.ndim != 1 or values.dtype.kind != "f":
                raise CheckpointError(f"data/{name}: expected floats of shape (D,), received {values.dtype} "
                                      f"{values.shape}", source=source)
            if not np.isfinite(values).all():
                index = int(np.argmax(~np.isfinite(values)))
                raise CheckpointError(f"data/{name}[{index}]: expected a finite number, received {values[index]}",
                                      source=source)
        if shift.shape != scale.shape:
            raise CheckpointError(f"data/scale: expected the shape of data/shift {shift.shape}, received "
                                  f"{scale.shape}", source=source)
        if (scale <= 0).any():
            index = int(np.argmax(scale <= 0))
            raise CheckpointError(f"data/scale[{index}]: expected a scale > 0, received {scale[index]}", source=source)
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
