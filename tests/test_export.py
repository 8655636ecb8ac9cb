"""`sgdcli export`: ONNX (checked with onnxruntime), PyTorch safetensors in nn.Sequential layout, plain npz."""

from __future__ import annotations

import ast
import csv
import io
import json
import subprocess
import sys
import typing

import numpy as np
import pytest
import yaml
from conftest import FASHION, REPO, tiny_config
from numpy.lib.stride_tricks import sliding_window_view
from safetensors.numpy import load_file
from typer.testing import CliRunner

from sgdcli import api
from sgdcli.cli.app import app
from sgdcli.config import schema as config_schema
from sgdcli.data import idx
from sgdcli.export import npz_arrays, onnx_graph, torch_state
from sgdcli.export import steps as st

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


# ---------------------------------------------------------------- completeness: a new layer type must export
def test_every_layer_type_and_activation_the_schema_accepts_has_an_exporter():
    layer_configs = set(typing.get_args(typing.get_args(config_schema.LayerConfig)[0]))
    assert layer_configs == set(st.LAYER_STEPS)
    assert set(typing.get_args(config_schema.Activation)) == set(st.ACTIVATION_STEPS)


def test_every_step_type_has_an_entry_in_every_format():
    assert set(st.Step.__subclasses__()) == set(st.STEP_TYPES)
    for table in (onnx_graph.EMIT, torch_state.MODULES, npz_arrays.ENTRIES):
        assert set(table) == set(st.STEP_TYPES)


# ---------------------------------------------------------------- a model with every layer and activation type
EVERY_LAYER = [
    {"type": "dense", "units": 7, "activation": "tanh"},
    {"type": "dropout", "rate": 0.3},
    {"type": "dense", "units": 6, "activation": "leaky_relu", "negative_slope": 0.2},
    {"type": "activation", "function": "sigmoid"},
    {"type": "dense", "units": 5, "activation": "relu"},
    {"type": "activation", "function": "identity"},
    {"type": "dense", "units": 5, "activation": "sigmoid"},
    {"type": "activation", "function": "leaky_relu", "negative_slope": 0.1},
    {"type": "dense", "units": 4, "activation": "identity"},
    {"type": "activation", "function": "relu"},
    {"type": "activation", "function": "tanh"},
    {"type": "dense", "units": 3},
]


def train_csv(tmp_path, layers, loss="cross_entropy", dtype="float32", classes=3):
    rng = np.random.default_rng(1)
    x = rng.normal(loc=[3, -2, 10, 0.5], scale=[1, 5, 2, 0.1], size=(90, 4))
    if loss == "mse":
        labels = [f"{v:.4f}" for v in x @ [1, 0.5, -0.2, 3]]
    else:
        labels = ["abc"[int(v) % classes] for v in np.abs(x[:, 0] * 2)]
    text = "f0,f1,f2,f3,target\n" + "".join(",".join([*map(str, row), label]) + "\n" for row, label in zip(x, labels))
    (tmp_path / "d.csv").write_text(text)
    config = tiny_config(data={"source": "csv", "path": "d.csv", "target": "target"}, loss={"type": loss},
                         model={"layers": layers, "dtype": dtype}, training__epochs=3)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    return api.train(api.load_config(tmp_path / "c.yaml"), runs_dir=tmp_path / "runs").run_dir, x


def ort_outputs(path, x):
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    dtype = np.float64 if session.get_inputs()[0].type == "tensor(double)" else np.float32
    return session.run(None, {name: np.asarray(x, dtype=dtype)})[0]


CASES = {
    "every layer, cross-entropy": (EVERY_LAYER, "cross_entropy", "float32", 3),
    "float64": (EVERY_LAYER, "cross_entropy", "float64", 3),
    "binary": ([{"type": "dense", "units": 5, "activation": "relu"}, {"type": "dense", "units": 1}],
               "binary_cross_entropy", "float32", 2),
    "regression": ([{"type": "dense", "units": 5, "activation": "tanh"}, {"type": "dense", "units": 1}],
                   "mse", "float32", 0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_onnx_graph_equals_the_model(tmp_path, case):
    pytest.importorskip("onnx")
    layers, loss, dtype, classes = CASES[case]
    run_dir, x = train_csv(tmp_path, layers, loss, dtype, classes)
    model = api.load_trained(run_dir)
    logits = model.predict(x).astype(np.float64)
    assert run("export", run_dir, "--format", "onnx", "--out", tmp_path / "m.onnx").exit_code == 0
    assert run("export", run_dir, "--format", "onnx", "--out", tmp_path / "l.onnx", "--logits").exit_code == 0
    tolerance = 1e-8 if dtype == "float64" else 1e-5  # onnxruntime's tanh/sigmoid kernels are approximations
    np.testing.assert_allclose(ort_outputs(tmp_path / "l.onnx", x), logits, rtol=tolerance, atol=tolerance)
    expected = logits
    if loss == "cross_entropy":
        expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    elif loss == "binary_cross_entropy":
        expected = 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose(ort_outputs(tmp_path / "m.onnx", x), expected, rtol=tolerance, atol=tolerance)


def predicted_probabilities(run_dir, data, tmp_path):
    out = tmp_path / "pred.csv"
    assert run("predict", run_dir, "--data", data, "--out", out).exit_code == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    return np.array([[float(v) for k, v in row.items() if k.startswith("p_")] for row in rows])


def test_onnx_equals_sgdcli_predict_on_digits(tmp_path, digits_run):
    assert run("export", digits_run, "--format", "onnx", "--out", tmp_path / "d.onnx").exit_code == 0
    with open(REPO / "data" / "digits.csv") as handle:
        rows = list(csv.DictReader(handle))
    x = np.array([[float(row[f"pixel_{i}"]) for i in range(64)] for row in rows])
    assert list(rows[0])[:64] == [f"pixel_{i}" for i in range(64)]
    np.testing.assert_allclose(ort_outputs(tmp_path / "d.onnx", x),
                               predicted_probabilities(digits_run, REPO / "data" / "digits.csv", tmp_path),
                               atol=1e-5, rtol=0)


def test_onnx_equals_sgdcli_predict_on_fashion_mnist(tmp_path, fashion_run):
    assert run("export", fashion_run, "--format", "onnx", "--out", tmp_path / "f.onnx").exit_code == 0
    images = idx.read_idx(idx.find_idx_files(FASHION)["test"][0]).reshape(10_000, -1)
    np.testing.assert_allclose(ort_outputs(tmp_path / "f.onnx", images),
                               predicted_probabilities(fashion_run, FASHION, tmp_path), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- image models: conv, pooling, batch norm
IMAGE_CASES = {
    "conv, batch norm, pools": [
        {"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": "same", "activation": "relu"},  # (4, 8, 8)
        {"type": "batch_norm", "momentum": 0.3, "epsilon": 0.001},
        {"type": "max_pool2d", "pool_size": 2},  # (4, 4, 4)
        # same padding with an even kernel and a stride is uneven: (top, bottom, left, right) = (0, 1, 0, 1)
        {"type": "conv2d", "filters": 3, "kernel_size": [2, 3], "stride": [1, 2], "padding": "same",
         "activation": "leaky_relu", "negative_slope": 0.1, "bias": False},  # (3, 4, 2)
        {"type": "avg_pool2d", "pool_size": [2, 1], "stride": 1},  # (3, 3, 2)
        {"type": "batch_norm"},
        {"type": "flatten"},
        {"type": "dropout", "rate": 0.2},
        {"type": "dense", "units": 6, "activation": "tanh"},
        {"type": "batch_norm"},  # on (N, 6): BatchNorm1d
        {"type": "dense", "units": 10},
    ],
    "global average pool": [
        {"type": "conv2d", "filters": 5, "kernel_size": 3, "stride": 2, "padding": 1, "activation": "sigmoid"},
        {"type": "batch_norm"},
        {"type": "global_avg_pool2d"},
        {"type": "dense", "units": 10},
    ],
}


def digits_pixels(path):
    """The 64 pixel columns of a digits CSV, (N, 64) raw."""
    with open(path) as handle:
        return np.array([[float(row[f"pixel_{i}"]) for i in range(64)] for row in csv.DictReader(handle)])


@pytest.fixture(scope="module")
def image_runs(tmp_path_factory):
    """Each IMAGE_CASES model trained two epochs on the digits CSV read as (1, 8, 8) images: case ->
    (run dir, the copied CSV, its raw pixels (N, 64))."""
    folder = tmp_path_factory.mktemp("images")
    data = folder / "digits.csv"
    data.write_bytes((REPO / "data" / "digits.csv").read_bytes())
    x = digits_pixels(data)
    runs = {}
    for index, (case, layers) in enumerate(IMAGE_CASES.items()):
        config = tiny_config(data={"source": "csv", "path": str(data), "target": "digit", "sample_shape": [1, 8, 8],
                                   "validation": 0.2}, model={"layers": layers}, training__epochs=2,
                             optimizer={"type": "adam", "learning_rate": 0.01})
        (folder / f"c{index}.yaml").write_text(yaml.safe_dump(config))
        result = api.train(api.load_config(folder / f"c{index}.yaml"), runs_dir=folder / f"runs{index}")
        runs[case] = result.run_dir, data, x
    return runs


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_onnx_of_an_image_model_equals_sgdcli_predict(tmp_path, image_runs, case):
    pytest.importorskip("onnx")
    run_dir, data, x = image_runs[case]
    assert run("export", run_dir, "--format", "onnx", "--out", tmp_path / "m.onnx").exit_code == 0
    assert run("export", run_dir, "--format", "onnx", "--out", tmp_path / "l.onnx", "--logits").exit_code == 0
    np.testing.assert_allclose(ort_outputs(tmp_path / "m.onnx", x), predicted_probabilities(run_dir, data, tmp_path),
                               atol=1e-5, rtol=0)
    np.testing.assert_allclose(ort_outputs(tmp_path / "l.onnx", x), api.load_trained(run_dir).predict(x),
                               atol=1e-4, rtol=1e-5)


def test_onnx_image_graph_has_the_layers_hyperparameters(tmp_path, image_runs):
    onnx = pytest.importorskip("onnx")
    run_dir, _, _ = image_runs["conv, batch norm, pools"]
    assert run("export", run_dir, "--format", "onnx", "--out", tmp_path / "m.onnx").exit_code == 0
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    nodes = [(node.op_type, {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}) for node in graph.node]
    ops = [op for op, _ in nodes]
    assert ops[:3] == ["Sub", "Div", "Reshape"]
    assert [op for op in ops if op not in ("Sub", "Div", "Relu", "LeakyRelu", "Tanh", "Identity")] == [
        "Reshape", "Conv", "BatchNormalization", "MaxPool", "Conv", "AveragePool", "BatchNormalization", "Flatten",
        "Gemm", "BatchNormalization", "Gemm", "Softmax"]
    convs = [attributes for op, attributes in nodes if op == "Conv"]
    assert convs[0]["pads"] == [1, 1, 1, 1] and convs[1]["pads"] == [0, 0, 1, 1]  # [top, left, bottom, right]
    assert convs[1]["strides"] == [1, 2] and convs[1]["kernel_shape"] == [2, 3]
    norms = [attributes for op, attributes in nodes if op == "BatchNormalization"]
    assert norms[0]["epsilon"] == pytest.approx(0.001) and norms[1]["epsilon"] == pytest.approx(1e-5)
    shape = next(init for init in graph.initializer if init.name.endswith("reshape.shape"))
    assert list(onnx.numpy_helper.to_array(shape)) == [-1, 1, 8, 8]


def test_onnx_of_a_float64_image_model_is_float64_and_says_where_it_runs(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    data = tmp_path / "digits.csv"
    data.write_bytes((REPO / "data" / "digits.csv").read_bytes())
    layers = [{"type": "conv2d", "filters": 3, "kernel_size": 2, "padding": "same", "activation": "tanh"},
              {"type": "avg_pool2d", "pool_size": 2}, {"type": "batch_norm"}, {"type": "global_avg_pool2d"},
              {"type": "dense", "units": 10}]
    config = tiny_config(data={"source": "csv", "path": str(data), "target": "digit", "sample_shape": [1, 8, 8]},
                         model={"layers": layers, "dtype": "float64"}, training__epochs=1)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    run_dir = api.train(api.load_config(tmp_path / "c.yaml"), runs_dir=tmp_path / "runs").run_dir
    result = run("export", run_dir, "--format", "onnx", "--out", tmp_path / "l.onnx", "--logits")
    assert result.exit_code == 0, result.output
    assert "onnxruntime's CPU kernels for AveragePool, Conv, GlobalAveragePool take float32 only" in result.output
    model = onnx.load(str(tmp_path / "l.onnx"))
    assert {init.data_type for init in model.graph.initializer} == {onnx.TensorProto.DOUBLE, onnx.TensorProto.INT64}
    x = digits_pixels(data)[:40]
    (logits,) = ReferenceEvaluator(model).run(None, {"features": x})
    np.testing.assert_allclose(logits, api.load_trained(run_dir).predict(x), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- PyTorch layout, checked with NumPy
def conv2d_numpy(x, weight, bias, stride, padding):
    """Cross-correlation of x (N, C, H, W) zero-padded by (top, bottom, left, right) with weight (F, C, kh, kw)."""
    top, bottom, left, right = padding
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    windows = sliding_window_view(padded, weight.shape[2:], axis=(2, 3))[:, :, :: stride[0], :: stride[1]]
    y = np.einsum("ncpqij,fcij->nfpq", windows, weight)
    return y if bias is None else y + bias[None, :, None, None]


def pool_numpy(x, pool_size, stride, reduce):
    return reduce(sliding_window_view(x, pool_size, axis=(2, 3))[:, :, :: stride[0], :: stride[1]], axis=(4, 5))


def batch_norm_numpy(x, p, epsilon):
    axes = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
    mean, var, weight, bias = (p[k].reshape(axes) for k in ("running_mean", "running_var", "weight", "bias"))
    return (x - mean) / np.sqrt(var + epsilon) * weight + bias


def _torch_conv(x, p, in_channels, filters, kernel, stride=(1, 1), padding=(0, 0), bias=True):
    assert p["weight"].shape == (filters, in_channels, *kernel) and ("bias" in p) == bias  # (out, in, kh, kw)
    return conv2d_numpy(x, p["weight"], p.get("bias"), stride, (padding[0], padding[0], padding[1], padding[1]))


def _torch_batch_norm(dims):
    def apply(x, p, features, eps=1e-5, momentum=0.1):
        assert x.ndim == dims and p["weight"].shape == (features,) and p["num_batches_tracked"].shape == ()
        return batch_norm_numpy(x, p, eps)
    return apply


# Each nn module as PyTorch documents it: (x, its tensors, the constructor's arguments) -> y.
MODULES_IN_NUMPY = {
    "Scale": lambda x, p, features: (x - p["shift"]) / p["scale"],
    "nn.Linear": lambda x, p, d, m: x @ p["weight"].T + p["bias"],  # torch's convention: weight (out, in)
    "nn.ReLU": lambda x, p: np.maximum(x, 0),
    "nn.LeakyReLU": lambda x, p, negative_slope=0.01: np.where(x > 0, x, negative_slope * x),
    "nn.Tanh": lambda x, p: np.tanh(x),
    "nn.Sigmoid": lambda x, p: 1 / (1 + np.exp(-x)),
    "nn.Softmax": lambda x, p, dim: np.exp(x) / np.exp(x).sum(axis=dim, keepdims=True),
    "nn.Unflatten": lambda x, p, dim, shape: x.reshape(*x.shape[:dim], *shape),
    "nn.Conv2d": _torch_conv,
    "nn.ZeroPad2d": lambda x, p, pads: np.pad(x, ((0, 0), (0, 0), (pads[2], pads[3]), (pads[0], pads[1]))),
    "nn.MaxPool2d": lambda x, p, size, stride: pool_numpy(x, size, stride, np.max),
    "nn.AvgPool2d": lambda x, p, size, stride: pool_numpy(x, size, stride, np.mean),
    "nn.AdaptiveAvgPool2d": lambda x, p, size: x.mean(axis=(2, 3), keepdims=True) if size == 1 else None,
    "nn.Flatten": lambda x, p: x.reshape(len(x), -1),
    "nn.BatchNorm1d": _torch_batch_norm(2),
    "nn.BatchNorm2d": _torch_batch_norm(4),
}


def _numpy_module(call: ast.Call, params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    name = ast.unparse(call.func)
    if name == "nn.Sequential":  # nested: its module j reads "j.<name>"
        for j, inner in enumerate(call.args):
            x = _numpy_module(inner, {k.split(".", 1)[1]: v for k, v in params.items() if k.split(".")[0] == str(j)}, x)
        return x
    args = [ast.literal_eval(a) for a in call.args]
    return MODULES_IN_NUMPY[name](x, params, *args, **{k.arg: ast.literal_eval(k.value) for k in call.keywords})


def numpy_sequential(code: str, state: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Run the printed nn.Sequential(...) with NumPy: module i reads its tensors "i.<name>" from the state."""
    body = code.split("nn.Sequential(\n", 1)[1].split("\n)", 1)[0]
    calls = [ast.parse(line.strip().rstrip(","), mode="eval").body for line in body.splitlines()]
    used = set()
    for index, call in enumerate(calls):
        params = {k.split(".", 1)[1]: v if v.dtype.kind == "i" else v.astype(np.float64)
                  for k, v in state.items() if k.split(".")[0] == str(index)}
        used |= {f"{index}.{k}" for k in params}
        x = _numpy_module(call, params, x)
    assert used == set(state), "every tensor of the state dict belongs to a module"
    return x


def test_torch_export_is_in_sequential_naming_and_layout(tmp_path):
    run_dir, x = train_csv(tmp_path, EVERY_LAYER)
    out = tmp_path / "model.safetensors"
    result = run("export", run_dir, "--format", "torch", "--out", out)
    assert result.exit_code == 0, result.output
    code = result.stdout
    assert "nn.Sequential(\n    Scale(4),\n    nn.Linear(4, 7),\n    nn.Tanh(),\n    nn.Linear(7, 6)," in code
    assert "Dropout" not in code and "load_state_dict(load_file(" in code
    state = load_file(out)
    assert state["1.weight"].shape == (7, 4) and state["3.weight"].shape == (6, 7)  # (out, in)
    assert set(state) >= {"0.shift", "0.scale", "1.bias"}
    model = api.load_trained(run_dir)
    np.testing.assert_array_equal(state["1.weight"], model.model.layers[0].weight.T)
    logits = model.predict(x).astype(np.float64)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(numpy_sequential(code, state, x), probabilities, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_torch_export_of_an_image_model_is_in_sequential_naming_and_layout(tmp_path, image_runs, case):
    run_dir, data, x = image_runs[case]
    out = tmp_path / "model.safetensors"
    result = run("export", run_dir, "--format", "torch", "--out", out)
    assert result.exit_code == 0, result.output
    code, state = result.stdout, load_file(out)
    assert "nn.Sequential(\n    Scale(64),\n    nn.Unflatten(1, (1, 8, 8)),\n    nn.Conv2d(1, " in code
    model = api.load_trained(run_dir)
    np.testing.assert_array_equal(state["2.weight"], model.model.layers[0].weight)  # (out, in, kh, kw) as is
    np.testing.assert_array_equal(state["4.running_var"], model.model.layers[1].running_var)
    assert state["4.num_batches_tracked"].shape == () and state["4.num_batches_tracked"].dtype == np.int64
    if case == "conv, batch norm, pools":
        assert ("nn.Conv2d(1, 4, (3, 3), stride=(1, 1), padding=(1, 1)),\n    nn.ReLU(),\n"
                "    nn.BatchNorm2d(4, eps=0.001, momentum=0.3),\n    nn.MaxPool2d((2, 2), stride=(2, 2)),\n"
                "    nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(4, 3, (2, 3), stride=(1, 2), bias=False)),\n"
                "    nn.LeakyReLU(negative_slope=0.1),\n    nn.AvgPool2d((2, 1), stride=(1, 1)),\n"
                "    nn.BatchNorm2d(3, eps=1e-05, momentum=0.1),\n    nn.Flatten(),\n") in code
        assert "nn.BatchNorm1d(6, eps=1e-05, momentum=0.1)" in code
        assert state["6.1.weight"].shape == (3, 4, 2, 3) and "6.1.bias" not in state
    else:
        assert "nn.AdaptiveAvgPool2d(1),\n    nn.Flatten(),\n    nn.Linear(5, 10)," in code
    np.testing.assert_allclose(numpy_sequential(code, state, x), predicted_probabilities(run_dir, data, tmp_path),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", ["every layer", *IMAGE_CASES])
def test_torch_loads_the_export_and_gives_the_same_outputs(tmp_path, case, request):
    pytest.importorskip("torch")
    if case == "every layer":
        run_dir, x = train_csv(tmp_path, EVERY_LAYER)
    else:
        run_dir, _, x = request.getfixturevalue("image_runs")[case]
    out = tmp_path / "model.safetensors"
    result = run("export", run_dir, "--format", "torch", "--out", out)
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    script = tmp_path / "load.py"
    script.write_text(result.stdout + "import numpy\nwith torch.no_grad():\n"
                      f"    y = model(torch.from_numpy(numpy.load({str(tmp_path / 'x.npy')!r})))\n"
                      f"numpy.save({str(tmp_path / 'y.npy')!r}, y.numpy())\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    logits = api.load_trained(run_dir).predict(x).astype(np.float64)
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- plain npz
# A hand-written forward pass of every step type from the architecture's hyperparameters: (x, arrays, step) -> y.
NPZ_FUNCTIONS = {
    "reshape": lambda x, a, s: x.reshape(len(x), *s["shape"]),
    "conv2d": lambda x, a, s: conv2d_numpy(x, a["weight"], a.get("bias"), s["stride"],
                                           [s["padding"][k] for k in ("top", "bottom", "left", "right")]),
    "max_pool2d": lambda x, a, s: pool_numpy(x, s["pool_size"], s["stride"], np.max),
    "avg_pool2d": lambda x, a, s: pool_numpy(x, s["pool_size"], s["stride"], np.mean),
    "global_avg_pool2d": lambda x, a, s: x.mean(axis=(2, 3), keepdims=True),
    "flatten": lambda x, a, s: x.reshape(len(x), -1),
    "batch_norm": lambda x, a, s: batch_norm_numpy(x, a, s["epsilon"]),
    "scale": lambda x, a, s: (x - a["shift"]) / a["scale"],
    "linear": lambda x, a, s: x @ a["weight"] + a["bias"],
    "relu": lambda x, a, s: np.maximum(x, 0), "tanh": lambda x, a, s: np.tanh(x),
    "sigmoid": lambda x, a, s: 1 / (1 + np.exp(-x)),
    "leaky_relu": lambda x, a, s: np.where(x > 0, x, s["negative_slope"] * x),
}


def test_npz_export_has_what_a_hand_written_forward_pass_needs(tmp_path):
    run_dir, x = train_csv(tmp_path, EVERY_LAYER)
    out = tmp_path / "model.npz"
    assert run("export", run_dir, "--format", "npz", "--out", out, "--logits").exit_code == 0
    with np.load(out, allow_pickle=False) as archive:
        architecture = json.loads(str(archive["architecture"]))
        arrays = {k: archive[k] for k in archive.files if k != "architecture"}
    assert architecture["input"]["features"] == ["f0", "f1", "f2", "f3"]
    assert architecture["class_names"] == ["a", "b", "c"] and architecture["output"] == "logits"
    y = x
    for step in architecture["steps"]:
        named = {local: arrays[key] for local, key in step.get("arrays", {}).items()}
        y = NPZ_FUNCTIONS[step["type"]](y, named, step)
    np.testing.assert_allclose(y, api.load_trained(run_dir).predict(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_npz_export_of_an_image_model_has_what_a_hand_written_forward_pass_needs(tmp_path, image_runs, case):
    run_dir, _, x = image_runs[case]
    out = tmp_path / "model.npz"
    assert run("export", run_dir, "--format", "npz", "--out", out, "--logits").exit_code == 0
    with np.load(out, allow_pickle=False) as archive:
        architecture = json.loads(str(archive["architecture"]))
        arrays = {k: archive[k] for k in archive.files if k != "architecture"}
    steps = architecture["steps"]
    assert [step["type"] for step in steps[:3]] == ["scale", "reshape", "conv2d"] and steps[1]["shape"] == [1, 8, 8]
    if case == "conv, batch norm, pools":
        assert steps[6]["padding"] == {"top": 0, "bottom": 1, "left": 0, "right": 1} and steps[6]["bias"] is False
        assert steps[4]["epsilon"] == pytest.approx(0.001) and steps[4]["spatial"] is True
        assert steps[5] == {**steps[5], "type": "max_pool2d", "pool_size": [2, 2], "stride": [2, 2]}
    y = x
    for step in steps:
        named = {local: arrays[key].astype(np.float64) for local, key in step.get("arrays", {}).items()}
        y = NPZ_FUNCTIONS[step["type"]](y, named, step)
    np.testing.assert_allclose(y, api.load_trained(run_dir).predict(x), rtol=1e-5, atol=1e-4)


def test_export_refuses_to_replace_a_file_and_names_a_missing_extra(tmp_path, digits_run, monkeypatch):
    out = tmp_path / "m.npz"
    out.write_bytes(b"keep me")
    result = run("export", digits_run, "--format", "npz", "--out", out)
    assert result.exit_code == 2 and "already exists" in result.stderr and out.read_bytes() == b"keep me"
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the onnx extra were not installed
    result = run("export", digits_run, "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert result.exit_code == 2 and "pip install 'sgdcli[onnx]'" in result.stderr
    assert not (tmp_path / "m.onnx").exists()
