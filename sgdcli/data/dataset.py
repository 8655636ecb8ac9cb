"""A loaded data set: features, targets, names and the shape of one sample."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Dataset:
    """Features x (N, D) and targets y: class indices (N,) int64, or values (N, K) float64.

    x is float64 for tables and stays in its stored type (uint8) for images until scaling, so a
    large image set is converted to float once, straight into the training dtype.
    `sample_shape` is the shape of one sample before flattening ((28, 28) for an image).
    """

    x: np.ndarray
    y: np.ndarray
    source: str
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...] | None = None  # None for regression targets
    sample_shape: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, index: np.ndarray) -> "Dataset":
        return replace(self, x=self.x[index], y=self.y[index])


@dataclass(frozen=True)
class DataShape:
    """What `validate` needs to know of a data file without reading its features: the number of
    samples, the features' names and one sample's shape, and the targets — class indices (N,)
    int64 with `class_names`, or for regression only their width (`y` None)."""

    rows: int
    source: str
    feature_names: tuple[str, ...]
    sample_shape: tuple[int, ...]
    y: np.ndarray | None = None  # class indices (N,); None for regression targets
    class_names: tuple[str, ...] | None = None
    target_width: int = 1  # regression target columns
