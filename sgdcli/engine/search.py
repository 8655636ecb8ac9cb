"""Derivative-free training: the coefficient-by-coefficient search a learner tries before gradients."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class CoordinateSearch:
    """For each coefficient in turn, everything else frozen: try w + delta and w - delta, keep
    whichever lowers the batch loss (or leave w if neither does), go on to the next one.

    One `step` visits every coefficient once and costs 1 + 2 * (number of coefficients) forward
    passes — against one forward and one backward pass for a gradient step.
    """

    def __init__(self) -> None:
        self.iterations = 0

    def step(self, params: dict[str, np.ndarray], batch_loss: Callable[[], float], delta: float) -> tuple[float, int]:
        """Update `params` in place; return (the batch loss before the sweep, forward passes used)."""
        before = best = batch_loss()
        passes = 1
        for param in params.values():
            # Each coordinate in C order, written into param itself (reshape(-1) would write into a copy
            # of an array that is not C-contiguous).
            for i in np.ndindex(param.shape):
                original = param[i]
                choice = original
                for candidate in (original + delta, original - delta):
                    param[i] = candidate
                    value = batch_loss()
                    passes += 1
                    if value < best:
                        best, choice = value, param[i]
                param[i] = choice
        self.iterations += 1
        return before, passes

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"iterations": np.array(self.iterations, dtype=np.int64)}

    def load_state_dict(self, state: dict[str, np.ndarray], params: dict[str, np.ndarray] | None = None) -> None:
        self.iterations = int(state["iterations"])
