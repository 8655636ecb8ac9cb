"""Built-in functions of a few parameters with exact gradients, for watching optimizers move."""

from __future__ import annotations

import numpy as np


class Objective:
    """f(w) and its exact gradient for a parameter vector w (float64 NumPy arithmetic, so a
    diverging w overflows to inf instead of raising)."""

    dims: int = 1
    minima: tuple[tuple[float, ...], ...] = ()  # for plots and tests: where the minima are
    view: tuple[tuple[float, float], ...] = ()  # a plotting window

    def value(self, w: np.ndarray) -> float:
        raise NotImplementedError

    def gradient(self, w: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class DoubleWell(Objective):
    """f(w) = w^4 - 4 w^2 + w;  f'(w) = 4 w^3 - 8 w + 1.

    Local minimum w ≈ 1.347 (f ≈ -2.62), global minimum w ≈ -1.473 (f ≈ -5.44), a barrier
    (local maximum) at w ≈ 0.126 between them.
    """

    dims = 1
    minima = ((1.3473,), (-1.4734,))
    view = ((-2.6, 2.8),)

    def value(self, w: np.ndarray) -> float:
        x = w[0]
        return float(x**4 - 4 * x**2 + x)

    def gradient(self, w: np.ndarray) -> np.ndarray:
        x = w[0]
        return np.array([4 * x**3 - 8 * x + 1])


class Valley(Objective):
    """f(x, y) = (x^2 + condition * y^2) / 2;  grad = (x, condition * y). Minimum at (0, 0).

    Plain gradient descent is stable only for step sizes below 2 / condition, and then crawls
    along x at rate (1 - step): the classic case for momentum and adaptive step sizes.
    """

    dims = 2
    minima = ((0.0, 0.0),)
    view = ((-5.0, 5.0), (-1.5, 1.5))

    def __init__(self, condition: float = 50.0) -> None:
        self.condition = float(condition)

    def value(self, w: np.ndarray) -> float:
        return float(0.5 * (w[0] ** 2 + self.condition * w[1] ** 2))

    def gradient(self, w: np.ndarray) -> np.ndarray:
        return np.array([w[0], self.condition * w[1]], dtype=np.float64)


class Rosenbrock(Objective):
    """f(x, y) = (1 - x)^2 + 100 (y - x^2)^2;  grad = (-2 (1 - x) - 400 x (y - x^2), 200 (y - x^2)).

    A curved, flat-bottomed valley with its minimum at (1, 1).
    """

    dims = 2
    minima = ((1.0, 1.0),)
    view = ((-2.0, 2.0), (-1.0, 3.0))

    def value(self, w: np.ndarray) -> float:
        x, y = w[0], w[1]
        return float((1 - x) ** 2 + 100 * (y - x * x) ** 2)

    def gradient(self, w: np.ndarray) -> np.ndarray:
        x, y = w[0], w[1]
        return np.array([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])


class LeastSquares(Objective):
    """A line y = w·x + b fitted to N points: f(w, b) = (1/N) Σ (w x_i + b − y_i)²  (the `mse` loss);
    over a batch B: grad = (2/|B|) Σ_B r_i (x_i, 1) with r_i = w x_i + b − y_i.

    x, y: (N,) float64. The minimum is the ordinary least-squares fit (np.linalg.lstsq).
    """

    dims = 2
    axis_names = ("w (slope)", "b (intercept)")

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x = np.asarray(x, dtype=np.float64).reshape(-1)
        self.y = np.asarray(y, dtype=np.float64).reshape(-1)
        self.samples = len(self.x)
        design = np.stack([self.x, np.ones_like(self.x)], axis=1)
        best = np.linalg.lstsq(design, self.y, rcond=None)[0]
        self.minima = ((float(best[0]), float(best[1])),)
        span = 1.3 * max(1.0, abs(best[0]), abs(best[1]))
        self.view = ((best[0] - span, best[0] + span), (best[1] - span, best[1] + span))

    def value(self, w: np.ndarray, index: np.ndarray | None = None) -> float:
        x, y = (self.x, self.y) if index is None else (self.x[index], self.y[index])
        residual = w[0] * x + w[1] - y
        return float(np.mean(residual * residual))

    def gradient(self, w: np.ndarray, index: np.ndarray | None = None) -> np.ndarray:
        x, y = (self.x, self.y) if index is None else (self.x[index], self.y[index])
        residual = w[0] * x + w[1] - y
        return np.array([2 * np.mean(residual * x), 2 * np.mean(residual)])
