"""The training loop: draw a batch, forward, loss, backward, step. No printing, no files."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from sgdcli.engine.losses import Loss
from sgdcli.engine.model import Sequential
from sgdcli.engine.optimizers import Optimizer, clip_by_global_norm
from sgdcli.engine.schedules import Schedule
from sgdcli.errors import DivergenceError


@dataclass
class Problem:
    """Everything one training run updates or reads, already built from the config."""

    model: Sequential
    loss: Loss
    optimizer: Optimizer
    schedule: Schedule
    x: np.ndarray
    y: np.ndarray
    batch_size: int
    shuffle: bool = True
    clip_norm: float | None = None

    @property
    def updates_per_epoch(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)


@dataclass
class Position:
    """How far training has gone; saved in checkpoints."""

    epoch: int = 0  # completed epochs
    updates: int = 0
    samples: int = 0


@dataclass(frozen=True)
class EpochResult:
    epoch: int  # 1-based number of the epoch just finished
    train_loss: float  # mean of the batch losses seen during the epoch, weighted by batch size
    learning_rate: float  # the step size of the epoch's last update


class Interrupted(Exception):
    """Raised between two updates when `should_stop` says so (Ctrl-C, SIGTERM)."""


def train_epochs(
    problem: Problem,
    position: Position,
    epochs: int,
    shuffle_rng: np.random.Generator,
    dropout_rng: np.random.Generator,
    on_batch: Callable[[int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[EpochResult]:
    """Train from `position` up to `epochs` completed epochs, yielding after each one.

    `position` is updated in place as updates happen. A non-finite loss or gradient raises
    DivergenceError before the update that would apply it.
    """
    model, x, y, size = problem.model, problem.x, problem.y, problem.batch_size
    params = model.parameters()
    n = len(x)
    while position.epoch < epochs:
        order = shuffle_rng.permutation(n) if problem.shuffle and size < n else None
        loss_sum, learning_rate = 0.0, 0.0
        for batch, start in enumerate(range(0, n, size)):
            if order is None:  # full batch or unshuffled: slices, no copies
                xb, yb = x[start : start + size], y[start : start + size]
            else:
                index = order[start : start + size]
                xb, yb = x[index], y[index]
            outputs, caches = model.forward(xb, training=True, rng=dropout_rng)
            value, dout = problem.loss.value_and_grad(outputs, yb)
            if not math.isfinite(value):
                raise _diverged(position, f"the loss is {value}")
            grads = model.backward(dout, caches)
            _check_gradients(grads, position)
            if problem.clip_norm is not None:
                clip_by_global_norm(grads, problem.clip_norm)
            learning_rate = problem.schedule(position.updates)
            problem.optimizer.step(params, grads, learning_rate)
            position.updates += 1
            position.samples += len(xb)
            loss_sum += value * len(xb)
            if on_batch is not None:
                on_batch(batch + 1, value)
            if should_stop is not None and should_stop():
                raise Interrupted()
        position.epoch += 1
        yield EpochResult(position.epoch, loss_sum / n, learning_rate)


def _check_gradients(grads: dict[str, np.ndarray], position: Position) -> None:
    for name, grad in grads.items():
        flat = grad.reshape(-1)
        if not math.isfinite(float(np.dot(flat, flat))):
            if np.isfinite(grad).all():  # finite, only its square overflowed: still a blow-up
                raise _diverged(position, f"the gradient of {name} overflowed")
            raise _diverged(position, f"the gradient of {name} is not finite")


def _diverged(position: Position, what: str) -> DivergenceError:
    error = DivergenceError(
        f"training diverged in epoch {position.epoch + 1}, update {position.updates + 1}: {what}. "
        "The update was not applied. Try a smaller optimizer.learning_rate (or set optimizer.clip_norm)."
    )
    error.position = position  # type: ignore[attr-defined]
    return error
