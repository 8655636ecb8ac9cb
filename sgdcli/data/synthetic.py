"""Small generated problems for teaching: xor, spirals, moons, circles and sine."""

from __future__ import annotations

import numpy as np

from sgdcli.data.dataset import Dataset


def synthetic(name: str, samples: int, noise: float, rng: np.random.Generator) -> Dataset:
    """Small generated problems: xor, spirals, moons, circles (2-D, 2 classes) and sine (1-D regression)."""
    n = samples
    if name == "sine":
        x = rng.uniform(-3.0, 3.0, size=(n, 1))
        y = np.sin(x) + noise * rng.standard_normal((n, 1))
        return Dataset(x, y, f"synthetic:{name}", ("x",))
    half = n // 2
    labels = np.r_[np.zeros(half, np.int64), np.ones(n - half, np.int64)]
    if name == "xor":
        x = rng.uniform(-1.0, 1.0, size=(n, 2))
        labels = (x[:, 0] * x[:, 1] < 0).astype(np.int64)
    elif name == "spirals":
        t = np.sqrt(rng.uniform(0.0, 1.0, n)) * 3 * np.pi  # sqrt: even density along the arm
        angle = t + np.pi * labels
        x = np.c_[t * np.cos(angle), t * np.sin(angle)] / (3 * np.pi)
    elif name == "moons":
        t = rng.uniform(0.0, np.pi, n)
        x = np.where(labels[:, None] == 0, np.c_[np.cos(t), np.sin(t)], np.c_[1 - np.cos(t), 0.5 - np.sin(t)])
    elif name == "circles":
        t = rng.uniform(0.0, 2 * np.pi, n)
        radius = np.where(labels == 0, 1.0, 0.5)
        x = np.c_[radius * np.cos(t), radius * np.sin(t)]
    else:
        raise ValueError(f"unknown synthetic dataset {name!r}")
    x = x + noise * rng.standard_normal(x.shape)
    return Dataset(x, labels, f"synthetic:{name}", ("x0", "x1"), ("0", "1"))
