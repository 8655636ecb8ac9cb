"""How much memory a model needs to train, estimated from its config before any array is allocated,
and how much this process may use."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sgdcli.config import image_layers as image
from sgdcli.config import schema as cfg
from sgdcli.config import shapes
from sgdcli.engine import accumulate
from sgdcli.engine.conv import FEW_CHANNELS
from sgdcli.errors import ConfigError
from sgdcli.fileio import memory_available

# Optimizer state arrays kept per parameter array (sgd: the velocity, only with momentum).
STATE_SLOTS = {
    cfg.SgdConfig: lambda c: 1 if c.momentum > 0 else 0,
    cfg.AdagradConfig: lambda c: 1,
    cfg.RmspropConfig: lambda c: 2 if c.momentum > 0 else 1,
    cfg.AdamConfig: lambda c: 2,
    cfg.AdamwConfig: lambda c: 2,
    cfg.PerturbConfig: lambda c: 0,
}


@dataclass(frozen=True)
class Estimate:
    """Bytes for the parameters, their gradients, the optimizer state and one batch's activations."""

    parameters: int
    gradients: int
    optimizer_state: int
    activations: int
    batch: int  # the rows whose activations are counted: a training batch (or chunk of one), or an evaluation chunk
    evaluation: bool = False  # True when the evaluation chunk needs more than a training batch
    chunk: bool = False  # True when training holds a chunk of a larger batch at a time (engine/accumulate.py)

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer_state + self.activations

    def describe(self) -> str:
        parts = [("parameters", self.parameters), ("gradients", self.gradients),
                 ("optimizer state", self.optimizer_state),
                 (f"activations of {self._rows()}", self.activations)]
        shown = ", ".join(f"{label} {size_text(size)}" for label, size in parts if size)
        return f"about {size_text(self.total)} ({shown})"

    def _rows(self) -> str:
        if self.evaluation:
            return f"an evaluation pass over {self.batch} samples"
        return f"a {self.batch}-sample chunk of each batch" if self.chunk else f"a batch of {self.batch} samples"


def estimate(model: cfg.ModelConfig, sample_shape: int | tuple[int, ...], batch: int,
             optimizer: cfg.OptimizerConfig | None, dtype: str | np.dtype | None = None,
             eval_rows: int = 0, chunks: bool = False) -> Estimate:
    """The memory one training update of this model needs, in bytes (arithmetic on the config only).

    Parameters: D·M + M per dense layer, C·kh·kw·F (+ F) per conv layer, 2·C (+ 2·C running
    statistics) per batch norm. Gradients: as many again (none for `perturb`, which takes no
    gradient). Optimizer state: the parameters times the optimizer's state arrays (Adam: m and v).
    Activations: each layer's output for a batch (kept for the backward pass), plus the input, two
    arrays of the largest output for the backward pass's dout and dx, and the largest conv layer's
    im2col columns (out_h·out_w × C·kh·kw per sample, + 1 for the bias's row of ones below FEW_CHANNELS
    input channels). The losses measured after each epoch run
    `eval_rows` samples at a time, keeping no caches: the largest output twice and the columns;
    when that is more, it is what counts. A model whose layers do not fit the sample shape is
    counted as flat here; that error is raised where the shapes are checked.

    ``chunks``: the estimate is for training, which computes a batch of more than
    ``accumulate.CHUNK_ROWS`` rows a chunk at a time (not with batch norm; a data-parallel process its
    shard likewise): then the batch's input rows count (a shuffled batch is gathered whole) and the
    other activations a chunk's. A command that passes its batch whole (gradcheck) leaves it False.
    """
    itemsize = np.dtype(dtype or model.dtype).itemsize
    found = _shapes(model.layers, sample_shape)
    trainable, buffers, columns = 0, 0, [0]
    for spec, shape_in, shape_out in zip(model.layers, found, found[1:]):
        if isinstance(spec, cfg.DenseConfig):
            trainable += math.prod(shape_in) * spec.units + spec.units
        elif isinstance(spec, image.Conv2dConfig):
            kh, kw = shapes.pair(spec.kernel_size)
            trainable += shape_in[0] * kh * kw * spec.filters + (spec.filters if spec.bias else 0)
            ones_row = spec.bias and shape_in[0] < FEW_CHANNELS  # im2col_transposed carries the bias on a row of ones
            columns.append(math.prod(shape_out[1:]) * (shape_in[0] * kh * kw + ones_row))
        elif isinstance(spec, image.BatchNormConfig):
            trainable += 2 * shape_in[0]
            buffers += 2 * shape_in[0]
    sizes = [math.prod(shape) for shape in found]
    weights = trainable * itemsize
    slots = STATE_SLOTS[type(optimizer)](optimizer) if optimizer is not None else 0
    gradients = 0 if isinstance(optimizer, cfg.PerturbConfig) else weights
    parameters = weights + buffers * itemsize
    chunk = chunks and batch > accumulate.CHUNK_ROWS and not any(isinstance(s, image.BatchNormConfig) for s in model.layers)
    if chunk:  # the batch's input rows (a shuffled batch is gathered whole), the rest a chunk's at a time
        activations = (batch * sizes[0] + accumulate.CHUNK_ROWS * (sum(sizes[1:]) + 2 * max(sizes) + max(columns))) * itemsize
        batch = accumulate.CHUNK_ROWS
    else:
        activations = batch * (sum(sizes) + 2 * max(sizes) + max(columns)) * itemsize
    evaluation = eval_rows * (2 * max(sizes) + max(columns)) * itemsize
    if evaluation > activations:
        return Estimate(parameters, gradients, slots * weights, evaluation, eval_rows, evaluation=True)
    return Estimate(parameters, gradients, slots * weights, activations, batch, chunk=chunk)


def _shapes(layers, sample_shape: int | tuple[int, ...]) -> list[tuple[int, ...]]:
    """[input, output of each layer]; flat widths when the layers do not fit the sample shape."""
    given = (sample_shape,) if isinstance(sample_shape, int) else tuple(sample_shape)
    try:
        return shapes.infer_shapes(layers, given)
    except shapes.ShapeError:
        found = [(math.prod(given),)]
        for spec in layers:
            found.append((spec.units,) if isinstance(spec, cfg.DenseConfig) else found[-1])
        return found


def check_fits(needed: Estimate, what: str, source: str | None) -> None:
    """ConfigError (naming `source` and the key `model.layers`) when `needed` exceeds what is available."""
    limit, reason = memory_available()
    hint = "" if needed.evaluation else ", or a smaller batch"  # evaluation chunks do not follow the batch
    if needed.total > limit:
        raise ConfigError(f"model.layers: {what} needs {needed.describe()}; expected at most {size_text(limit)} "
                          f"({reason}). Use fewer or narrower layers{hint}",
                          source=source)


def size_text(size: int) -> str:
    """1536 -> '1.5 KiB', 7.3e12 -> '6.6 TiB' (binary units, as `free -h` shows them)."""
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
