"""Every data file a config names is checked before the first update (a tester's report: a broken
`data.test_file` passed `validate` and `train` and failed only at `eval`, after training). `validate`
and `train` read the test data as `eval --split test` reads it and refuse what eval refuses, with
eval's message (exit 3) and no run directory; test and validation files are matched to the training
data by column name, as `eval --data` matches its file."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, tiny_config
from test_idx import write
from test_idx_source import make_images
from typer.testing import CliRunner

from sgdcli.cli.app import app
from sgdcli.runs import checkpoint

runner = CliRunner()
IRIS = REPO / "data" / "iris.csv"
ROWS = [line.split(",") for line in IRIS.read_text().splitlines()]  # header: 4 features, then species


def _words(result) -> str:
    return " ".join(result.output.split())


def _table(columns: list[int], rows=ROWS, extra: str | None = None) -> str:
    """iris.csv with its columns in the order `columns` (indices), and an `extra` column numbering the rows."""
    lines = [[row[i] for i in columns] + ([] if extra is None else [extra if n == 0 else str(n)])
             for n, row in enumerate(rows)]
    return "\n".join(",".join(line) for line in lines) + "\n"


def _iris(**data) -> dict:
    return tiny_config(data={"source": "csv", "path": str(IRIS), "target": "species", "validation": 0.2, **data},
                       model__layers=[{"type": "dense", "units": 8, "activation": "tanh"}, {"type": "dense", "units": 3}],
                       training__epochs=2)


def _train(config: Path, runs: Path) -> Path:
    result = runner.invoke(app, ["train", str(config), "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    return Path(result.stdout.strip().splitlines()[-1])


def _unrecorded(run: Path, folder: Path) -> Path:
    """The run's best checkpoint without its record of the data files, as one from before sgdcli recorded
    them: eval then reads the test data as it is now, so it shows what eval says of a broken test file."""
    saved = checkpoint.load(run / "checkpoints" / "best.safetensors")
    del saved.meta["data"]
    path = folder / "unrecorded.safetensors"
    checkpoint.save(path, saved)
    return path


def _refused_like_eval(config: Path, runs: Path, old_checkpoint: Path, broken: Path, words: str) -> None:
    """`eval --split test` refuses the broken test data with `words`; validate and train then refuse the
    config with that very message, naming the file (exit 3), and leave no run directory."""
    evaluated = runner.invoke(app, ["eval", str(old_checkpoint), "--split", "test"])
    assert evaluated.exit_code == 3 and words in _words(evaluated), evaluated.output
    before = sorted(runs.iterdir())
    for command in (["validate", str(config)], ["train", str(config), "--runs-dir", str(runs)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 3, (command, result.output)
        assert _words(result) == _words(evaluated) and str(broken) in _words(result), (command, result.output)
    assert sorted(runs.iterdir()) == before


BAD_CSV = {  # the test file's text, and the words eval refuses it with
    "no target column": ("a,b\n1,2\n", "no target column 'species'; the header has: a, b"),
    "a feature column missing": (_table([0, 1, 2, 4]), "feature column(s) 'petal_width' not in the header"),
    "a non-numeric cell": (_table([0, 1, 2, 3, 4]).replace("4.9,3.0,", "4.9,wide,", 1),
                           "row 3, column 'sepal_width': expected a number, received 'wide'"),
}


@pytest.mark.parametrize("case", list(BAD_CSV))
def test_validate_and_train_refuse_a_csv_test_file_eval_refuses(tmp_path, write_config, case):
    test_file = tmp_path / "test.csv"
    shutil.copy(IRIS, test_file)
    config = write_config(_iris(test_file=str(test_file)))
    old = _unrecorded(_train(config, tmp_path / "runs"), tmp_path)
    text, words = BAD_CSV[case]
    test_file.write_text(text)
    _refused_like_eval(config, tmp_path / "runs", old, test_file, words)


def test_validate_and_train_refuse_a_truncated_idx_test_images_file(tmp_path, write_config):
    files = {}
    for split, n, seed in (("train", 60, 0), ("test", 20, 1)):
        images, labels = make_images(n, seed)
        files[f"{split}_images"] = write(tmp_path / f"{split}-images.gz", images, gz=True)
        files[f"{split}_labels"] = write(tmp_path / f"{split}-labels.gz", labels, gz=True)
    config = tiny_config(model__layers__1__units=3, training__epochs=2)
    config["data"] = {"source": "idx", "validation": 0.2, **{key: str(path) for key, path in files.items()}}
    path = write_config(config)
    checked = runner.invoke(app, ["validate", str(path)])
    assert checked.exit_code == 0, checked.output
    cache = Path(os.environ["XDG_CACHE_HOME"])  # conftest's private cache: validate decodes the test pair, writes nothing
    assert not [p for p in cache.rglob("*") if p.is_file()]
    old = _unrecorded(_train(path, tmp_path / "runs"), tmp_path)
    images = files["test_images"]
    images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-1]))  # one pixel short
    _refused_like_eval(path, tmp_path / "runs", old, images,
                       "truncated: expected 320 bytes of data for shape 20x4x4 of uint8, received 319")


def test_an_npz_test_file_of_another_width_is_refused_before_training(tmp_path, write_config):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "train.npz", x=rng.normal(size=(40, 4)), y=np.arange(40) % 2)
    np.savez(tmp_path / "test.npz", x=rng.normal(size=(10, 3)), y=np.arange(10) % 2)
    config = write_config(tiny_config(data={"source": "npz", "path": "train.npz", "test_file": "test.npz"}))
    for command in (["validate", str(config)], ["train", str(config), "--runs-dir", str(tmp_path / "runs")]):
        result = runner.invoke(app, command)
        assert result.exit_code == 3, (command, result.output)
        assert f"{tmp_path / 'test.npz'}: expected 4 feature columns like the training data, received 3" in \
            _words(result), (command, result.output)
    assert not (tmp_path / "runs").exists()


def test_a_good_test_file_in_any_column_order_or_with_extra_columns_trains_and_evaluates(tmp_path, write_config):
    # the same training data and seed give the same weights: matched by name, every layout gives one loss
    layouts = {"same": _table([0, 1, 2, 3, 4]), "reordered": _table([4, 3, 2, 1, 0]),
               "extra": _table([0, 1, 2, 3, 4], extra="id")}
    reports = {}
    for name, text in layouts.items():
        test_file = tmp_path / f"{name}.csv"
        test_file.write_text(text)
        config = write_config(_iris(test_file=str(test_file)), f"{name}.yaml")
        assert runner.invoke(app, ["validate", str(config)]).exit_code == 0
        run = _train(config, tmp_path / "runs")
        recorded = checkpoint.load(run / "checkpoints" / "last.safetensors").meta["data"]["files"]
        assert [f["sha256"] for f in recorded if f["role"] == "test"] == [hashlib.sha256(text.encode()).hexdigest()]
        result = runner.invoke(app, ["eval", str(run), "--json"])  # default split: test
        assert result.exit_code == 0, result.output
        reports[name] = json.loads(result.stdout)
        assert reports[name]["split"] == "test" and reports[name]["samples"] == 150
    by_data = json.loads(runner.invoke(app, ["eval", str(run), "--data", str(IRIS), "--json"]).stdout)
    assert {r["loss"] for r in reports.values()} == {by_data["loss"]}
    assert {r["accuracy"] for r in reports.values()} == {by_data["accuracy"]}


def test_a_validation_file_is_matched_by_column_name_too(tmp_path, write_config):
    losses = {}
    for name, text in {"same": _table([0, 1, 2, 3, 4]), "reordered": _table([4, 3, 2, 1, 0]),
                       "extra": _table([0, 1, 2, 3, 4], extra="id")}.items():
        (tmp_path / f"{name}.csv").write_text(text)
        config = write_config(_iris(validation_file=str(tmp_path / f"{name}.csv")), f"{name}.yaml")
        summary = json.loads((_train(config, tmp_path / "runs") / "summary.json").read_text())
        losses[name] = summary["final"]["val_loss"]
    assert len(set(losses.values())) == 1, losses
    (tmp_path / "missing.csv").write_text(_table([0, 1, 2, 4]))
    config = write_config(_iris(validation_file=str(tmp_path / "missing.csv")), "missing.yaml")
    before = sorted((tmp_path / "runs").iterdir())
    for command in (["validate", str(config)], ["train", str(config), "--runs-dir", str(tmp_path / "runs")]):
        result = runner.invoke(app, command)
        assert result.exit_code == 3, (command, result.output)
        assert f"{tmp_path / 'missing.csv'}: feature column(s) 'petal_width' not in the header" in _words(result)
    assert sorted((tmp_path / "runs").iterdir()) == before


def test_validate_reads_a_least_squares_objectives_data_as_train_does(tmp_path, write_config):
    (tmp_path / "line.csv").write_text("a,b\n1,2\n2,3\n3,5\n")
    objective = {"type": "least_squares", "data": "line.csv", "x": "a", "y": "b"}
    cases = [  # (objective changes, batch size, exit code, words)
        ({"y": "nope"}, None, 3, f"{tmp_path / 'line.csv'}: no target column 'nope'"),
        ({}, 10, 2, "training.batch.size: expected at most the 3 training samples, received 10"),
    ]
    for changes, size, code, words in cases:
        training = {"steps": 3, **({"batch": {"mode": "minibatch", "size": size}} if size else {})}
        config = write_config({"name": "line", "objective": {**objective, **changes},
                               "optimizer": {"type": "sgd", "learning_rate": 0.1}, "training": training})
        for command in (["validate", str(config)], ["train", str(config), "--runs-dir", str(tmp_path / "runs")]):
            result = runner.invoke(app, command)
            assert (result.exit_code, words in _words(result)) == (code, True), (command, result.output)
        assert not (tmp_path / "runs").exists()
