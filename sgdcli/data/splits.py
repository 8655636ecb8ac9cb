"""Holding out a validation split, stratified by class when asked."""

from __future__ import annotations

import numpy as np

from sgdcli.data.dataset import Dataset
from sgdcli.errors import DataError


def split(data: Dataset, fraction: float, rng: np.random.Generator, stratify: bool) -> tuple[Dataset, Dataset | None]:
    """Hold out `fraction` of the samples (per class when `stratify`); both parts keep file order."""
    mask = validation_mask(data, fraction, rng, stratify)
    return apply_mask(data, mask)


def validation_mask(data: Dataset, fraction: float, rng: np.random.Generator, stratify: bool) -> np.ndarray | None:
    """Boolean (N,): True for the rows held out for validation; None when `fraction` is 0.

    DataError naming the class when rounding would put all of a class's samples in validation
    (e.g. fraction 0.6 of a class with one sample): the model could never learn it.
    """
    if fraction <= 0:
        return None
    classes = np.unique(data.y) if stratify else [None]
    held = []
    for c in classes:
        members = np.arange(len(data)) if c is None else np.flatnonzero(data.y == c)
        count = int(round(fraction * len(members)))
        if c is not None and count == len(members):
            name = data.class_names[c] if data.class_names else str(c)
            raise DataError(f"data.validation {fraction} would hold out all {len(members)} sample(s) of class "
                            f"{name!r}, leaving none of it for training; lower data.validation or add samples of "
                            f"that class", source=data.source)
        held.append(rng.permutation(members)[:count])
    val_index = np.concatenate(held)
    if len(val_index) == 0 or len(val_index) == len(data):
        raise DataError(f"a validation fraction of {fraction} leaves an empty split of {len(data)} samples",
                        source=data.source)
    mask = np.zeros(len(data), bool)
    mask[val_index] = True
    return mask


def apply_mask(data: Dataset, mask: np.ndarray | None) -> tuple[Dataset, Dataset | None]:
    """(training rows, validation rows), both in file order; all rows train when `mask` is None."""
    if mask is None:
        return data, None
    return data.subset(np.flatnonzero(~mask)), data.subset(np.flatnonzero(mask))
