"""ONNX: one graph from raw features to probabilities (or logits, or predicted values), built with the
`onnx` package (`pip install 'sgdcli[onnx]'`). One emitter per step type in EMIT."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sgdcli import strict_json
from sgdcli.errors import UsageError
from sgdcli.export import steps as st

OPSET = 17  # Softmax over one axis (opset 13+), Gemm, LeakyRelu, BatchNormalization without training outputs
# (opset 15+): every runtime of the last years has it
IR_VERSION = 8  # the IR of opset 17; newer IRs are refused by older runtimes


class _Graph:
    """Nodes and initializers collected while the steps are emitted in order."""

    def __init__(self, helper: Any, numpy_helper: Any, dtype: np.dtype) -> None:
        self.helper, self.numpy_helper, self.dtype = helper, numpy_helper, dtype
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []

    def constant(self, name: str, array: np.ndarray, dtype: Any = None) -> str:
        """An initializer of the model's dtype (or `dtype`, e.g. int64 for a shape)."""
        array = np.ascontiguousarray(array, dtype=self.dtype if dtype is None else dtype)
        self.initializers.append(self.numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        self.nodes.append(self.helper.make_node(op, inputs, [output], name=output, **attributes))
        return output


def _scale(step: st.Scale, x: str, name: str, g: _Graph) -> str:
    centred = g.node("Sub", [x, g.constant(f"{name}.shift", step.shift)], f"{name}.centred")
    return g.node("Div", [centred, g.constant(f"{name}.scale", step.scale)], name)


def _linear(step: st.Linear, x: str, name: str, g: _Graph) -> str:
    # Gemm: Y = A @ B + C, with B = weight (D, M) as stored (no transpose).
    return g.node("Gemm", [x, g.constant(f"{name}.weight", step.weight), g.constant(f"{name}.bias", step.bias)], name)


def _conv2d(step: st.Conv2d, x: str, name: str, g: _Graph) -> str:
    # weight (F, C, kh, kw) is ONNX's layout; sgdcli's padding (top, bottom, left, right) becomes ONNX's
    # pads [begin of each axis..., end of each axis...] = [top, left, bottom, right].
    top, bottom, left, right = step.padding
    inputs = [x, g.constant(f"{name}.weight", step.weight)]
    if step.bias is not None:
        inputs.append(g.constant(f"{name}.bias", step.bias))
    return g.node("Conv", inputs, name, kernel_shape=list(step.weight.shape[2:]), strides=list(step.stride),
                  pads=[top, left, bottom, right], dilations=[1, 1], group=1)


def _pool(op: str, **attributes: Any) -> Callable[[Any, str, str, _Graph], str]:
    # No padding and floor division of the output size (ceil_mode 0), as sgdcli's pools; with no padding
    # AveragePool's count_include_pad does not change the result (every window holds ph * pw inputs).
    return lambda step, x, name, g: g.node(op, [x], name, kernel_shape=list(step.pool_size), strides=list(step.stride),
                                           pads=[0, 0, 0, 0], ceil_mode=0, **attributes)


def _batch_norm(step: st.BatchNorm, x: str, name: str, g: _Graph) -> str:
    arrays = [g.constant(f"{name}.{a}", getattr(step, a)) for a in ("weight", "bias", "running_mean", "running_var")]
    return g.node("BatchNormalization", [x, *arrays], name, epsilon=float(step.epsilon), training_mode=0)


# One entry per step type: (step, input name, output name, graph) -> output name.
EMIT: dict[type, Callable[[Any, str, str, _Graph], str]] = {
    st.Scale: _scale,
    st.Reshape: lambda step, x, name, g: g.node(
        "Reshape", [x, g.constant(f"{name}.shape", [-1, *step.shape], np.int64)], name),
    st.Linear: _linear,
    st.Conv2d: _conv2d,
    st.MaxPool2d: _pool("MaxPool"),
    st.AvgPool2d: _pool("AveragePool", count_include_pad=0),
    st.GlobalAvgPool2d: lambda step, x, name, g: g.node("GlobalAveragePool", [x], name),
    st.Flatten: lambda step, x, name, g: g.node("Flatten", [x], name, axis=1),
    st.BatchNorm: _batch_norm,
    st.Relu: lambda step, x, name, g: g.node("Relu", [x], name),
    st.LeakyRelu: lambda step, x, name, g: g.node("LeakyRelu", [x], name, alpha=float(step.negative_slope)),
    st.Sigmoid: lambda step, x, name, g: g.node("Sigmoid", [x], name),
    st.Tanh: lambda step, x, name, g: g.node("Tanh", [x], name),
    st.Softmax: lambda step, x, name, g: g.node("Softmax", [x], name, axis=1),
}


def encode(model: st.Exportable, path: Path) -> tuple[bytes, str]:
    """The serialised ONNX model (checked by onnx.checker) and a note on its input and output.

    Input `features` (N, D) raw, unscaled, in the training columns' order; output `probabilities`,
    `logits` or `predictions` (N, outputs). Metadata: feature_names, class_names (JSON)."""
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise UsageError("--format onnx needs the onnx package: pip install 'sgdcli[onnx]'") from None
    g = _Graph(helper, numpy_helper, model.dtype)
    current = "features"
    for index, step in enumerate(model.steps):
        current = EMIT[type(step)](step, current, f"{index}.{type(step).__name__.lower()}", g)
    g.node("Identity", [current], model.output)
    element = helper.np_dtype_to_tensor_dtype(np.dtype(model.dtype))
    outputs = next(step.bias.shape[0] for step in reversed(model.steps) if isinstance(step, st.Linear))
    graph = helper.make_graph(
        g.nodes, "sgdcli", [helper.make_tensor_value_info("features", element, ["N", model.width])],
        [helper.make_tensor_value_info(model.output, element, ["N", outputs])], g.initializers)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="sgdcli",
                                   ir_version=IR_VERSION)
    metadata = {"feature_names": strict_json.dumps(list(model.feature_names)),
                **{k: strict_json.dumps(v) for k, v in model.info.items()}}
    if model.class_names is not None:
        metadata["class_names"] = strict_json.dumps(list(model.class_names))
    helper.set_model_props(onnx_model, metadata)
    onnx.checker.check_model(onnx_model, full_check=True)
    classes = model.class_names or ()
    meaning = (f" (N x 1: the probability of class {classes[1]!r})" if outputs == 1 and classes
               else f" over the classes {', '.join(classes)}" if classes else "")
    images = next((f", read as images {'x'.join(map(str, step.shape))} in C order" for step in model.steps
                   if isinstance(step, st.Reshape)), "")
    note = (f"input 'features' ({model.dtype}, N x {model.width}: raw values of {_columns(model)}{images}); "
            f"output '{model.output}'{meaning}")
    return onnx_model.SerializeToString(), note + _float64_caveat(model)


# Ops whose onnxruntime CPU kernels take float32 only (the ONNX standard allows double; onnx.reference runs them).
FLOAT32_ONLY_IN_ONNXRUNTIME = {st.Conv2d: "Conv", st.AvgPool2d: "AveragePool", st.GlobalAvgPool2d: "GlobalAveragePool"}


def _float64_caveat(model: st.Exportable) -> str:
    """For a float64 graph with ops onnxruntime runs in float32 only: which ones, and what to do."""
    ops = sorted({FLOAT32_ONLY_IN_ONNXRUNTIME[type(step)] for step in model.steps
                  if type(step) in FLOAT32_ONLY_IN_ONNXRUNTIME})
    if np.dtype(model.dtype) != np.float64 or not ops:
        return ""
    return (f"; the graph is float64 as the model, and onnxruntime's CPU kernels for {', '.join(ops)} take float32 "
            "only: run it with onnx.reference.ReferenceEvaluator or another runtime, or train with model.dtype float32")


def _columns(model: st.Exportable) -> str:
    names = model.feature_names
    return ", ".join(names) if len(names) <= 8 else f"{', '.join(names[:3])}, ..., {names[-1]}"
