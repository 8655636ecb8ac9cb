"""Strict JSON (RFC 8259) for every JSON document sgdcli writes or prints for people and other tools:
a non-finite number (a diverged run's NaN or inf loss) is written as null, never as bare NaN or
Infinity, which JavaScript's JSON.parse and other strict parsers refuse.

Imports nothing heavy (no NumPy): the CLI's rendering uses it before a command loads NumPy.
"""

from __future__ import annotations

import json
import math
import numbers
from typing import Any


def nulled(value: Any) -> Any:
    """`value` with every non-finite float, at any depth in dicts, lists and tuples, replaced by None;
    NumPy scalars (np.float32, np.int64, ...) become the Python numbers they hold. Tuples become lists,
    as JSON has only arrays; anything else is returned as it is."""
    if isinstance(value, dict):
        return {key: nulled(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [nulled(item) for item in value]
    if isinstance(value, numbers.Number) and not isinstance(value, (int, float)) and hasattr(value, "item"):
        value = value.item()  # a NumPy scalar (registered as a number without being int or float)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(value: Any, **options: Any) -> str:
    """json.dumps of nulled(`value`) with allow_nan=False: strict JSON, or ValueError, never NaN.
    `options` are json.dumps's (indent, sort_keys, separators, ...)."""
    return json.dumps(nulled(value), allow_nan=False, **options)
