"""Issue 11 item 13: `validate` runs train's checks reading only what they need — a CSV's header,
row count and target column, an IDX header and labels, an .npz's headers and y — and counts the
seeded validation split exactly as training draws it."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config
from typer.testing import CliRunner

from sgdcli import api
from sgdcli.cli.app import app
from sgdcli.config.loading import load_config
from sgdcli.training import build

runner = CliRunner()


def _config(data: dict, units: int = 3, loss: str = "cross_entropy") -> dict:
    return tiny_config(data=data, loss={"type": loss}, model__layers__1__units=units,
                       training__epochs=1, training__batch={"mode": "minibatch", "size": 4})


def _words(result) -> str:
    return " ".join(result.output.split())


def _csv(path, rows: int = 600, bad_row: int | None = None) -> None:
    lines = ["f1,f2,label"]
    for i in range(rows):
        f1 = "oops" if i == bad_row else f"{i / rows:.3f}"
        lines.append(f"{f1},{(i * 7 % 11) / 11:.3f},{'abc'[i % 3]}")
    path.write_text("\n".join(lines) + "\n")


def test_a_bad_feature_cell_far_down_passes_validate_and_train_refuses_it(tmp_path, write_config, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _csv(tmp_path / "d.csv", bad_row=550)
    config = write_config(_config({"source": "csv", "path": "d.csv", "target": "label", "validation": 0.2}))
    checked = runner.invoke(app, ["validate", str(config)])
    assert checked.exit_code == 0, checked.output
    assert "480 training / 120 validation samples" in _words(checked)
    trained = runner.invoke(app, ["train", str(config)])
    assert trained.exit_code == 3, trained.output
    assert "row 552, column 'f1'" in _words(trained) and "'oops'" in _words(trained)


def test_validate_still_refuses_what_the_header_row_count_and_targets_show(tmp_path, write_config):
    _csv(tmp_path / "d.csv", rows=30)
    wrong_width = tmp_path / "w.csv"
    wrong_width.write_text("f1,f2,label\n1,2,a\n1,2\n3,4,b\n")
    cases = [  # (data changes, units, batch size, exit code, words)
        ({"target": "nope"}, 3, 4, 3, "no target column 'nope'"),
        ({}, 2, 4, 2, "model.layers.1.units: expected 3 (one per class of"),
        ({}, 3, 25, 2, "training.batch.size: expected at most 24 (the training samples of"),
        ({"path": "w.csv"}, 2, 1, 3, "row 3: expected 3 cells like the header, received 2"),
        ({"features": ["f1", "gone"]}, 3, 4, 3, "feature column(s) 'gone' not in the header"),
    ]
    for changes, units, size, code, words in cases:
        data = {"source": "csv", "path": "d.csv", "target": "label", "validation": 0.2, **changes}
        config = _config(data, units)
        config["training"]["batch"]["size"] = size
        result = runner.invoke(app, ["validate", str(write_config(config))])
        assert (result.exit_code, words in " ".join(result.output.split())) == (code, True), (words, result.output)


def _idx(path, data: bytes, shape: tuple[int, ...], type_code: int = 0x08) -> None:
    header = bytes([0, 0, type_code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)
    path.write_bytes(gzip.compress(header + data))


def test_idx_validate_reads_the_images_header_not_the_pixels(tmp_path, write_config, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "idx"
    folder.mkdir()
    labels = np.arange(40, dtype=np.uint8) % 4
    _idx(folder / "train-labels-idx1-ubyte.gz", labels.tobytes(), (40,))
    _idx(folder / "train-images-idx3-ubyte.gz", bytes(40 * 9 - 1), (40, 3, 3))  # one pixel short
    # 10 labels per class: round(0.25 * 10) = 2 held out per class (half to even), 8 in all
    config = write_config(_config({"source": "idx", "path": "idx", "validation": 0.25}, units=4))
    checked = runner.invoke(app, ["validate", str(config)])
    assert checked.exit_code == 0, checked.output
    assert "32 training / 8 validation samples" in _words(checked) and "9 features, 4 classes" in _words(checked)
    cache = Path(os.environ["XDG_CACHE_HOME"])  # conftest's private cache: validate writes nothing there
    assert not [p for p in cache.rglob("*") if p.is_file()]
    trained = runner.invoke(app, ["train", str(config)])
    assert trained.exit_code == 3 and "truncated" in _words(trained), trained.output
    # the labels are read: a count that disagrees with the images' header is still refused
    _idx(folder / "train-labels-idx1-ubyte.gz", labels[:39].tobytes(), (39,))
    refused = runner.invoke(app, ["validate", str(config)])
    assert refused.exit_code == 3 and "holds 40 images but" in _words(refused), refused.output


def test_npz_validate_reads_the_headers_and_y_not_x(tmp_path, write_config, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x = np.ones((20, 2))
    x[17, 1] = np.nan
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(20) % 2)
    config = write_config(_config({"source": "npz", "path": "d.npz", "validation": 0.5}, units=2))
    checked = runner.invoke(app, ["validate", str(config)])
    assert checked.exit_code == 0 and "10 training / 10 validation samples" in _words(checked), checked.output
    trained = runner.invoke(app, ["train", str(config)])
    assert trained.exit_code == 3 and "x[17, 1]: expected a finite number" in _words(trained), trained.output


@pytest.mark.parametrize("fraction", [0.1, 0.15, 0.25, 0.3, 0.5, 0.7])
def test_validate_counts_the_split_training_draws(tmp_path, write_config, fraction):
    # uneven classes (13, 8, 5 samples): round(fraction * count) per class differs from rounding the total
    rows = ["f1,label"] + [f"{i},{c}" for i, c in enumerate("a" * 13 + "b" * 8 + "c" * 5)]
    (tmp_path / "c.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "r.csv").write_text("\n".join(["f1,y"] + [f"{i},{i / 3}" for i in range(26)]) + "\n")
    for name, units, loss in (("c.csv", 3, "cross_entropy"), ("r.csv", 1, "mse")):
        data = {"source": "csv", "path": name, "target": "label" if units == 3 else "y", "validation": fraction}
        config = _config(data, units, loss)
        config["training"]["batch"]["size"] = 1
        loaded = load_config(write_config(config))
        _, checked = api.validate(loaded)
        train, val = build.split_data(loaded, build.Rngs.from_seed(loaded.seed))
        assert (checked.train_samples, checked.val_samples) == (len(train), len(val))


def _layers_cases(tmp_path) -> list[tuple[dict, list[dict], int]]:
    """(data, layers, batch size) that train refuses once it knows the data's sample shape."""
    _csv(tmp_path / "d.csv", rows=30)  # 24 training samples after data.validation 0.2
    folder = tmp_path / "idx"
    folder.mkdir()
    _idx(folder / "train-labels-idx1-ubyte.gz", (np.arange(40, dtype=np.uint8) % 3).tobytes(), (40,))
    _idx(folder / "train-images-idx3-ubyte.gz", bytes(40 * 9), (40, 3, 3))
    csv = {"source": "csv", "path": "d.csv", "target": "label", "validation": 0.2}
    dense = [{"type": "dense", "units": 8, "activation": "tanh"}, {"type": "dense", "units": 3}]
    return [
        ({**csv, "sample_shape": [1, 1, 2]}, [{"type": "conv2d", "filters": 2, "kernel_size": 3}, {"type": "flatten"},
                                              {"type": "dense", "units": 3}], 4),  # a 3x3 window on 1x2 images
        ({"source": "idx", "path": "idx", "validation": 0.25},
         [{"type": "conv2d", "filters": 2, "kernel_size": 5}, {"type": "flatten"}, {"type": "dense", "units": 3}], 4),
        (csv, [dense[0], {"type": "batch_norm"}, dense[1]], 23),  # the last batch of 24 holds 1 sample
    ]


def test_validate_refuses_with_trains_words_what_the_sample_shape_shows(tmp_path, write_config, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for data, layers, size in _layers_cases(tmp_path):
        config = _config(data)
        config["model"]["layers"] = layers
        config["training"]["batch"]["size"] = size
        path = write_config(config)
        checked = runner.invoke(app, ["validate", str(path)])
        trained = runner.invoke(app, ["train", str(path)])
        assert (checked.exit_code, trained.exit_code) == (2, 2), (checked.output, trained.output)
        assert _words(checked) == _words(trained) and str(path) in _words(checked), _words(checked)
        assert not (tmp_path / "runs").exists()
