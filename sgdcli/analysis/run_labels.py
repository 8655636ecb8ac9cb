"""Short names for runs side by side (tables and plot legends): what differs between them, never truncated."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

# The field's usual short forms, used in run labels only (column headers keep the config's words).
ABBREVIATIONS = {"learning_rate": "lr", "momentum": "m"}


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key -> its shortest dotted suffix that no other key ends with: the last segment when
    it is unique (`optimizer.momentum` -> `momentum`), more segments when not (`a.size`, `b.size`)."""
    short = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if not any(other != key and (other == suffix or other.endswith("." + suffix)) for other in keys):
                break
        short[key] = suffix
    return short


def run_labels(names: Sequence[str], values: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[str]:
    """One distinct label per run: `key=value` for each of `keys` (the config values that differ, e.g.
    `lr=0.05 m=0.9`); when those do not tell the runs apart, the part of the run names that differs
    (the names without their shared leading and trailing `-` parts); else the full names."""
    short = short_keys(keys)
    if keys:
        labels = [" ".join(f"{ABBREVIATIONS.get(short[k], short[k])}={_value(v.get(k))}" for k in keys)
                  for v in values]
        if len(set(labels)) == len(labels):
            return labels
    unique = _distinct_parts(names)
    return unique if len(set(unique)) == len(unique) else list(names)


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value).lower() if isinstance(value, bool) else str(value)


def _distinct_parts(names: Sequence[str]) -> list[str]:
    """Names split at `-`, without the parts every name shares at the start and at the end."""
    if len(names) < 2:
        return list(names)
    split = [name.split("-") for name in names]
    shortest = min(len(parts) for parts in split)
    lead = 0
    while lead < shortest - 1 and len({parts[lead] for parts in split}) == 1:
        lead += 1
    trail = 0
    while trail < shortest - lead - 1 and len({parts[-1 - trail] for parts in split}) == 1:
        trail += 1
    return ["-".join(parts[lead : len(parts) - trail]) for parts in split]
