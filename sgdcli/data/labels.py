"""Class labels to class indices 0..C-1 and back to class names.

The encoding is scikit-learn's LabelEncoder: the sorted distinct labels become 0..C-1, numbers
sorted by value, strings by text. Numbers are one class whatever their spelling (`1`, `1.0`,
`01` in one column are class "1"), so the class names are canonical texts: "1", "2.5", "cat".
Work is done on the distinct values only; no per-row Python objects are made.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from decimal import Decimal

import numpy as np

from sgdcli.errors import DataError

# A decimal number as a data file spells it (no 0x, no underscores, ASCII digits only).
NUMBER = re.compile(r"^\s*[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|inf|infinity|nan)\s*$", re.ASCII | re.IGNORECASE)

# Spellings of a missing value (pandas' defaults, less "None", which can be a real class name).
MISSING = frozenset({"NA", "N/A", "n/a", "#N/A", "#NA", "<NA>", "NULL", "null"})

INTEGER = re.compile(r"^\s*[+-]?\d+\s*$", re.ASCII)

Locate = Callable[[int], str]  # sample index -> "row 17" (how the source names a sample)


def encode_labels(raw: np.ndarray, source: str, class_names: Sequence[str] | None = None,
                  locate: Locate | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Class labels (N,) of numbers or strings -> (indices (N,) int64, class names).

    Without `class_names` (training data) the sorted distinct labels are the classes and a single
    class is a DataError. With `class_names` (a trained model's) every label must be one of them.
    `locate` names sample i in messages (default "sample i").
    """
    raw = np.asarray(raw)
    if raw.dtype.kind not in "biufUS":
        raise DataError(f"expected class labels that are numbers or strings, received {raw.dtype}", source=source)
    distinct, codes = np.unique(raw, return_inverse=True)
    return encode_codes(distinct.tolist(), codes.reshape(-1), source, class_names, locate)


def encode_codes(distinct: list, codes: np.ndarray, source: str, class_names: Sequence[str] | None = None,
                 locate: Locate | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """The same, for labels given as `distinct` values and per-sample `codes` indexing them."""
    locate = locate or (lambda i: f"sample {i}")
    names = []
    for position, value in enumerate(distinct):
        name = class_name(value)
        if name is None:
            at = locate(int(np.argmax(codes == position)))
            raise DataError(f"{at}: expected a class label (a number or a name), received {value!r} (empty cells, "
                            f"missing-value markers such as NA and non-finite numbers are not labels)", source=source)
        names.append(name)
    if class_names is None:
        class_names = sort_class_names(set(names))
        if len(class_names) < 2:
            raise DataError(f"the target has a single class, {class_names[0]!r}; classification needs at least 2",
                            source=source)
    class_names = tuple(class_names)
    lookup = {class_name(name) or name: i for i, name in enumerate(class_names)}
    mapping = np.empty(len(names), dtype=np.int64)
    for position, name in enumerate(names):
        index = lookup.get(name)
        if index is None:
            at = locate(int(np.argmax(codes == position)))
            known = ", ".join(class_names[:12]) + (", ..." if len(class_names) > 12 else "")
            raise DataError(f"{at}: class label {name!r} was not seen in training (known: {known})", source=source)
        mapping[position] = index
    return mapping[codes], class_names


def class_name(value: object) -> str | None:
    """The canonical name of one label: numbers as their value ("1.0" -> "1"), names stripped;
    None for an empty, missing (MISSING) or non-finite label."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        text = value.strip()
        if not text or text in MISSING:
            return None
        if not NUMBER.match(text):
            return text
        if INTEGER.match(text):  # exactly, even beyond 2**53
            return str(int(text))
        value = float(text)
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number):
        return None
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return str(int(number)) if number.is_integer() and abs(number) < 2**63 else repr(number)


def sort_class_names(names: set[str]) -> tuple[str, ...]:
    """Numbers by value when every name is a number (2 before 10), otherwise by text."""
    if all(NUMBER.match(name) for name in names):
        return tuple(sorted(names, key=Decimal))  # exact, so 2**53 + 1 sorts after 2**53
    return tuple(sorted(names))
