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
    members = [np.arange(len(data)) if c is None else np.flatnonzero(data.y == c) for c in classes]
    names = [None if c is None else data.class_names[c] if data.class_names else str(c) for c in classes]
    counts = held_out_counts([len(m) for m in members], names, fraction, data.source)
    val_index = np.concatenate([rng.permutation(m)[:count] for m, count in zip(members, counts)])
    mask = np.zeros(len(data), bool)
    mask[val_index] = True
    return mask


def held_out_counts(counts: list[int], names: list[str | None], fraction: float, source: str) -> list[int]:
    """How many samples of each group (a class, or None: all samples) the validation split holds:
    round(fraction * count) per group, Python's round (half to even). The one place this is decided:
    `validation_mask` draws that many, `validate` counts them from the class counts alone.

    DataError naming the class when that is all of a class's samples, or when either split is empty.
    """
    held = []
    for count, name in zip(counts, names):
        size = int(round(fraction * count))
        if name is not None and size == count:
            raise DataError(f"data.validation {fraction} would hold out all {count} sample(s) of class "
                            f"{name!r}, leaving none of it for training; lower data.validation or add samples of "
                            f"that class", source=source)
        held.append(size)
    total = sum(counts)
    if sum(held) == 0 or sum(held) == total:
        raise DataError(f"a validation fraction of {fraction} leaves an empty split of {total} samples",
                        source=source)
    return held


def apply_mask(data: Dataset, mask: np.ndarray | None) -> tuple[Dataset, Dataset | None]:
    """(training rows, validation rows), both in file order; all rows train when `mask` is None."""
    if mask is None:
        return data, None
    return data.subset(np.flatnonzero(~mask)), data.subset(np.flatnonzero(mask))
