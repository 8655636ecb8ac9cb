"""The learning-rate range test (Smith 2015; fastai's `lr_find`): raise the step size every update
from the config's initial weights and watch the smoothed batch loss."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sgdcli import plots
from sgdcli.config import precision
from sgdcli.config.schema import GRADIENT_OPTIMIZERS, ExperimentConfig
from sgdcli.engine import accumulate
from sgdcli.engine.gradients import clip_by_global_norm
from sgdcli.engine.search import CoordinateSearch
from sgdcli.errors import ConfigError
from sgdcli.fileio import atomic_write, atomic_write_text
from sgdcli.runs import directory as runs
from sgdcli.training import build, plan
from sgdcli.training.loop import blas_threads_for_updates

SMOOTHING = 0.98  # fastai's beta: loss_avg = beta * loss_avg + (1 - beta) * loss, debiased by 1 - beta^t
STOP_FACTOR = 4.0  # stop once the smoothed loss exceeds this many times its minimum (fastai's rule)
SKIP_START = 10
CSV_NAME, PNG_NAME = "lr_find.csv", "lr_find.png"


@dataclass
class RangeTest:
    """The curve of a range test: step size, raw and smoothed batch loss per update (float64 arrays
    of one length), why it ended, and the suggested step sizes."""

    learning_rates: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    stopped: str  # "end" (reached --end), "exploded" (smoothed > 4x its minimum), "diverged" (non-finite)
    key: str  # the config key the suggestion is for: optimizer.learning_rate (optimizer.delta for perturb)
    steepest: float | None  # step size where the smoothed loss falls fastest (per log step size), before its minimum
    minimum_tenth: float  # the step size of the smoothed loss's minimum, divided by 10
    out_dir: Path | None = None


def schedule(start: float, end: float, updates: int) -> np.ndarray:
    """The exponential ramp: start * (end / start) ** (i / (updates - 1)), i = 0 ... updates - 1."""
    if not (0 < start < end and math.isfinite(end)):
        raise ConfigError(f"--start and --end: expected 0 < start < end, received {start} and {end}")
    if updates < 2:
        raise ConfigError(f"--updates: expected at least 2, received {updates}")
    return start * (end / start) ** (np.arange(updates) / (updates - 1))


def range_test(config: ExperimentConfig, start: float = 1e-7, end: float = 10.0, updates: int = 100) -> RangeTest:
    """Run the range test on the config's own model, data, batch size and optimizer (any of them).

    Update i uses step size start·(end/start)^(i/(updates−1)); batches are drawn as training draws
    them (seeded reshuffle each pass over the data). The test stops at `updates`, when the smoothed
    loss exceeds 4× its minimum, or at a non-finite loss or gradient (that update is not applied):
    a divergence is the end of the curve, not an error.
    """
    if not isinstance(config, ExperimentConfig):
        raise ConfigError("lr-find needs a model trained on data (an experiment config), not an objective")
    ramp = schedule(start, end, updates)
    dtype = config.model.dtype  # (the step sizes meet the weights in it: as precision.check's learning_rate)
    problem = (precision.bound_problem("--start", start, dtype, zero="the test's first updates would move no weight")
               or precision.bound_problem("--end", end, dtype, infinite="the test's last updates would make the "
                                                                        "weights NaN"))
    if problem:
        raise ConfigError(problem)
    rngs = build.Rngs.from_seed(config.seed)
    prepared, _, model = plan.prepare_checked(config, rngs)
    loss, optimizer = build.build_loss(config.loss), build.build_optimizer(config.optimizer)
    clip = config.optimizer.clip_norm if isinstance(config.optimizer, GRADIENT_OPTIMIZERS) else None
    x, y = prepared.x_train, prepared.y_train
    size, params = build.batch_size(config.training, len(x)), model.parameters()
    lrs, raw, smooth = [], [], []
    average, best, stopped, order, at = 0.0, math.inf, "end", np.arange(len(x)), len(x)
    summed: dict[str, np.ndarray] | None = None  # a chunked batch's gradient (engine/accumulate.py)
    with np.errstate(over="ignore", invalid="ignore"), blas_threads_for_updates(size):
        for i, learning_rate in enumerate(ramp):
            if at >= len(x):
                order, at = (rngs.shuffle.permutation(len(x)) if config.training.shuffle else order), 0
            index = order[at:at + size]
            at += size
            xb, yb = x[index], y[index]
            if isinstance(optimizer, CoordinateSearch):
                value = loss.value(model.predict(xb), yb)
                if math.isfinite(value):
                    optimizer.step(params, lambda: loss.value(model.predict(xb), yb), float(learning_rate))
            elif accumulate.chunked(model, len(xb)):  # a large batch a chunk at a time, as training takes it
                if summed is None:
                    summed = accumulate.gradient_sums(params)
                value = accumulate.value_and_gradients(model, loss, xb, yb, rngs.dropout, summed)
                grads = summed if math.isfinite(value) else {}
            else:
                outputs, caches = model.forward(xb, training=True, rng=rngs.dropout)
                value, dout = loss.value_and_grad(outputs, yb)
                grads = model.backward(dout, caches) if math.isfinite(value) else {}
                if not all(np.isfinite(g).all() for g in grads.values()):
                    value = math.inf
                if math.isfinite(value):
                    if clip is not None:
                        clip_by_global_norm(grads, clip)
                    optimizer.step(params, grads, float(learning_rate))
            if not math.isfinite(value):
                stopped = "diverged"
                break
            average = SMOOTHING * average + (1 - SMOOTHING) * value
            smoothed = average / (1 - SMOOTHING ** (i + 1))
            lrs.append(float(learning_rate))
            raw.append(value)
            smooth.append(smoothed)
            best = min(best, smoothed)
            if i > 0 and smoothed > STOP_FACTOR * best:
                stopped = "exploded"
                break
    if not lrs:
        raise ConfigError(f"--start {start}: the loss is not finite even at the first step size")
    key = "optimizer.delta" if isinstance(optimizer, CoordinateSearch) else "optimizer.learning_rate"
    rates, smoothed_losses = np.array(lrs), np.array(smooth)
    return RangeTest(rates, np.array(raw), smoothed_losses, stopped, key, *suggest(rates, smoothed_losses))


def suggest(learning_rates: np.ndarray, smoothed: np.ndarray) -> tuple[float | None, float]:
    """(steepest, minimum / 10): fastai's two suggestions.

    `steepest` is where d(smoothed loss)/d(log step size) is most negative, looked for only up to
    the minimum of the smoothed loss (past it the loss is climbing towards divergence) and after the
    first 10 updates (fastai v1's `skip_start`: the average of a few losses is mostly noise); None when
    the curve never falls. `minimum / 10` is the step size at the minimum divided by 10.
    """
    lowest = int(np.argmin(smoothed))
    minimum_tenth = float(learning_rates[lowest] / 10)
    skip = min(SKIP_START, lowest // 2)
    if lowest - skip < 2:
        return None, minimum_tenth
    slopes = np.gradient(smoothed[skip:lowest + 1], np.log(learning_rates[skip:lowest + 1]))
    steepest = int(np.argmin(slopes))
    return (float(learning_rates[skip + steepest]) if slopes[steepest] < 0 else None), minimum_tenth


def write(result: RangeTest, name: str, out_root: Path) -> Path:
    """A new folder OUT_ROOT/<name>-lr-find-<time>/ with lr_find.csv and lr_find.png; returns it."""
    folder = runs.create_run_dir(Path(out_root), f"{name}-lr-find", checkpoints=False)
    lines = ["update,learning_rate,loss,smoothed_loss"]
    lines += [f"{i},{float(lr)!r},{float(loss)!r},{float(smooth)!r}" for i, (lr, loss, smooth)
              in enumerate(zip(result.learning_rates, result.losses, result.smoothed))]
    atomic_write_text(folder / CSV_NAME, "\n".join(lines) + "\n")
    atomic_write(folder / PNG_NAME, plots.png(lambda axes: _draw(axes, result, name), (7, 4.5)))
    result.out_dir = folder
    return folder


def _draw(axes, result: RangeTest, name: str) -> None:
    axes.plot(result.learning_rates, result.losses, color="0.75", linewidth=0.8, label="batch loss")
    axes.plot(result.learning_rates, result.smoothed, color="C0", label="smoothed (β = 0.98)")
    marks = [(result.steepest, "C3", "steepest descent"), (result.minimum_tenth, "C2", "minimum / 10")]
    for value, colour, label in marks:
        if value is not None:
            axes.axvline(value, color=colour, linestyle="--", linewidth=1, label=f"{label}: {value:.3g}")
    axes.set_xscale("log")
    top = np.percentile(result.losses, 95) if len(result.losses) > 3 else max(result.losses)
    axes.set_ylim(min(result.smoothed.min(), result.losses.min()) * 0.95, max(top, result.smoothed[0]) * 1.1)
    axes.set_xlabel(f"step size ({result.key})")
    axes.set_ylabel("loss")
    axes.set_title(f"{name}: learning-rate range test ({len(result.learning_rates)} updates, {result.stopped})",
                   fontsize=9)
