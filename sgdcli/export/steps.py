"""A trained model as a flat list of inference steps (scaling, reshaping, linear maps, convolutions,
pooling, batch normalization, elementwise functions) that each export format translates one step type
at a time.

Adding a layer type: one entry in LAYER_STEPS (its config, the built layer and the shape of one input
sample -> its steps), and when it brings a new step type, one entry for that step in each format's table
(onnx_graph.EMIT, torch_state.MODULES, npz_arrays.ENTRIES); tests/test_export.py fails while any entry
is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sgdcli.config import image_layers as image
from sgdcli.config import schema as cfg
from sgdcli.config import shapes
from sgdcli.engine import conv, layers, normalization
from sgdcli.training.trained import TrainedModel, sample_shape_of


class Step:
    """One inference step y = f(x) on a batch x (N, D)."""


@dataclass(frozen=True)
class Scale(Step):
    """y = (x - shift) / scale per feature: the scaling fit on the training split. shift, scale (D,)."""

    shift: np.ndarray
    scale: np.ndarray


@dataclass(frozen=True)
class Linear(Step):
    """y = x @ weight + bias. weight (D, M) as sgdcli stores it, bias (M,)."""

    weight: np.ndarray
    bias: np.ndarray


@dataclass(frozen=True)
class Reshape(Step):
    """Flat rows (N, prod(shape)) viewed as samples of `shape` (C, H, W), in C order: y (N, *shape)."""

    shape: tuple[int, ...]


@dataclass(frozen=True)
class Conv2d(Step):
    """2-D cross-correlation (PyTorch's conv2d, ONNX's Conv) of x (N, C, H, W) zero-padded by `padding`.

    weight (F, C, kh, kw), bias (F,) or None, stride (sh, sw), padding (top, bottom, left, right) as
    sgdcli stores it; y (N, F, OH, OW), OH = floor((H + top + bottom - kh) / sh) + 1 (OW likewise)."""

    weight: np.ndarray
    bias: np.ndarray | None
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]


@dataclass(frozen=True)
class MaxPool2d(Step):
    """Maximum over each pool_size window moved by stride, no padding, partial windows dropped (floor):
    x (N, C, H, W) -> y (N, C, OH, OW), OH = floor((H - ph) / sh) + 1."""

    pool_size: tuple[int, int]
    stride: tuple[int, int]


@dataclass(frozen=True)
class AvgPool2d(Step):
    """Mean over each pool_size window (divided by ph * pw: there is no padding), geometry as MaxPool2d."""

    pool_size: tuple[int, int]
    stride: tuple[int, int]


@dataclass(frozen=True)
class GlobalAvgPool2d(Step):
    """Mean over all positions of each channel, keeping the axes: x (N, C, H, W) -> y (N, C, 1, 1)
    (ONNX's GlobalAveragePool, PyTorch's AdaptiveAvgPool2d(1)); sgdcli's layer is this then Flatten."""


@dataclass(frozen=True)
class Flatten(Step):
    """x (N, ...) -> y (N, prod(...)) in C order (PyTorch's flatten(1), ONNX's Flatten axis=1)."""


@dataclass(frozen=True)
class BatchNorm(Step):
    """Batch normalization in evaluation: y = weight * (x - running_mean) / sqrt(running_var + epsilon) + bias
    per feature of x (N, C) or channel of x (N, C, H, W) (`spatial`); all arrays (C,). momentum is how the
    running statistics moved in training (PyTorch's convention), kept so a framework can continue it."""

    weight: np.ndarray
    bias: np.ndarray
    running_mean: np.ndarray
    running_var: np.ndarray
    epsilon: float
    momentum: float
    spatial: bool


@dataclass(frozen=True)
class Relu(Step):
    """y = max(x, 0)."""


@dataclass(frozen=True)
class LeakyRelu(Step):
    """y = x if x > 0 else negative_slope * x."""

    negative_slope: float


@dataclass(frozen=True)
class Sigmoid(Step):
    """y = 1 / (1 + exp(-x))."""


@dataclass(frozen=True)
class Tanh(Step):
    """y = tanh(x)."""


@dataclass(frozen=True)
class Softmax(Step):
    """y = exp(x) / sum over the row of exp(x): class probabilities from logits (N, C)."""


STEP_TYPES = (Scale, Reshape, Linear, Conv2d, MaxPool2d, AvgPool2d, GlobalAvgPool2d, Flatten, BatchNorm, Relu,
              LeakyRelu, Sigmoid, Tanh, Softmax)

# The config's activation names -> their steps (identity adds none); negative_slope is the argument.
ACTIVATION_STEPS: dict[str, Callable[[float], list[Step]]] = {
    "relu": lambda slope: [Relu()],
    "leaky_relu": lambda slope: [LeakyRelu(slope)],
    "sigmoid": lambda slope: [Sigmoid()],
    "tanh": lambda slope: [Tanh()],
    "identity": lambda slope: [],
}


def _dense(spec: cfg.DenseConfig, layer: layers.Dense, in_shape: tuple[int, ...]) -> list[Step]:
    return [Linear(layer.weight, layer.bias), *ACTIVATION_STEPS[spec.activation](spec.negative_slope)]


def _conv2d(spec: image.Conv2dConfig, layer: conv.Conv2d, in_shape: tuple[int, ...]) -> list[Step]:
    step = Conv2d(layer.weight, layer.bias, layer.stride, layer.padding)  # type: ignore[arg-type]
    return [step, *ACTIVATION_STEPS[spec.activation](spec.negative_slope)]


def _batch_norm(spec: image.BatchNormConfig, layer: normalization.BatchNorm, in_shape: tuple[int, ...]) -> list[Step]:
    return [BatchNorm(layer.weight, layer.bias, layer.running_mean, layer.running_var, layer.epsilon, layer.momentum,
                      spatial=len(in_shape) == 3)]


def _pool(step_type: type) -> Callable[[Any, Any, tuple[int, ...]], list[Step]]:
    return lambda spec, layer, in_shape: [step_type(layer.pool_size, layer.stride)]


# One entry per layer type the config accepts: (its config, the built layer, the shape of one input
# sample) -> inference steps. Dropout is the identity outside training, so it exports to nothing.
LAYER_STEPS: dict[type, Callable[[Any, layers.Layer, tuple[int, ...]], list[Step]]] = {
    cfg.DenseConfig: _dense,
    cfg.ActivationConfig: lambda spec, layer, in_shape: ACTIVATION_STEPS[spec.function](spec.negative_slope),
    cfg.DropoutConfig: lambda spec, layer, in_shape: [],
    image.Conv2dConfig: _conv2d,
    image.MaxPool2dConfig: _pool(MaxPool2d),
    image.AvgPool2dConfig: _pool(AvgPool2d),
    image.GlobalAvgPool2dConfig: lambda spec, layer, in_shape: [GlobalAvgPool2d(), Flatten()],
    image.FlattenConfig: lambda spec, layer, in_shape: [Flatten()],
    image.BatchNormConfig: _batch_norm,
}


@dataclass(frozen=True)
class Exportable:
    """What every format writes: the steps, the input width and dtype, and the names a user needs.
    The input is always flat rows (N, width) of raw features, as `sgdcli predict` reads them."""

    steps: list[Step]
    dtype: np.dtype
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...] | None
    output: str  # the graph output's name: probabilities, logits or predictions
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def width(self) -> int:
        return len(self.feature_names)


def exportable(trained: TrainedModel, probabilities: bool = True) -> Exportable:
    """The trained model's inference steps: its feature scaling, for an image model the reshape of the
    flat row to the sample shape (C, H, W) its first layer reads, every layer in order (dropout removed),
    and for a classifier with `probabilities` a final softmax (C outputs) or sigmoid (one output)."""
    dtype = trained.model.dtype
    steps: list[Step] = [Scale(trained.scaler.shift.astype(dtype), trained.scaler.scale.astype(dtype))]
    layer_inputs = shapes.infer_shapes(trained.config.model.layers, sample_shape_of(trained.meta))
    if len(layer_inputs[0]) > 1:
        steps.append(Reshape(tuple(int(d) for d in layer_inputs[0])))
    for spec, layer, in_shape in zip(trained.config.model.layers, trained.model.layers, layer_inputs):
        steps += LAYER_STEPS[type(spec)](spec, layer, in_shape)
    classifier = trained.class_names is not None
    if classifier and probabilities:
        steps.append(Softmax() if int(trained.meta["outputs"]) > 1 else Sigmoid())
    output = ("probabilities" if probabilities else "logits") if classifier else "predictions"
    info = {"source": str(trained.checkpoint), "run": trained.config.name, "epoch": trained.meta.get("epoch")}
    return Exportable(steps, dtype, trained.feature_names, trained.class_names, output, info)
