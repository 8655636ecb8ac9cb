"""Per-channel arithmetic on channels-last rows in NumPy's long loops: the channel vector tiled along wide rows.

Batch norm, conv biases and pooled values do ``rows (M, C) op vector (C,)`` on channels-last
activations. NumPy runs that as M inner loops of C values each (C = 32 or 64 here), and the
per-loop overhead makes it ~2.2x slower than an operation on two arrays of one shape, which runs
as one long loop (on the CNN race's batch norm 1, 64 images of (26*26, 32) on one thread:
subtract 0.46 ms against 0.19, maximum 0.44 against 0.21, multiply 0.43 against 0.20).
Viewing G consecutive rows as one wide row of G*C values, with the vector tiled G times
(``np.tile``), performs the same operation on every value (each still meets its own channel's
entry): the same bits, in loops of G*C values.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

MAX_WIDTH = 1 << 15  # values in a wide row: 128 KiB of float32, so the tiled vector stays in cache


def group(rows_per_sample: int, channels: int) -> int:
    """G: the largest divisor of ``rows_per_sample`` with G * channels <= MAX_WIDTH (1 at least).

    A divisor, so that ranges of whole samples (what ``workers.split`` hands out) are ranges of wide rows."""
    return _group(rows_per_sample, channels, MAX_WIDTH)


@lru_cache(maxsize=256)  # a few shapes per model, asked for by every pass of every update
def _group(rows_per_sample: int, channels: int, max_width: int) -> int:
    best = 1
    for g in range(1, min(rows_per_sample, max_width // max(channels, 1)) + 1):
        if rows_per_sample % g == 0:
            best = g
    return best


class WideRows:
    """Channels-last rows (M, C) viewed as (M / G, G * C), and channel vectors tiled to match.

    ``rows_per_sample``: the rows of one sample (H*W for images, 1 for dense features): G divides
    it. Arrays given to ``view`` must be C-contiguous (M, C) (it raises otherwise); G is 1 (plain
    broadcasting, nothing gained) when any array given here is not.
    """

    def __init__(self, rows_per_sample: int, channels: int, *arrays: np.ndarray) -> None:
        contiguous = all(a.flags.c_contiguous and a.ndim == 2 and a.shape[1] == channels for a in arrays)
        self.g = group(rows_per_sample, channels) if contiguous else 1
        self.channels = channels

    def view(self, rows: np.ndarray) -> np.ndarray:
        """rows (M, C) as wide rows (M / G, G*C): a view (for G > 1 ``rows`` must be C-contiguous)."""
        if self.g == 1:
            return rows
        if not rows.flags.c_contiguous:
            raise ValueError(f"WideRows.view needs C-contiguous rows, got strides {rows.strides}")
        return rows.reshape(-1, self.g * self.channels)

    def tile(self, vector: np.ndarray) -> np.ndarray:
        """A channel vector (C,) tiled to (G*C,): entry g*C + c is vector[c]."""
        return vector if self.g == 1 else np.tile(vector, self.g)

    def span(self, start: int, stop: int) -> slice:
        """Rows [start, stop) (multiples of G: whole samples) as a slice of wide rows."""
        return slice(start // self.g, stop // self.g)
