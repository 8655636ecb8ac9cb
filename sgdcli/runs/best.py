"""What "best" means, in one place: the epoch with the lowest validation loss (the whole-training-set
loss when there is no validation set, else the mean batch loss); a non-finite loss is never best.
Training keeps that epoch's state as checkpoints/best.safetensors; eval uses it; compare reports
that epoch's metrics."""

from __future__ import annotations

import math
from typing import Any

SCORE_COLUMNS = ("val_loss", "train_loss_full", "train_loss")  # the first one a row has is its score


def score_column(row: dict[str, Any]) -> str | None:
    """The column of a metrics row that "best" minimises (the first of SCORE_COLUMNS it has), or None."""
    return next((key for key in SCORE_COLUMNS if row.get(key) is not None), None)


def score(row: dict[str, Any]) -> float | None:
    """The number "best" minimises for one metrics row (lower is better); None if not finite."""
    key = score_column(row)
    value = None if key is None else row[key]
    return value if value is not None and math.isfinite(value) else None


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first row with the lowest score (the epoch training kept as best), or None."""
    best, best_score = None, None
    for row in rows:
        value = score(row)
        if value is not None and (best_score is None or value < best_score):
            best, best_score = row, value
    return best
