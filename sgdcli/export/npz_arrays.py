"""Plain NumPy: an .npz of the arrays and the architecture as JSON (array `architecture`), for people
writing their own forward pass. One entry per step type in ENTRIES. Loads with allow_pickle=False."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sgdcli import strict_json
from sgdcli.export import steps as st

FORMAT = "sgdcli-npz-export"

def _conv2d(step: st.Conv2d) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    f, c, kh, kw = step.weight.shape
    arrays = {"weight": step.weight} if step.bias is None else {"weight": step.weight, "bias": step.bias}
    return ({"type": "conv2d", "formula": "y[n, f, p, q] = bias[f] + sum over c, i, j of weight[f, c, i, j] * "
                                          "xpad[n, c, p * stride[0] + i, q * stride[1] + j] (cross-correlation)",
             "in_channels": c, "filters": f, "kernel_size": [kh, kw], "stride": list(step.stride),
             "padding": dict(zip(("top", "bottom", "left", "right"), step.padding)), "bias": step.bias is not None},
            arrays)


def _pool(kind: str, reduction: str) -> Callable[[Any], tuple[dict[str, Any], dict[str, np.ndarray]]]:
    formula = (f"y[n, c, p, q] = {reduction} of x[n, c, p * stride[0] : p * stride[0] + pool_size[0], "
               "q * stride[1] : q * stride[1] + pool_size[1]]; no padding, windows past the edge dropped")
    return lambda step: ({"type": kind, "formula": formula, "pool_size": list(step.pool_size),
                          "stride": list(step.stride)}, {})


def _batch_norm(step: st.BatchNorm) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    axes = "channel (axis 1 of (N, C, H, W))" if step.spatial else "feature (axis 1 of (N, C))"
    return ({"type": "batch_norm", "formula": "weight * (x - running_mean) / sqrt(running_var + epsilon) + bias per "
             + axes, "epsilon": step.epsilon, "momentum": step.momentum, "spatial": step.spatial},
            {name: getattr(step, name) for name in ("weight", "bias", "running_mean", "running_var")})


# One entry per step type: step -> (its description in the architecture, its arrays by local name).
ENTRIES: dict[type, Callable[[Any], tuple[dict[str, Any], dict[str, np.ndarray]]]] = {
    st.Scale: lambda step: ({"type": "scale", "formula": "(x - shift) / scale"},
                            {"shift": step.shift, "scale": step.scale}),
    st.Reshape: lambda step: ({"type": "reshape", "formula": "x.reshape(N, *shape) in C order",
                               "shape": list(step.shape)}, {}),
    st.Conv2d: _conv2d,
    st.MaxPool2d: _pool("max_pool2d", "the maximum"),
    st.AvgPool2d: _pool("avg_pool2d", "the mean"),
    st.GlobalAvgPool2d: lambda step: ({"type": "global_avg_pool2d",
                                       "formula": "x.mean(axis=(2, 3), keepdims=True): (N, C, H, W) -> (N, C, 1, 1)"}, {}),
    st.Flatten: lambda step: ({"type": "flatten", "formula": "x.reshape(N, -1) in C order"}, {}),
    st.BatchNorm: _batch_norm,
    st.Linear: lambda step: ({"type": "linear", "formula": "x @ weight + bias", "in_features": step.weight.shape[0],
                              "out_features": step.weight.shape[1]}, {"weight": step.weight, "bias": step.bias}),
    st.Relu: lambda step: ({"type": "relu", "formula": "max(x, 0)"}, {}),
    st.LeakyRelu: lambda step: ({"type": "leaky_relu", "formula": "x if x > 0 else negative_slope * x",
                                 "negative_slope": step.negative_slope}, {}),
    st.Sigmoid: lambda step: ({"type": "sigmoid", "formula": "1 / (1 + exp(-x))"}, {}),
    st.Tanh: lambda step: ({"type": "tanh", "formula": "tanh(x)"}, {}),
    st.Softmax: lambda step: ({"type": "softmax", "formula": "exp(x) / sum(exp(x)) over each row"}, {}),
}


def architecture_and_arrays(model: st.Exportable) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The architecture (JSON-ready) and the arrays it names: step i's array `a` is "<i>.<a>"."""
    arrays: dict[str, np.ndarray] = {}
    described = []
    for index, step in enumerate(model.steps):
        entry, tensors = ENTRIES[type(step)](step)
        named = {name: f"{index}.{name}" for name in tensors}
        arrays.update({named[name]: np.asarray(array) for name, array in tensors.items()})
        described.append({**entry, **({"arrays": named} if named else {})})
    architecture = {
        "format": FORMAT, "format_version": 1, "dtype": str(np.dtype(model.dtype)),
        "input": {"shape": ["N", model.width], "features": list(model.feature_names)},
        "output": model.output, "class_names": list(model.class_names) if model.class_names else None,
        "steps": described, **model.info,
    }
    return architecture, arrays


def encode(model: st.Exportable, path: Path) -> tuple[bytes, str]:
    """The .npz bytes (arrays plus `architecture`, a JSON string) and a note on reading it."""
    architecture, arrays = architecture_and_arrays(model)
    buffer = io.BytesIO()
    np.savez(buffer, architecture=np.array(strict_json.dumps(architecture, indent=1)), **arrays)
    note = (f"{len(model.steps)} steps; read with np.load({str(path)!r}) and "
            "json.loads(str(archive['architecture'])), applying the steps in order")
    return buffer.getvalue(), note
