"""Plain NumPy: an .npz of the arrays and the architecture as JSON (array `architecture`), for people
writing their own forward pass. One entry per step type in ENTRIES. Loads with allow_pickle=False."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sgdcli.export import steps as st

FORMAT = "sgdcli-npz-export"

# One entry per step type: step -> (its description in the architecture, its arrays by local name).
ENTRIES: dict[type, Callable[[Any], tuple[dict[str, Any], dict[str, np.ndarray]]]] = {
    st.Scale: lambda step: ({"type": "scale", "formula": "(x - shift) / scale"},
                            {"shift": step.shift, "scale": step.scale}),
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
    np.savez(buffer, architecture=np.array(json.dumps(architecture, indent=1)), **arrays)
    note = (f"{len(model.steps)} steps; read with np.load({str(path)!r}) and "
            "json.loads(str(archive['architecture'])), applying the steps in order")
    return buffer.getvalue(), note
