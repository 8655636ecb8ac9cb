"""Holding out a validation split, stratified by class when asked."""

from __future__ import annotations

import numpy as np

from sgdcli.data.dataset import Dataset
from sgdcli.errors import DataError


def split(data: Dataset, fraction: float, rng: np.random.Generator, stratify: bool) -> tuple[Dataset, Dataset | None]:
    """Hold out `fraction` of the samples (per class when `stratify`); both parts keep file order."""
    if fraction <= 0:
        return data, None
    groups = [np.flatnonzero(data.y == c) for c in np.unique(data.y)] if stratify else [np.arange(len(data))]
    held = []
    for members in groups:
        count = int(round(fraction * len(members)))
        held.append(rng.permutation(members)[:count])
    val_index = np.sort(np.concatenate(held))
    if len(val_index) == 0 or len(val_index) == len(data):
        raise DataError(f"a validation fraction of {fraction} leaves an empty split of {len(data)} samples",
                        source=data.source)
    train_mask = np.ones(len(data), bool)
    train_mask[val_index] = False
    return data.subset(np.flatnonzero(train_mask)), data.subset(val_index)
