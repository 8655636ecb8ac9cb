"""PyTorch: a safetensors state dict in `torch.nn.Sequential` naming and layout ("1.weight" of shape
(out, in), conv weights (out, in, kh, kw), batch norm's running_mean/running_var/num_batches_tracked), and the Python that builds the matching nn.Sequential and loads it. One entry per step type
in MODULES. torch itself is not needed to write it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save as save_tensors

from sgdcli import strict_json
from sgdcli.export import steps as st

FORMAT = "sgdcli-torch-export"

# The scaling as a module of its own, so it is a visible first step of the Sequential.
SCALE_CLASS = '''class Scale(nn.Module):
    """x -> (x - shift) / scale per feature: the scaling sgdcli fit on the training split."""

    def __init__(self, features):
        super().__init__()
        self.register_buffer("shift", torch.zeros(features))
        self.register_buffer("scale", torch.ones(features))

    def forward(self, x):
        return (x - self.shift) / self.scale
'''


def _linear(step: st.Linear) -> tuple[str, dict[str, np.ndarray]]:
    d, m = step.weight.shape
    # nn.Linear computes x @ weight.T + bias with weight (out, in): sgdcli's (in, out), transposed.
    return f"nn.Linear({d}, {m})", {"weight": np.ascontiguousarray(step.weight.T), "bias": step.bias}


def _conv2d(step: st.Conv2d) -> tuple[str, dict[str, np.ndarray]]:
    f, c, kh, kw = step.weight.shape  # nn.Conv2d's weight layout (out, in, kh, kw), as sgdcli's
    top, bottom, left, right = step.padding
    bias = ", bias=False" if step.bias is None else ""
    tensors = {"weight": step.weight} if step.bias is None else {"weight": step.weight, "bias": step.bias}
    if (top, left) == (bottom, right):
        return f"nn.Conv2d({c}, {f}, ({kh}, {kw}), stride={tuple(step.stride)}, padding={(top, left)}{bias})", tensors
    # Uneven padding ("same" with an even kernel or a stride): nn.Conv2d pads both sides alike, so the zeros
    # come from nn.ZeroPad2d((left, right, top, bottom)) first, in a Sequential of their own (keys "<i>.1.*").
    conv = f"nn.Conv2d({c}, {f}, ({kh}, {kw}), stride={tuple(step.stride)}{bias})"
    return (f"nn.Sequential(nn.ZeroPad2d({(left, right, top, bottom)}), {conv})",
            {f"1.{name}": array for name, array in tensors.items()})


def _batch_norm(step: st.BatchNorm) -> tuple[str, dict[str, np.ndarray]]:
    # num_batches_tracked only matters to PyTorch with momentum=None (a cumulative average); sgdcli uses a
    # fixed momentum and does not count batches, so it is 0.
    call = (f"nn.BatchNorm{'2' if step.spatial else '1'}d({len(step.weight)}, eps={step.epsilon!r}, "
            f"momentum={step.momentum!r})")
    return call, {"weight": step.weight, "bias": step.bias, "running_mean": step.running_mean,
                  "running_var": step.running_var, "num_batches_tracked": np.array(0, dtype=np.int64)}


# One entry per step type: step -> (the nn module's constructor call, its state dict entries).
MODULES: dict[type, Callable[[Any], tuple[str, dict[str, np.ndarray]]]] = {
    st.Scale: lambda step: (f"Scale({len(step.shift)})", {"shift": step.shift, "scale": step.scale}),
    st.Reshape: lambda step: (f"nn.Unflatten(1, {tuple(step.shape)})", {}),
    st.Linear: _linear,
    st.Conv2d: _conv2d,
    st.MaxPool2d: lambda step: (f"nn.MaxPool2d({tuple(step.pool_size)}, stride={tuple(step.stride)})", {}),
    st.AvgPool2d: lambda step: (f"nn.AvgPool2d({tuple(step.pool_size)}, stride={tuple(step.stride)})", {}),
    st.GlobalAvgPool2d: lambda step: ("nn.AdaptiveAvgPool2d(1)", {}),
    st.Flatten: lambda step: ("nn.Flatten()", {}),
    st.BatchNorm: _batch_norm,
    st.Relu: lambda step: ("nn.ReLU()", {}),
    st.LeakyRelu: lambda step: (f"nn.LeakyReLU(negative_slope={step.negative_slope!r})", {}),
    st.Sigmoid: lambda step: ("nn.Sigmoid()", {}),
    st.Tanh: lambda step: ("nn.Tanh()", {}),
    st.Softmax: lambda step: ("nn.Softmax(dim=1)", {}),
}


def state_and_code(model: st.Exportable, path: Path) -> tuple[dict[str, np.ndarray], str]:
    """The state dict ("<index>.<name>" -> array) and Python code that rebuilds the Sequential from the
    safetensors file at `path` with load_state_dict (strict: every key must match)."""
    state: dict[str, np.ndarray] = {}
    calls = []
    for index, step in enumerate(model.steps):
        call, tensors = MODULES[type(step)](step)
        calls.append(call)
        state.update({f"{index}.{name}": np.array(array, order="C") for name, array in tensors.items()})  # 0-d stays 0-d
    double = ".double()" if np.dtype(model.dtype) == np.float64 else ""
    classes = f"\n# outputs: {model.output} of the classes {list(model.class_names)}" if model.class_names else ""
    code = (
        "import torch\nfrom torch import nn\nfrom safetensors.torch import load_file\n\n\n" + SCALE_CLASS + "\n\n"
        f"# input: raw features (N, {model.width}) in the columns {list(model.feature_names)[:8]}"
        f"{' ...' if model.width > 8 else ''}{classes}\n"
        "model = nn.Sequential(\n" + "".join(f"    {call},\n" for call in calls) + f"){double}\n"
        f"model.load_state_dict(load_file({str(path)!r}))\nmodel.eval()\n"
    )
    return state, code


def encode(model: st.Exportable, path: Path) -> tuple[bytes, str]:
    """The safetensors bytes (metadata: format, feature and class names, the loading code) and the code."""
    state, code = state_and_code(model, path)
    metadata = {"format": FORMAT, "feature_names": strict_json.dumps(list(model.feature_names)), "code": code,
                "output": model.output, **{k: strict_json.dumps(v) for k, v in model.info.items()}}
    if model.class_names is not None:
        metadata["class_names"] = strict_json.dumps(list(model.class_names))
    return save_tensors(state, metadata=metadata), code
