"""Conv models through the whole tool: image shapes from the data, shape errors as config errors,
bit-identical resume with batch norm, gradcheck, landscape and eval of a conv run."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config
from test_cli import run, train
from test_idx_source import NAMES, idx_config, idx_folder  # noqa: F401 (idx_folder is a fixture)
from test_resume import assert_identical, interrupt, resume

from sgdcli import api
from sgdcli.config.loading import load_config
from sgdcli.errors import ConfigError
from sgdcli.runs import checkpoint
from sgdcli.training import build

CNN = [
    {"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": "same", "activation": "relu", "bias": False},
    {"type": "batch_norm"},
    {"type": "max_pool2d", "pool_size": 2},
    {"type": "conv2d", "filters": 3, "kernel_size": [2, 2], "activation": "relu"},
    {"type": "flatten"},
    {"type": "dropout", "rate": 0.2},
    {"type": "dense", "units": 3},
]


def image_npz(path: Path, n: int = 90, size: int = 6, seed: int = 0) -> Path:
    """n images (size x size), 3 classes: a bright 2x2 patch in the top-left, top-right or bottom row."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.uniform(0, 0.3, size=(n, size, size))
    corners = [(0, 0), (0, size - 2), (size - 2, size // 2 - 1)]
    for i, label in enumerate(y):
        r, c = corners[label]
        x[i, r : r + 2, c : c + 2] += 1.0
    np.savez(path, x=x, y=y)
    return path


def cnn_config(data: Path, **changes) -> dict:
    changes = {"model__layers": CNN, **changes}
    return tiny_config(data={"source": "npz", "path": str(data), "validation": 0.2, "scale": "none"},
                       optimizer={"type": "adam", "learning_rate": 0.01}, **changes)


def test_npz_images_keep_their_shape_and_a_conv_model_learns_them(tmp_path: Path) -> None:
    config = load_config(cnn_config(image_npz(tmp_path / "images.npz"), training__epochs=15))
    prepared = build.prepare_data(config, build.Rngs.from_seed(0))
    assert prepared.sample_shape == (6, 6) and prepared.x_train.shape == (72, 36)
    model = build.build_model(config.model, prepared.sample_shape, 3, np.random.default_rng(0))
    assert model.input_shape == (1, 6, 6)
    assert model.layers[0].weight.shape == (4, 1, 3, 3) and model.layers[0].padding == (1, 1, 1, 1)
    assert model.layers[3].weight.shape == (3, 4, 2, 2) and model.layers[6].weight.shape == (3 * 2 * 2, 3)
    result = api.train(config, runs_dir=tmp_path / "runs")
    assert result.status == "completed"
    assert result.summary["best"]["val_accuracy"] == 1.0  # the patches are unmistakable
    assert (result.run_dir / "filters.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    mlp = api.train(load_config(tiny_config()), runs_dir=tmp_path / "runs")
    assert (mlp.run_dir / "loss.png").is_file() and not (mlp.run_dir / "filters.png").exists()


def test_filter_mosaic_tiles_each_kernel_with_zero_as_grey() -> None:
    from sgdcli.plots import _mosaic
    weights = np.zeros((5, 1, 2, 2))
    weights[0, 0, 0, 0], weights[4, 0, 1, 1] = 2.0, -1.0
    mosaic = _mosaic(weights)  # 5 tiles in a 3 x 3 grid with 1-pixel white gaps: 3*3-1 = 8 square
    assert mosaic.shape == (5, 8)
    assert mosaic[0, 0] == 1.0 and mosaic[4, 4] == 0.25 and mosaic[3, 3] == 0.5  # +max, -max/2, zero
    assert mosaic[2, 0] == 1.0 and mosaic[4, 7] == 1.0  # gap, and the empty sixth tile


def test_a_csv_with_sample_shape_feeds_conv_layers(tmp_path: Path) -> None:
    data = np.load(image_npz(tmp_path / "images.npz"))
    rows = np.column_stack([data["x"].reshape(90, -1), data["y"]])
    header = ",".join([f"p{i}" for i in range(36)] + ["label"])
    np.savetxt(tmp_path / "images.csv", rows, delimiter=",", header=header, comments="", fmt="%.6g")
    config = tiny_config(data={"source": "csv", "path": str(tmp_path / "images.csv"), "target": "label",
                               "sample_shape": [1, 6, 6]}, model__layers=CNN)
    prepared = build.prepare_data(load_config(config), build.Rngs.from_seed(0))
    assert prepared.sample_shape == (1, 6, 6)
    config["data"]["sample_shape"] = [1, 5, 7]
    with pytest.raises(ConfigError, match=r"data.sample_shape: expected a shape of 36 values .* received \[1, 5, 7\]"):
        build.prepare_data(load_config(config), build.Rngs.from_seed(0))


@pytest.mark.parametrize(("layers", "sample_shape", "expected"), [
    # dense straight after conv output, without flatten
    ([CNN[0], {"type": "dense", "units": 3}], None,
     r"model.layers.1 \(dense\): a dense layer needs flat features.*put a flatten"),
    # a conv layer after the flatten
    ([{"type": "flatten"}, CNN[0], {"type": "dense", "units": 3}], None,
     r"model.layers.1 \(conv2d\): expected images \(C, H, W\), but a flatten"),
    # the kernel is bigger than its input: 6x6 pooled to 3x3, then a 4x4 kernel
    ([CNN[2], {"type": "conv2d", "filters": 2, "kernel_size": 4}, CNN[4], CNN[6]], [1, 6, 6],
     r"model.layers.1.kernel_size: the window \[4, 4\] is bigger than the layer's input, images \(C, H, W\) = \(1, 3, 3\)"),
    # a pool window taller than the image
    ([{"type": "max_pool2d", "pool_size": [7, 2]}, CNN[4], CNN[6]], [1, 6, 6],
     r"model.layers.0.pool_size: the window \[7, 2\] is bigger"),
    # flat CSV rows given to a conv layer
    ([CNN[0], CNN[4], CNN[6]], [36],
     r"model.layers.0 \(conv2d\): expected images \(C, H, W\) or \(H, W\) from the data, received samples of shape \(36,\)"),
])
def test_validate_names_the_layer_and_the_shapes_that_do_not_fit(write_config, layers, sample_shape, expected) -> None:
    data = {"source": "csv", "path": "x.csv", "target": "label"}
    if sample_shape is not None:
        data["sample_shape"] = sample_shape
    result = run("validate", write_config(tiny_config(data=data, model__layers=layers)))
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert re.search(expected, " ".join(result.stderr.split())), result.stderr


def test_a_kernel_bigger_than_npz_images_is_a_config_error_before_anything_is_written(tmp_path, write_config):
    layers = [{"type": "conv2d", "filters": 2, "kernel_size": 7}, CNN[4], CNN[6]]
    config = write_config(cnn_config(image_npz(tmp_path / "images.npz"), model__layers=layers))
    result = run("train", config, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2
    assert "model.layers.0.kernel_size: the window [7, 7] is bigger than the layer's input, images (C, H, W) = (1, 6, 6)" \
        in " ".join(result.stderr.split())
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("mode", "updates"), [("minibatch", 6), ("minibatch", 7), ("sgd", 100)],
                         ids=["epoch boundary", "mid-epoch", "sgd mid-epoch"])
def test_resume_of_a_batch_norm_cnn_is_bit_identical(tmp_path: Path, mode: str, updates: int) -> None:
    config = load_config(cnn_config(image_npz(tmp_path / "images.npz", n=60), training__epochs=4,
                                    training__batch={"mode": mode, "size": 16}))
    whole = api.train(config, runs_dir=tmp_path / "whole")
    assert whole.status == "completed"
    parted = interrupt(config, tmp_path / "parted", updates)
    assert parted.status == "interrupted"
    saved = checkpoint.load(parted.run_dir / "checkpoints" / "last.safetensors")
    assert {"1.running_mean", "1.running_var"} <= set(saved.params)  # state next to the weights
    assert not any("running" in key for key in saved.optimizer)  # not optimizer state
    assert not np.array_equal(saved.params["1.running_var"], np.ones(4, dtype=np.float32))  # it moved
    assert resume(parted.run_dir).status == "completed"
    assert_identical(whole.run_dir, parted.run_dir)


FEATURES_NORMED = [CNN[4], {"type": "dense", "units": 5}, {"type": "batch_norm"}, {"type": "dense", "units": 3}]
ONE_PIXEL_NORMED = [{"type": "conv2d", "filters": 2, "kernel_size": 6}, {"type": "max_pool2d", "pool_size": 1},
                    {"type": "batch_norm"}, CNN[4], CNN[6]]  # (2, 1, 1) images: one value per channel


@pytest.mark.parametrize(("layers", "mode", "size", "expected"), [
    (FEATURES_NORMED, "sgd", 1, "every batch holds 1 sample"),
    (FEATURES_NORMED, "minibatch", 47, r"the last batch of each epoch \(48 samples, batches of 47\) holds 1 sample"),
    (ONE_PIXEL_NORMED, "sgd", 1, "every batch holds 1 sample"),
], ids=["features sgd", "features last batch", "1x1 images sgd"])
def test_batch_norm_refuses_single_value_batches(tmp_path, write_config, layers, mode, size, expected) -> None:
    config = write_config(cnn_config(image_npz(tmp_path / "images.npz", n=60), model__layers=layers,
                                     training__batch={"mode": mode, "size": size}))
    result = run("train", config, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2, result.output
    assert re.search(r"model.layers.2 \(batch_norm\): .*" + expected, " ".join(result.stderr.split()))
    assert not (tmp_path / "runs").exists()


def test_eval_uses_the_running_statistics_of_the_checkpoint(tmp_path: Path) -> None:
    config = load_config(cnn_config(image_npz(tmp_path / "images.npz"), training__epochs=3))
    run_dir = api.train(config, runs_dir=tmp_path / "runs").run_dir
    trained = api.load_trained(run_dir)
    saved = checkpoint.load(trained.checkpoint).params
    np.testing.assert_array_equal(trained.model.layers[1].running_var, saved["1.running_var"])
    x = np.load(tmp_path / "images.npz")["x"].reshape(90, -1)
    one_by_one = np.concatenate([trained.predict(x[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(trained.predict(x[:5]), one_by_one, rtol=1e-5)  # no batch statistics in eval
    assert api.evaluate(run_dir)["accuracy"] > 0.5


def test_gradcheck_and_landscape_work_for_a_conv_model(tmp_path: Path, write_config) -> None:
    config_path = write_config(cnn_config(image_npz(tmp_path / "images.npz"), training__epochs=2))
    result = run("gradcheck", config_path, "--samples", "8")
    assert result.exit_code == 0, result.output + result.stderr
    run_dir = train(config_path, tmp_path / "runs")
    landscape, csv_path, _ = api.landscape(run_dir, points=5, out=tmp_path / "scape")
    assert csv_path.is_file() and np.all(np.isfinite(landscape.losses))
    shutil.rmtree(run_dir)


def test_idx_images_become_one_channel_images_for_a_conv_model(tmp_path: Path, idx_folder: Path) -> None:
    folder = idx_folder  # 4x4 images: 300 to train on, 90 to test
    layers = [{"type": "conv2d", "filters": 3, "kernel_size": 2, "activation": "relu"}, {"type": "flatten"},
              {"type": "dense", "units": len(NAMES)}]
    config = load_config(idx_config(folder, model__layers=layers))
    run_dir = api.train(config, runs_dir=tmp_path / "runs").run_dir
    trained = api.load_trained(run_dir)
    assert trained.model.input_shape == (1, 4, 4)  # (28, 28) -> (1, 28, 28) likewise
    assert trained.model.layers[0].weight.shape == (3, 1, 2, 2)
    assert api.evaluate(run_dir, split="test")["samples"] == 90
    too_big = [{"type": "conv2d", "filters": 3, "kernel_size": 5}, *layers[1:]]
    with pytest.raises(ConfigError, match=r"model.layers.0.kernel_size: the window \[5, 5\] is bigger than the "
                                          r"layer's input, images \(C, H, W\) = \(1, 4, 4\)"):
        api.train(load_config(idx_config(folder, model__layers=too_big)), runs_dir=tmp_path / "runs2")
    assert not (tmp_path / "runs2").exists()
