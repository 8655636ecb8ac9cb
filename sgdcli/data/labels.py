"""Class labels to class indices 0..C-1 and back to class names."""

from __future__ import annotations

import numpy as np

from sgdcli.errors import DataError


def encode_labels(raw: list[str] | np.ndarray, source: str, class_names: tuple[str, ...] | None = None,
                  rows: np.ndarray | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Class labels -> indices 0..C-1 and the class names.

    Non-negative integer labels keep their value (label 3 is class 3, names "0".."max"); other
    labels are sorted strings. With `class_names` given (a trained model's), labels must be
    among them.
    """
    values = np.asarray(raw).astype(str)
    if class_names is None:
        unique = sorted(set(values.tolist()))
        if all(_is_int(v) and int(v) >= 0 for v in unique):
            class_names = tuple(str(i) for i in range(max(int(v) for v in unique) + 1))
            values = np.array([str(int(v)) for v in values.tolist()])
        else:
            class_names = tuple(unique)
    elif all(_is_int(v) for v in class_names):
        values = np.array([str(int(v)) if _is_int(v) else v for v in values.tolist()])
    lookup = {name: i for i, name in enumerate(class_names)}
    indices = np.empty(len(values), dtype=np.int64)
    for i, value in enumerate(values.tolist()):
        index = lookup.get(value)
        if index is None:
            row = f"row {rows[i]}" if rows is not None else f"sample {i}"
            known = ", ".join(class_names[:12]) + (", ..." if len(class_names) > 12 else "")
            raise DataError(f"{row}: class label {value!r} was not seen in training (known: {known})", source=source)
        indices[i] = index
    return indices, class_names


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
