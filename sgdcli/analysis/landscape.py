"""Loss along a line through weight space, w(α) = w0 + α·d, in float64, and its CSV/PNG: the config's data
loss (no weight-decay penalty) with dropout off, on a split of the run's own data."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sgdcli.analysis.directions import (
    Coefficient,
    Gradient,
    InitToFinal,
    RandomDirection,
    parse_direction,
)
from sgdcli.engine import metrics
from sgdcli.engine.losses import Loss
from sgdcli.engine.model import Sequential
from sgdcli.errors import CheckpointError, UsageError
from sgdcli.runs import checkpoint as checkpoints
from sgdcli.runs import directory as runs
from sgdcli.training import build, provenance
from sgdcli.training.trained import TrainedModel, load_trained, sample_shape_of

Weights = dict[str, np.ndarray]

SPLITS = ("train", "val", "test")
SUBSET_STREAM, RANDOM_STREAM = 1, 2  # independent streams of `seed`: the random direction ignores `samples`
GRADIENT_STEPS = (-2.5, 10.0)  # default span of the gradient direction, in optimizer steps (lr·‖∇L‖);
# with 51 points both α = 0 and one step fall on the grid
NO_LEARNING_RATE_STEP = 0.01  # without a learning rate (gradient-free optimizers) a "step" is 1% of ‖w‖


@dataclass(frozen=True)
class Landscape:
    """A loss curve along w(α) = w0 + α·d, with the backprop slope dL/dα at α = 0."""

    direction: str  # "init-to-final" | "gradient" | "random" | e.g. "0.weight[3,5]"
    alphas: np.ndarray  # positions along the line, increasing
    losses: np.ndarray  # loss at each alpha (float64; inf/nan where the model overflows)
    origin_loss: float  # loss at alpha = 0
    slope: float  # dL/dα at α = 0 from backprop: ∇L(w0) · d
    x_label: str  # what the x axis means
    checkpoint: str  # the checkpoint(s) the line is drawn through
    data: str  # which data the loss is measured on, and how many samples
    origin_x: float | None = None  # None: the x axis is α; else x = origin_x + α (one coefficient's value)
    tangent: bool = False  # draw and write the first-order prediction origin_loss + slope·α
    marks: tuple[tuple[float, str], ...] = ()  # (α, label) points to mark; each α is in `alphas` when in the span
    checkpoint_alpha: float = 0.0  # where the checkpoint lies on the line (1 for init-to-final, else 0)
    checkpoint_loss: float = math.nan  # the loss there, computed as the curve's points are
    checkpoint_slope: float = math.nan  # dL/dα there, from backprop: ∇L(w0 + α·d) · d

    @property
    def x(self) -> np.ndarray:
        return self.alphas if self.origin_x is None else self.origin_x + self.alphas

    @property
    def tangent_losses(self) -> np.ndarray:
        return self.origin_loss + self.slope * self.alphas


# ---------------------------------------------------------------- the pure computation
def loss_and_gradient(model: Sequential, loss: Loss, x: np.ndarray, y: np.ndarray) -> tuple[float, Weights]:
    """Mean loss over all of x and its gradient at the model's weights (dropout off), in chunks.

    Every loss is a mean over rows, so chunk values and gradients weighted by rows/N add up exactly.
    """
    n, total = len(x), 0.0
    grads = {key: np.zeros_like(array) for key, array in model.parameters().items()}
    for start in range(0, n, metrics.EVAL_BATCH):
        out, caches = model.forward(x[start : start + metrics.EVAL_BATCH], training=False)
        value, dout = loss.value_and_grad(out, y[start : start + metrics.EVAL_BATCH])
        share = len(out) / n
        total += share * value
        for key, grad in model.backward(dout, caches).items():
            grads[key] += share * grad
    return total, grads


def loss_along(model: Sequential, loss: Loss, x: np.ndarray, y: np.ndarray, origin: Weights,
               direction: Weights, alphas) -> np.ndarray:
    """The loss at w = origin + α·direction for each α, in the model's dtype (give it a float64 model).

    `origin` and `direction` are keyed like model.parameters(); the model's weights are set to
    each point in turn and left at `origin`.
    """
    params = model.parameters()
    if set(origin) != set(params) or set(direction) != set(params):
        raise ValueError(f"origin and direction must have exactly the model's keys {list(params)}")
    origin = {key: np.array(origin[key], dtype=array.dtype) for key, array in params.items()}  # never aliased
    direction = {key: np.asarray(direction[key], dtype=array.dtype) for key, array in params.items()}
    alphas = np.asarray(alphas, dtype=np.float64)
    losses = np.empty(len(alphas))
    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # far out, a loss may be inf
            for i, alpha in enumerate(alphas):
                for key, array in params.items():
                    np.multiply(direction[key], alpha, out=array)
                    array += origin[key]
                losses[i] = loss.value(model.predict(x, batch_size=metrics.EVAL_BATCH), y)
    finally:
        _assign(model, origin)
    return losses


@dataclass(frozen=True)
class _Line:
    origin: Weights
    direction: Weights
    span: tuple[float, float]
    x_label: str
    checkpoint: str
    marks: tuple[tuple[float, str], ...]
    origin_x: float | None = None
    tangent: bool = False
    checkpoint_alpha: float = 0.0


def compute(run: str | Path, checkpoint: str | Path | None = None, direction: str = "init-to-final",
            span: tuple[float, float] | None = None, points: int = 51, split: str = "train",
            samples: int | None = None, seed: int = 0) -> Landscape:
    """The loss along `direction` through a checkpoint of `run` (a run directory or a checkpoint file).

    `checkpoint`: a file, or a name in the run's checkpoints/ (best, last, initial, epoch-0003...);
    default the run's best, else last. `span` (α from, to) defaults per direction; `points`
    α values are spaced evenly, plus the marked points (α = 0, and 1 for init-to-final) exactly.
    `samples` caps the data at a subset drawn with `seed`, which also seeds the random direction.
    """
    chosen = parse_direction(direction)
    _check_options(span, points, split, samples)
    run = Path(run)
    path = _find_checkpoint(run, checkpoint)
    trained = load_trained(path)
    model = _float64_model(trained)
    weights = _copy(model.parameters())
    loss = build.build_loss(trained.config.loss)
    x, y, data = _data(trained, split, samples, seed)
    at = _At.of(path, trained.meta, run)
    match chosen:
        case InitToFinal():
            line = _init_to_final(model, weights, path, at, run)
        case Gradient():
            lr = getattr(trained.config.optimizer, "learning_rate", None)  # gradient-free optimizers have none
            line = _gradient(model, loss, x, y, weights, lr, at)
        case RandomDirection():
            line = _random(weights, seed, at)
        case Coefficient():
            line = _coefficient(chosen, weights, at)
    _assign(model, line.origin)
    origin_loss, grads = loss_and_gradient(model, loss, x, y)
    slope = _dot(grads, line.direction)
    if line.checkpoint_alpha != 0.0:  # the checkpoint is not the line's origin: its own gradient
        _assign(model, weights)
        slope_at_checkpoint = _dot(loss_and_gradient(model, loss, x, y)[1], line.direction)
        _assign(model, line.origin)
    else:
        slope_at_checkpoint = slope
    at_checkpoint = loss_along(model, loss, x, y, line.origin, line.direction, [line.checkpoint_alpha])[0]
    alphas = _grid(span or line.span, points, [alpha for alpha, _ in line.marks])
    return Landscape(
        direction=str(chosen), alphas=alphas, losses=loss_along(model, loss, x, y, line.origin, line.direction, alphas),
        origin_loss=origin_loss, slope=slope, x_label=line.x_label,
        checkpoint=line.checkpoint, data=data, origin_x=line.origin_x, tangent=line.tangent, marks=line.marks,
        checkpoint_alpha=line.checkpoint_alpha, checkpoint_loss=float(at_checkpoint),
        checkpoint_slope=slope_at_checkpoint,
    )


@dataclass(frozen=True)
class _At:
    """The checkpoint a line goes through, named three ways for labels and titles."""

    short: str  # "best (epoch 4)"
    file: str  # "best.safetensors (epoch 4)"
    full: str  # "tiny-20260101-120000/checkpoints/best.safetensors (epoch 4)"

    @classmethod
    def of(cls, path: Path, meta: dict, run: Path) -> "_At":
        epoch = f" (epoch {meta['epoch']})" if meta.get("epoch") is not None else ""
        return cls(path.name.removesuffix(checkpoints.SUFFIX) + epoch, path.name + epoch, _shown(path, run) + epoch)


def _init_to_final(model: Sequential, weights: Weights, path: Path, at: _At, run: Path) -> _Line:
    initial_path = (run if run.is_dir() else path.parent.parent) / runs.CHECKPOINTS / runs.INITIAL
    if not initial_path.is_file():
        raise CheckpointError("--direction init-to-final needs the run's initial weights, and this file is missing",
                              source=str(initial_path))
    initial = _matching(model, checkpoints.load(initial_path).params, initial_path)
    direction = {key: weights[key] - initial[key] for key in weights}
    if _norm(direction) == 0:
        raise UsageError(f"--direction init-to-final: {at.full} holds the initial weights, so the line has "
                         "no length; pick a trained checkpoint with --checkpoint")
    return _Line(initial, direction, (-0.5, 1.5),
                 f"α (w = w_init + α·(w_final − w_init)): 0 = initial weights, 1 = {at.short}",
                 f"{_shown(initial_path, run)} (α = 0) → "
                 f"{at.file if initial_path.parent.samefile(path.parent) else at.full} (α = 1)",
                 ((0.0, "initial weights"), (1.0, at.short)), checkpoint_alpha=1.0)


def _gradient(model: Sequential, loss: Loss, x: np.ndarray, y: np.ndarray, weights: Weights,
              lr: float | None, at: _At) -> _Line:
    _, grads = loss_and_gradient(model, loss, x, y)
    norm = _norm(grads)
    if not (math.isfinite(norm) and norm > 0):
        raise UsageError(f"--direction gradient: the gradient at {at.full} is {norm:g}, so it gives no direction; "
                         "use random or one coefficient instead")
    if lr is None:
        step, marks = NO_LEARNING_RATE_STEP * (_norm(weights) or 1.0), ((0.0, at.short),)
    else:
        step = lr * norm  # how far one plain SGD step on the whole data set would move
        marks = ((0.0, at.short), (step, f"one step: learning_rate × ‖∇L‖ = {step:.3g}"))
    return _Line(weights, {key: -grad / norm for key, grad in grads.items()},
                 (GRADIENT_STEPS[0] * step, GRADIENT_STEPS[1] * step),
                 f"distance moved along −∇L/‖∇L‖ from {at.short} (Euclidean, in weight space)", at.full,
                 marks, tangent=True)


def _random(weights: Weights, seed: int, at: _At) -> _Line:
    rng = np.random.default_rng([seed, RANDOM_STREAM])
    direction = {key: rng.standard_normal(array.shape) for key, array in weights.items()}
    length = _norm(weights) or 1.0  # all-zero weights: a unit direction
    scale = length / _norm(direction)
    return _Line(weights, {key: d * scale for key, d in direction.items()}, (-1.0, 1.0),
                 f"α (w + α·d, d Gaussian with seed {seed}, scaled so ‖d‖ = ‖w‖ = {length:.3g})", at.full,
                 ((0.0, at.short),))


def _coefficient(direction: Coefficient, weights: Weights, at: _At) -> _Line:
    shapes = ", ".join(f"{key} {array.shape}" for key, array in weights.items())
    if direction.parameter not in weights:
        raise UsageError(f"--direction {direction}: the model has no parameter {direction.parameter!r}; "
                         f"its parameters are {shapes}")
    shape = weights[direction.parameter].shape
    if len(direction.index) != len(shape) or any(i >= n for i, n in zip(direction.index, shape)):
        ranges = ",".join(f"0..{n - 1}" for n in shape)
        raise UsageError(f"--direction {direction}: {direction.parameter} has shape {shape}, so expected "
                         f"{len(shape)} index{'es' if len(shape) != 1 else ''} in [{ranges}], received "
                         f"[{','.join(map(str, direction.index))}]; the model's parameters are {shapes}")
    unit = {key: np.zeros_like(array) for key, array in weights.items()}
    unit[direction.parameter][direction.index] = 1.0
    value = float(weights[direction.parameter][direction.index])
    reach = max(1.0, abs(value))  # the span always reaches the value 0: the weight switched off
    return _Line(weights, unit, (-reach, reach), f"value of {direction} (every other weight fixed)", at.full,
                 ((0.0, f"{at.short}: {direction} = {value:.4g}"),), origin_x=value, tangent=True)


# ---------------------------------------------------------------- loading
def _check_options(span: tuple[float, float] | None, points: int, split: str, samples: int | None) -> None:
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise UsageError(f"--points: expected an integer of at least 2, received {points!r}")
    if span is not None and not (len(span) == 2 and all(map(math.isfinite, span)) and span[0] < span[1]):
        raise UsageError(f"--span: expected two finite numbers FROM < TO, received {tuple(span)!r}")
    if split not in SPLITS:
        raise UsageError(f"--split: expected one of {', '.join(SPLITS)}, received {split!r}")
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise UsageError(f"--samples: expected a positive integer, received {samples!r}")


def _find_checkpoint(run: Path, checkpoint: str | Path | None) -> Path:
    """The run's best/last, a name in its checkpoints/ folder, or a checkpoint file."""
    if checkpoint is None:
        return runs.find_checkpoint(run)
    given = Path(checkpoint)
    folder = run / runs.CHECKPOINTS
    if run.is_dir() and len(given.parts) == 1:
        for candidate in (folder / (given.name + checkpoints.SUFFIX), folder / given.name):
            if candidate.is_file():
                return candidate
    if given.is_file():
        return given
    names = sorted(p.name.removesuffix(checkpoints.SUFFIX) for p in folder.glob("*" + checkpoints.SUFFIX))
    available = f"the run has {', '.join(names)}" if names else f"{folder} holds no checkpoints"
    raise CheckpointError(f"--checkpoint: expected a checkpoint file or a name in the run's {runs.CHECKPOINTS}/ "
                          f"folder ({available}); received {str(checkpoint)!r}", source=str(run))


def _float64_model(trained: TrainedModel) -> Sequential:
    """A float64 copy of the trained model, so central differences and slopes are meaningful."""
    spec = trained.config.model.model_copy(update={"dtype": "float64"})
    model = build.build_model(spec, sample_shape_of(trained.meta), int(trained.meta["outputs"]),
                              np.random.default_rng(0))  # the weights are overwritten
    model.load_parameters(trained.model.state_dict())
    return model


def _matching(model: Sequential, params: Weights, source: Path) -> Weights:
    expected = {key: array.shape for key, array in model.parameters().items()}
    buffers = model.buffers()  # batch norm's running statistics stay those of the checkpoint looked at
    received = {key: np.shape(array) for key, array in params.items() if key not in buffers}
    if expected != received:
        raise CheckpointError(f"these weights do not fit the checkpoint's model: expected {expected}, "
                              f"received {received}", source=str(source))
    return {key: np.asarray(params[key], dtype=np.float64) for key in expected}


def _data(trained: TrainedModel, split: str, samples: int | None, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Scaled float64 features and targets of one split of the run's own data, and a description."""
    config = trained.config
    dataset = provenance.own_split(config, trained.meta, trained.class_names, split, str(trained.checkpoint),
                                   "use --split train or val")
    total, what = len(dataset), f"{split} split, {len(dataset)} samples"
    if samples is not None and samples < total:
        index = np.sort(np.random.default_rng([seed, SUBSET_STREAM]).choice(total, samples, replace=False))
        dataset = dataset.subset(index)
        what = f"{split} split, {samples} of {total} samples (seed {seed})"
    x = trained.scaler.transform(dataset.x, np.dtype(np.float64))
    return x, build.target_array(dataset.y, config, np.dtype(np.float64)), what


def _shown(path: Path, run: Path) -> str:
    """`run-name/checkpoints/best.safetensors`: which file, short enough for a plot title."""
    base = run if run.is_dir() else path.parent.parent
    try:
        return str(path.resolve().relative_to(base.resolve().parent))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------- small helpers
def _grid(span: tuple[float, float], points: int, marks: list[float]) -> np.ndarray:
    """`points` evenly spaced α, each mark in the span included exactly (snapped onto the grid, or added)."""
    low, high = float(span[0]), float(span[1])
    alphas = np.linspace(low, high, points)
    step = (high - low) / (points - 1)
    for mark in marks:
        if low <= mark <= high:
            nearest = int(np.argmin(np.abs(alphas - mark)))
            if abs(alphas[nearest] - mark) <= 1e-6 * step:
                alphas[nearest] = mark
            else:
                alphas = np.sort(np.append(alphas, mark))
    return alphas


def _copy(weights: Weights) -> Weights:
    return {key: array.copy() for key, array in weights.items()}


def _assign(model: Sequential, weights: Weights) -> None:
    for key, array in model.parameters().items():
        np.copyto(array, weights[key])


def _dot(a: Weights, b: Weights) -> float:
    return float(sum(np.vdot(a[key], b[key]) for key in a))


def _norm(weights: Weights) -> float:
    return math.sqrt(_dot(weights, weights))
