"""Learning-rate schedules: callables mapping the number of updates done so far (t >= 0) to a step size.

Everything is counted in updates; an epoch-based setting converts once with ``updates_per_epoch``.
"""

from __future__ import annotations

import math


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
    """lr(t) = learning_rate."""

    def __init__(self, learning_rate: float) -> None:
        self.learning_rate = _non_negative("learning_rate", learning_rate)

    def __call__(self, t: int) -> float:
        return self.learning_rate


class StepDecay(Schedule):
    """lr(t) = learning_rate * factor ** (t // step_updates)."""

    def __init__(self, learning_rate: float, step_updates: int, factor: float) -> None:
        self.learning_rate = _non_negative("learning_rate", learning_rate)
        self.step_updates = _positive_int("step_updates", step_updates)
        self.factor = _non_negative("factor", factor)

    def __call__(self, t: int) -> float:
        return float(self.learning_rate * self.factor ** (int(t) // self.step_updates))


class ExponentialDecay(Schedule):
    """lr(t) = learning_rate * decay_rate ** (t / decay_updates)  (smooth, not staircase)."""

    def __init__(self, learning_rate: float, decay_rate: float, decay_updates: int) -> None:
        self.learning_rate = _non_negative("learning_rate", learning_rate)
        self.decay_rate = _non_negative("decay_rate", decay_rate)
        self.decay_updates = _positive_int("decay_updates", decay_updates)

    def __call__(self, t: int) -> float:
        return float(self.learning_rate * self.decay_rate ** (t / self.decay_updates))


class InverseTimeDecay(Schedule):
    """lr(t) = learning_rate / (1 + decay_rate * t / decay_updates)."""

    def __init__(self, learning_rate: float, decay_rate: float, decay_updates: int) -> None:
        self.learning_rate = _non_negative("learning_rate", learning_rate)
        self.decay_rate = _non_negative("decay_rate", decay_rate)
        self.decay_updates = _positive_int("decay_updates", decay_updates)

    def __call__(self, t: int) -> float:
        return float(self.learning_rate / (1 + self.decay_rate * t / self.decay_updates))


class CosineDecay(Schedule):
    """lr(t) = min_learning_rate + 0.5 * (learning_rate - min_learning_rate) * (1 + cos(pi * min(t, T) / T)),
    T = total_updates; it stays at min_learning_rate after T updates."""

    def __init__(self, learning_rate: float, total_updates: int, min_learning_rate: float = 0.0) -> None:
        self.learning_rate = _non_negative("learning_rate", learning_rate)
        self.total_updates = _positive_int("total_updates", total_updates)
        self.min_learning_rate = _non_negative("min_learning_rate", min_learning_rate)

    def __call__(self, t: int) -> float:
        progress = min(t, self.total_updates) / self.total_updates
        return float(self.min_learning_rate + 0.5 * (self.learning_rate - self.min_learning_rate) * (
            1 + math.cos(math.pi * progress)
        ))


class Warmup(Schedule):
    """Linear warmup in front of another schedule, W = warmup_updates:

    lr(t) = schedule(t) * (t + 1) / W  for t < W;   lr(t) = schedule(t)  afterwards.
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
