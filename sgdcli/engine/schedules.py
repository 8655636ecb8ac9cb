"""Learning-rate schedules: callables mapping the number of updates done so far (t >= 0) to a step size.

Everything is counted in updates; an epoch-based setting converts once with ``updates_per_epoch``.
"""

from __future__ import annotations

import math
from fractions import Fraction


def _positive_int(label: str, value: int) -> int:
    if int(value) != value or value < 1:
        raise ValueError(f"{label} must be a positive integer, got {value!r}")
    return int(value)


def _non_negative(label: str, value: float) -> float:
    if not value >= 0:
        raise ValueError(f"{label} must be >= 0, got {value!r}")
    return float(value)


class Schedule:
    """Base class: ``schedule(t)`` is the learning rate for the update that follows t completed ones."""

    def __call__(self, t: int) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({settings})"


class Constant(Schedule):
    """lr(t) = learning_rate. PyTorch: no scheduler."""

    def __init__(self, learning_rate: float) -> None:
        self.learning_rate = _non_negative("learning_rate", learning_rate)

    def __call__(self, t: int) -> float:
        return self.learning_rate


class StepDecay(Schedule):
    """lr(t) = learning_rate * factor ** floor(t / step_updates).

    `step_updates` may be fractional (every_epochs = 2.5 with 1 update an epoch decays after
    updates 3, 5, 8, 10, ...); give a Fraction for an exact period, as build_schedule does.
    PyTorch: StepLR(step_size=step_updates, gamma=factor) stepped after every update, when the
    period is a whole number of updates.
    """

    def __init__(self, learning_rate: float, step_updates: int | Fraction, factor: float) -> None:
        self.learning_rate = _non_negative("learning_rate", learning_rate)
        if not step_updates > 0:
            raise ValueError(f"step_updates must be > 0, got {step_updates!r}")
        self.step_updates = Fraction(step_updates)
        self.factor = _non_negative("factor", factor)

    def __call__(self, t: int) -> float:
        return float(self.learning_rate * self.factor ** math.floor(Fraction(int(t)) / self.step_updates))


class ExponentialDecay(Schedule):
    """lr(t) = learning_rate * decay_rate ** (t / decay_updates)  (smooth, not staircase).

    PyTorch: ExponentialLR(gamma=decay_rate ** (1 / decay_updates)) stepped after every update.
    """

    def __init__(self, learning_rate: float, decay_rate: float, decay_updates: int) -> None:
        self.learning_rate = _non_negative("learning_rate", learning_rate)
        self.decay_rate = _non_negative("decay_rate", decay_rate)
        self.decay_updates = _positive_int("decay_updates", decay_updates)

    def __call__(self, t: int) -> float:
        return float(self.learning_rate * self.decay_rate ** (t / self.decay_updates))


class InverseTimeDecay(Schedule):
    """lr(t) = learning_rate / (1 + decay_rate * t / decay_updates)  (Keras' InverseTimeDecay).

    PyTorch has no such class: LambdaLR(lambda t: 1 / (1 + decay_rate * t / decay_updates)).
    """

    def __init__(self, learning_rate: float, decay_rate: float, decay_updates: int) -> None:
        self.learning_rate = _non_negative("learning_rate", learning_rate)
        self.decay_rate = _non_negative("decay_rate", decay_rate)
        self.decay_updates = _positive_int("decay_updates", decay_updates)

    def __call__(self, t: int) -> float:
        return float(self.learning_rate / (1 + self.decay_rate * t / self.decay_updates))


class CosineDecay(Schedule):
    """lr(t) = min_learning_rate + 0.5 * (learning_rate - min_learning_rate) * (1 + cos(pi * min(t, T) / T)),
    T = total_updates - 1: the first update (t = 0) uses learning_rate, the last one (t = T)
    min_learning_rate, which holds afterwards. With a single update, T = 0: it uses learning_rate.

    PyTorch: CosineAnnealingLR(T_max=total_updates - 1, eta_min=min_learning_rate) stepped after
    every update (its closed form).
    """

    def __init__(self, learning_rate: float, total_updates: int, min_learning_rate: float = 0.0) -> None:
        self.learning_rate = _non_negative("learning_rate", learning_rate)
        self.total_updates = _positive_int("total_updates", total_updates)
        self.min_learning_rate = _non_negative("min_learning_rate", min_learning_rate)

    def __call__(self, t: int) -> float:
        last = self.total_updates - 1
        progress = min(t, last) / last if last else 0.0
        return float(self.min_learning_rate + 0.5 * (self.learning_rate - self.min_learning_rate) * (
            1 + math.cos(math.pi * progress)
        ))


class Warmup(Schedule):
    """Linear warmup in front of another schedule, W = warmup_updates:

    lr(t) = schedule(t) * (t + 1) / W  for t < W;   lr(t) = schedule(t)  afterwards.

    PyTorch: the wrapped schedule's factor times LinearLR(start_factor=1/W, end_factor=1,
    total_iters=W - 1)'s, i.e. LambdaLR(lambda t: min(1, (t + 1) / W) * factor(t)).
    """

    def __init__(self, schedule: Schedule, warmup_updates: int) -> None:
        if not isinstance(schedule, Schedule):
            raise TypeError(f"Warmup wraps a Schedule, got {schedule!r}")
        if int(warmup_updates) != warmup_updates or warmup_updates < 0:
            raise ValueError(f"warmup_updates must be a non-negative integer, got {warmup_updates!r}")
        self.schedule = schedule
        self.warmup_updates = int(warmup_updates)

    def __call__(self, t: int) -> float:
        if t < self.warmup_updates:
            return float(self.schedule(t) * (t + 1) / self.warmup_updates)
        return self.schedule(t)
