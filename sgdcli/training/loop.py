"""The training loop: draw a batch, forward, loss, backward, step. No printing, no files."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from sgdcli.engine import accumulate, blas, pool
from sgdcli.engine.allocator import retain_freed_memory
from sgdcli.engine.gradients import Gradient, as_array, clip_by_global_norm, squared_norm, surely_finite
from sgdcli.engine.losses import Loss
from sgdcli.engine.model import Sequential
from sgdcli.engine.one_sample import OneSampleUpdate
from sgdcli.engine.optimizers import Optimizer
from sgdcli.engine.schedules import Schedule
from sgdcli.engine.search import CoordinateSearch
from sgdcli.errors import DivergenceError


class Sharded(Protocol):
    """Data-parallel training's part of an update (sgdcli.training.parallel.DataParallel)."""

    def shard(self, count: int) -> tuple[int, int]: ...
    def gradient(self, xb: np.ndarray, yb: np.ndarray, count: int, dropout_rng: np.random.Generator,
                 ends_epoch: bool) -> tuple[float, dict[str, np.ndarray]]: ...
    def nonfinite(self, grads: dict[str, np.ndarray]) -> tuple[str, bool] | None: ...


@dataclass
class Problem:
    """Everything one training run updates or reads, already built from the config."""

    model: Sequential
    loss: Loss
    optimizer: Optimizer | CoordinateSearch
    schedule: Schedule  # the step size (for CoordinateSearch: delta) at each update
    x: np.ndarray
    y: np.ndarray
    batch_size: int
    shuffle: bool = True
    clip_norm: float | None = None
    parallel: Sharded | None = None  # data-parallel: this process computes one shard of each batch

    @property
    def updates_per_epoch(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)


@dataclass
class Position:
    """How far training has gone, down to the batch: saved in checkpoints, so a run can resume
    mid-epoch exactly where it stopped."""

    epoch: int = 0  # completed epochs
    batch: int = 0  # completed batches of the current epoch
    updates: int = 0
    samples: int = 0
    forward_passes: int = 0  # what an update costs differs by method: this counts the work
    loss_sum: float = 0.0  # sum of batch loss x batch size so far in the current epoch
    epoch_rng: dict | None = None  # mid-epoch: the shuffle state the epoch's order was drawn from

    def to_dict(self) -> dict:
        return dict(vars(self))


@dataclass(frozen=True)
class EpochResult:
    epoch: int  # 1-based number of the epoch just finished
    train_loss: float  # mean of the batch losses seen during the epoch, weighted by batch size
    learning_rate: float  # the step size of the epoch's last update


class StepObserver(Protocol):
    """Looks at gradient updates (sgdcli.training.track): `before_step` returns whether it wants `after_step`."""

    def before_step(self, batch: int, params: dict[str, np.ndarray], grads: dict[str, Gradient]) -> bool: ...
    def after_step(self, params: dict[str, np.ndarray]) -> None: ...


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
    observer: StepObserver | None = None,
) -> Iterator[EpochResult]:
    """Train from `position` up to `epochs` completed epochs, yielding after each one.

    `position` is updated in place after every update, so the state after an interruption
    (`should_stop` returning True raises Interrupted between two updates) can be saved and
    resumed bit for bit. A non-finite loss or gradient raises DivergenceError before the update
    that would apply it. An `observer` sees each gradient update's weights and gradients just
    before and its weights just after the step (layer statistics).
    """
    model, x, y, size = problem.model, problem.x, problem.y, problem.batch_size
    params = model.parameters()
    retain_freed_memory()  # every update allocates the same large arrays again: no page faults for them
    n = len(x)
    shuffled = problem.shuffle and size < n  # full batch: one update whatever the order, so no copies
    search = isinstance(problem.optimizer, CoordinateSearch)  # derivative-free: decided once, not per batch
    parallel = problem.parallel
    accumulated: dict[str, np.ndarray] | None = None  # a chunked batch's gradient (engine/accumulate.py)
    # Batch 1 of a dense network with SGD: prepared once (engine/one_sample.py), the same bits. Clipping and
    # layer statistics scale or read the gradients between the passes: they take the general path.
    one = OneSampleUpdate.prepare(model, problem.loss, problem.optimizer, x, y) if (
        size == 1 and parallel is None and not search and problem.clip_norm is None and observer is None) else None
    while position.epoch < epochs:
        if shuffled:
            if position.batch == 0:
                position.epoch_rng = shuffle_rng.bit_generator.state
            else:  # resuming mid-epoch: draw the interrupted epoch's order again
                shuffle_rng.bit_generator.state = position.epoch_rng
        order = shuffle_rng.permutation(n) if shuffled else None
        with blas_threads_for_updates(size, parallel):
            for start in range(position.batch * size, n, size):
                count = min(size, n - start)
                first, last = start, start + count
                if parallel is not None:  # this process's contiguous shard of the batch
                    first, last = (start + row for row in parallel.shard(count))
                if order is None:  # slices, no copies
                    xb, yb = x[first:last], y[first:last]
                elif last - first == 1:  # one sample: its row as a slice too (fancy indexing would copy it)
                    row = int(order[first])
                    xb, yb = x[row:row + 1], y[row:row + 1]
                else:
                    index = order[first:last]
                    xb, yb = x[index], y[index]
                if one is not None and one.optimizer is problem.optimizer and one.loss is problem.loss:
                    value = one.gradient(xb, yb)
                    if not math.isfinite(value):
                        raise _diverged(position, f"the loss is {value}")
                    if not one.surely_finite():
                        _check_gradients(one.grads, position)
                    one.step(problem.schedule(position.updates))
                    position.forward_passes += 1
                elif search:
                    value, passes = problem.optimizer.step(
                        params, lambda xb=xb, yb=yb: problem.loss.value(model.predict(xb), yb),
                        problem.schedule(position.updates))
                    if not math.isfinite(value):
                        raise _diverged(position, f"the loss is {value}")
                    position.forward_passes += passes
                else:
                    whole = parallel is None and not accumulate.chunked(model, count)
                    if whole:
                        outputs, caches = model.forward(xb, training=True, rng=dropout_rng)
                        value, dout = problem.loss.value_and_grad(outputs, yb)
                    elif parallel is None:  # a large batch, a chunk of rows at a time: the same mean
                        if accumulated is None:
                            accumulated = accumulate.gradient_sums(params)
                        value = accumulate.value_and_gradients(model, problem.loss, xb, yb, dropout_rng, accumulated)
                        grads = accumulated
                    else:  # every process gets the whole batch's loss and gradient
                        value, grads = parallel.gradient(xb, yb, count, dropout_rng, start + count == n)
                    if not math.isfinite(value):
                        raise _diverged(position, f"the loss is {value}")
                    if whole:  # batch 1: a dense layer's weight gradient as its two factors
                        grads = model.backward(dout, caches, factored=True)
                    _check_gradients(grads, position, parallel)
                    if problem.clip_norm is not None:
                        clip_by_global_norm(grads, problem.clip_norm)
                    observed = observer is not None and observer.before_step(position.batch, params, grads)
                    problem.optimizer.step(params, grads, problem.schedule(position.updates))
                    if observed:
                        observer.after_step(params)
                    position.forward_passes += 1
                position.updates += 1
                position.samples += count
                position.batch += 1
                position.loss_sum += value * count
                if on_batch is not None:
                    on_batch(position.batch, value)
                if should_stop is not None and should_stop():
                    raise Interrupted()
        result = EpochResult(position.epoch + 1, position.loss_sum / n, problem.schedule(position.updates - 1))
        position.epoch, position.batch, position.loss_sum, position.epoch_rng = position.epoch + 1, 0, 0.0, None
        yield result


def blas_threads_for_updates(size: int, parallel: Sharded | None = None) -> AbstractContextManager:
    """One BLAS thread for the updates of batch 1, the BLAS pool as it is otherwise.

    At batch 1 a dense layer's forward product is a matrix-vector product and its update a rank-1
    ``ger`` into the same weights. On two threads OpenBLAS splits the two over the weights differently
    (the product by output column, ``ger`` by input row), so each update moves half the weights'
    cache lines from one core to the other and back: on the 784-512-10 race (benchmarks/bench.py,
    2-core AMD EPYC) 511 us per plain-SGD update on two threads against 154 on one, Adam 1291 against
    555; momentum 259 against 231. Batch 4 and up gain from the second thread (momentum, batch 4: 285
    against 346 us), so only batch 1 runs on one. Every loop of updates enters it (this one, lr-find's);
    the epoch's end (evaluation, checkpoints) runs outside, on the whole pool; data-parallel processes
    run their share of the cores each (training/mpi_run.cores_shared: one on a 2-core machine).
    Inside it, while other processes keep every core busy, each BLAS thread runs on a core of its own
    (``engine/placement``).
    """
    return blas.threads(1) if size == 1 and parallel is None else pool.PLACEMENT.during_updates()


def nonfinite(grads: dict[str, Gradient]) -> tuple[str, bool] | None:
    """The first gradient whose sum of squares (in its dtype) is not finite, and whether all its entries
    are finite (then only the square overflowed: still a blow-up); None when every one is finite.
    A gradient whose factors bound its sum of squares well below overflow (``surely_finite``) is not built."""
    for name, grad in grads.items():
        if not surely_finite(grad) and not math.isfinite(squared_norm(grad)):
            return name, bool(np.isfinite(as_array(grad)).all())
    return None


def _check_gradients(grads: dict[str, Gradient], position: Position, parallel: Sharded | None = None) -> None:
    found = nonfinite(grads) if parallel is None else parallel.nonfinite(grads)  # data-parallel: every rank agrees
    if found is not None:
        name, overflowed = found
        layer = f"layer {name.split('.')[0]} ({name})"
        raise _diverged(position, f"the gradient of {layer} {'overflowed' if overflowed else 'is not finite'}")


def _diverged(position: Position, what: str) -> DivergenceError:
    return DivergenceError(
        f"training diverged in epoch {position.epoch + 1}, update {position.updates + 1}: {what}. "
        "The update was not applied. Try a smaller optimizer.learning_rate (or set optimizer.clip_norm)."
    )
