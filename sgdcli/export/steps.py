"""A trained model as a flat list of inference steps (scaling, linear maps, elementwise functions) that
each export format translates one step type at a time.

Adding a layer type: one entry in LAYER_STEPS (config class -> its steps), and when it brings a new step
type, one entry for that step in each format's table (onnx_graph.EMIT, torch_state.MODULES,
npz_arrays.ENTRIES); tests/test_export.py fails while any entry is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sgdcli.config import schema as cfg
from sgdcli.engine import layers
from sgdcli.training.trained import TrainedModel


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


STEP_TYPES = (Scale, Linear, Relu, LeakyRelu, Sigmoid, Tanh, Softmax)

# The config's activation names -> their steps (identity adds none); negative_slope is the argument.
ACTIVATION_STEPS: dict[str, Callable[[float], list[Step]]] = {
    "relu": lambda slope: [Relu()],
    "leaky_relu": lambda slope: [LeakyRelu(slope)],
    "sigmoid": lambda slope: [Sigmoid()],
    "tanh": lambda slope: [Tanh()],
    "identity": lambda slope: [],
}


def _dense(spec: cfg.DenseConfig, layer: layers.Dense) -> list[Step]:
    return [Linear(layer.weight, layer.bias), *ACTIVATION_STEPS[spec.activation](spec.negative_slope)]


# One entry per layer type the config accepts: (its config, the built layer) -> inference steps.
# Dropout is the identity outside training, so it exports to nothing.
LAYER_STEPS: dict[type, Callable[[Any, layers.Layer], list[Step]]] = {
    cfg.DenseConfig: _dense,
    cfg.ActivationConfig: lambda spec, layer: ACTIVATION_STEPS[spec.function](spec.negative_slope),
    cfg.DropoutConfig: lambda spec, layer: [],
}


@dataclass(frozen=True)
class Exportable:
    """What every format writes: the steps, the input width and dtype, and the names a user needs."""

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
    """The trained model's inference steps: its feature scaling, every layer in order (dropout removed),
    and for a classifier with `probabilities` a final softmax (C outputs) or sigmoid (one output)."""
    dtype = trained.model.dtype
    steps: list[Step] = [Scale(trained.scaler.shift.astype(dtype), trained.scaler.scale.astype(dtype))]
    for spec, layer in zip(trained.config.model.layers, trained.model.layers):
        steps += LAYER_STEPS[type(spec)](spec, layer)
    classifier = trained.class_names is not None
    if classifier and probabilities:
        steps.append(Softmax() if int(trained.meta["outputs"]) > 1 else Sigmoid())
    output = ("probabilities" if probabilities else "logits") if classifier else "predictions"
    info = {"source": str(trained.checkpoint), "run": trained.config.name, "epoch": trained.meta.get("epoch")}
    return Exportable(steps, dtype, trained.feature_names, trained.class_names, output, info)
