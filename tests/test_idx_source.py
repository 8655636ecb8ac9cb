"""The `idx` data source end to end: config, loading with class names, test split, real Fashion-MNIST."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, tiny_config
from test_idx import FASHION, write
from typer.testing import CliRunner

from sgdcli.cli.app import app
from sgdcli.config.loading import load_config
from sgdcli.errors import ConfigError, DataError
from sgdcli.training import build

runner = CliRunner()
NAMES = ["dark-left", "dark-right", "bright"]


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """4x4 'images' whose class is visible: which half is bright, or all bright."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 4, 4)).astype(np.uint8)
    images[labels == 0, :, :2] += 180
    images[labels == 1, :, 2:] += 180
    images[labels == 2] += 150
    return images, labels


@pytest.fixture
def idx_folder(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for split, n, seed in (("train", 300, 0), ("t10k", 90, 1)):
        x, y = make_images(n, seed)
        write(folder / f"{split}-images-idx3-ubyte.gz", x, gz=True)
        write(folder / f"{split}-labels-idx1-ubyte.gz", y, gz=True)
    return folder


def idx_config(folder: Path, **changes) -> dict:
    config = tiny_config(model__layers__1__units=3, training__epochs=15, **changes)
    config["data"] = {"source": "idx", "path": str(folder), "validation": 0.2, "class_names": NAMES}
    return config


def test_train_then_eval_on_the_test_split_uses_the_class_names(tmp_path, idx_folder):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(idx_config(idx_folder)))
    result = runner.invoke(app, ["train", str(path), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    run_dir = result.stdout.strip().splitlines()[-1]
    result = runner.invoke(app, ["eval", run_dir, "--json"])  # default split: test, since the folder has one
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["split"] == "test" and report["samples"] == 90
    assert report["class_names"] == NAMES and [row["class"] for row in report["per_class"]] == NAMES
    assert report["accuracy"] >= 0.9
    table = runner.invoke(app, ["eval", run_dir, "--split", "test"])
    assert "dark-left" in table.stdout and "confusion matrix" in table.stdout


def test_pixels_are_scaled_to_unit_range_and_kept_as_float32(idx_folder):
    config = load_config(idx_config(idx_folder))
    prepared = build.prepare_data(config, build.Rngs.from_seed(0))
    assert prepared.x_train.dtype == np.float32 and prepared.x_train.shape == (240, 16)
    assert 0.0 <= prepared.x_train.min() and prepared.x_train.max() <= 1.0
    assert prepared.sample_shape == (4, 4)
    everything = np.bincount(build.load_dataset(config.data, True).y)
    assert (np.bincount(prepared.y_train) + np.bincount(prepared.y_val)).tolist() == everything.tolist()


def test_explicit_file_paths_work_too(tmp_path, idx_folder):
    config = idx_config(idx_folder)
    config["data"] = {"source": "idx", "train_images": str(idx_folder / "train-images-idx3-ubyte.gz"),
                      "train_labels": str(idx_folder / "train-labels-idx1-ubyte.gz")}
    loaded = load_config(config)
    assert len(build.load_dataset(loaded.data, True)) == 300
    assert not build.has_test_set(loaded)


@pytest.mark.parametrize("data,expected", [
    ({"source": "idx"}, "give data.path"),
    ({"source": "idx", "path": "x", "train_images": "a"}, "not both"),
    ({"source": "idx", "train_images": "a", "train_labels": "b", "test_images": "c"}, "give both data.test_images"),
    ({"source": "idx", "path": "x", "scale": "pixels"}, "data.scale"),
])
def test_bad_idx_configs(data, expected):
    config = tiny_config()
    config["data"] = data
    with pytest.raises(ConfigError, match=expected):
        load_config(config)


def test_too_few_class_names_is_a_data_error(idx_folder):
    config = load_config(idx_config(idx_folder))
    config = load_config({**config.to_dict(), "data": {**config.to_dict()["data"], "class_names": ["a", "b"]}})
    with pytest.raises(DataError, match="label 2 is out of range"):
        build.load_dataset(config.data, True)


def test_missing_folder_is_a_data_error(tmp_path):
    config = load_config(idx_config(tmp_path / "nowhere"))
    with pytest.raises(DataError):
        build.load_dataset(config.data, True)


FASHION_CONFIGS = sorted((REPO / "configs").rglob("fashion*.yaml")) + sorted(
    (REPO / "configs" / "fashion-batch-modes").glob("*.yaml"))


def test_fashion_configs_exist_and_validate_without_the_dataset():
    assert len(FASHION_CONFIGS) >= 4
    for path in FASHION_CONFIGS:
        config = load_config(path)
        assert config.data.source == "idx" and len(config.data.class_names) == 10
    assert load_config(REPO / "configs" / "mnist-mlp.yaml").optimizer.type == "rmsprop"


@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_loads_as_float32_unit_range():
    config = load_config(REPO / "configs" / "fashion-mlp.yaml")
    prepared = build.prepare_data(config, build.Rngs.from_seed(0))
    assert prepared.x_train.shape == (54000, 784) and prepared.x_val.shape == (6000, 784)
    assert prepared.x_train.dtype == np.float32 and float(prepared.x_train.max()) == 1.0
    assert np.bincount(prepared.y_val).tolist() == [600] * 10  # stratified
    test = build.load_test_set(config, prepared.class_names)
    assert len(test) == 10000 and test.class_names[0] == "T-shirt/top"
