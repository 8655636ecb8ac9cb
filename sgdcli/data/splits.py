"""Holding out a validation split, stratified by class when asked."""

from __future__ import annotations

import numpy as np

from sgdcli.data.dataset import Dataset
from sgdcli.errors import DataError


def split(data: Dataset, fraction: float, rng: np.random.Generator, stratify: bool) -> tuple[Dataset, Dataset | None]:
    """Hold out `fraction` of the samples (per class when `stratify`); both parts keep file order.

    DataError naming the class when rounding would put all of a class's samples in validation
    (e.g. fraction 0.6 of a class with one sample): the model could never learn it.
    """
    if fraction <= 0:
        return data, None
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
    val_index = np.sort(np.concatenate(held))
    if len(val_index) == 0 or len(val_index) == len(data):
        raise DataError(f"a validation fraction of {fraction} leaves an empty split of {len(data)} samples",
                        source=data.source)
    train_mask = np.ones(len(data), bool)
    train_mask[val_index] = False
    return data.subset(np.flatnonzero(train_mask)), data.subset(val_index)
