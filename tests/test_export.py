"""`sgdcli export`: ONNX (checked with onnxruntime), PyTorch safetensors in nn.Sequential layout, plain npz."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import typing

import numpy as np
import pytest
import yaml
from conftest import FASHION, REPO, tiny_config
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


# ---------------------------------------------------------------- PyTorch layout, checked with NumPy
MODULES_IN_NUMPY = {
    "Scale": lambda x, p: (x - p["shift"]) / p["scale"],
    "nn.Linear": lambda x, p: x @ p["weight"].T + p["bias"],  # torch's convention: weight (out, in)
    "nn.ReLU": lambda x, p: np.maximum(x, 0),
    "nn.Tanh": lambda x, p: np.tanh(x),
    "nn.Sigmoid": lambda x, p: 1 / (1 + np.exp(-x)),
    "nn.Softmax": lambda x, p: np.exp(x) / np.exp(x).sum(axis=1, keepdims=True),
}


def numpy_sequential(code: str, state: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Run the printed nn.Sequential(...) with NumPy: module i reads its tensors "i.<name>" from the state."""
    body = code.split("nn.Sequential(\n", 1)[1].split("\n)", 1)[0]
    calls = [line.strip().rstrip(",") for line in body.splitlines()]
    used = set()
    for index, call in enumerate(calls):
        params = {k.split(".", 1)[1]: v.astype(np.float64) for k, v in state.items() if k.split(".")[0] == str(index)}
        used |= {f"{index}.{k}" for k in params}
        if call.startswith("nn.LeakyReLU"):
            slope = float(re.search(r"negative_slope=([\d.e-]+)", call)[1])
            x = np.where(x > 0, x, slope * x)
        else:
            x = MODULES_IN_NUMPY[call.split("(")[0]](x, params)
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


def test_torch_loads_the_export_and_gives_the_same_outputs(tmp_path):
    pytest.importorskip("torch")
    run_dir, x = train_csv(tmp_path, EVERY_LAYER)
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
def test_npz_export_has_what_a_hand_written_forward_pass_needs(tmp_path):
    run_dir, x = train_csv(tmp_path, EVERY_LAYER)
    out = tmp_path / "model.npz"
    assert run("export", run_dir, "--format", "npz", "--out", out, "--logits").exit_code == 0
    with np.load(out, allow_pickle=False) as archive:
        architecture = json.loads(str(archive["architecture"]))
        arrays = {k: archive[k] for k in archive.files if k != "architecture"}
    assert architecture["input"]["features"] == ["f0", "f1", "f2", "f3"]
    assert architecture["class_names"] == ["a", "b", "c"] and architecture["output"] == "logits"
    functions = {"scale": lambda x, a, s: (x - a["shift"]) / a["scale"],
                 "linear": lambda x, a, s: x @ a["weight"] + a["bias"],
                 "relu": lambda x, a, s: np.maximum(x, 0), "tanh": lambda x, a, s: np.tanh(x),
                 "sigmoid": lambda x, a, s: 1 / (1 + np.exp(-x)),
                 "leaky_relu": lambda x, a, s: np.where(x > 0, x, s["negative_slope"] * x)}
    y = x
    for step in architecture["steps"]:
        named = {local: arrays[key] for local, key in step.get("arrays", {}).items()}
        y = functions[step["type"]](y, named, step)
    np.testing.assert_allclose(y, api.load_trained(run_dir).predict(x), rtol=1e-5, atol=1e-5)


def test_export_refuses_to_replace_a_file_and_names_a_missing_extra(tmp_path, digits_run, monkeypatch):
    out = tmp_path / "m.npz"
    out.write_bytes(b"keep me")
    result = run("export", digits_run, "--format", "npz", "--out", out)
    assert result.exit_code == 2 and "already exists" in result.stderr and out.read_bytes() == b"keep me"
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the onnx extra were not installed
    result = run("export", digits_run, "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert result.exit_code == 2 and "pip install 'sgdcli[onnx]'" in result.stderr
    assert not (tmp_path / "m.onnx").exists()
