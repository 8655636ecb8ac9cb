"""A run is one experiment on one data set (issue 10, items 2 and 5): resume refuses a config.yaml
that differs from its checkpoint's config, and eval, landscape and resume refuse data files that
changed since training, naming the file; the split is stored, not redrawn from what the file holds now."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, tiny_config
from test_resume import StopAfter
from typer.testing import CliRunner

from sgdcli import api
from sgdcli.cli.app import app
from sgdcli.config.loading import load_config
from sgdcli.errors import DataError
from sgdcli.runs import checkpoint

runner = CliRunner()


def csv_run(tmp_path: Path, epochs: int = 3, stop_after: int | None = None, **data) -> Path:
    """A run on a copy of iris.csv (its path in the run's config), trained or interrupted."""
    source = tmp_path / "iris.csv"
    if not source.exists():
        shutil.copy(REPO / "data" / "iris.csv", source)
    config = load_config(tiny_config(
        data={"source": "csv", "path": str(source), "target": "species", "validation": 0.2, **data},
        model__layers=[{"type": "dense", "units": 8, "activation": "tanh"}, {"type": "dense", "units": 3}],
        training__epochs=epochs))
    if stop_after is None:
        return api.train(config, runs_dir=tmp_path / "runs").run_dir
    stopper = StopAfter(stop_after)
    return api.train(config, runs_dir=tmp_path / "runs", reporter=stopper, should_stop=stopper).run_dir


def everything(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- item 2: config.yaml edited by hand
EDITS = [("optimizer.learning_rate", 0.5), ("seed", 7), ("data.validation", 0.3), ("model.layers.0.units", 5),
         ("training.batch.size", 8), ("training.epochs", 2), ("data.path", "OTHER")]


@pytest.mark.parametrize("key,value", EDITS, ids=[k for k, _ in EDITS])
def test_resume_refuses_a_hand_edited_config_yaml(tmp_path, key, value):
    run = csv_run(tmp_path, epochs=5, stop_after=9)
    if value == "OTHER":
        value = str(shutil.copy(tmp_path / "iris.csv", tmp_path / "other.csv"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    node, *path = config, *key.split(".")
    for part in path[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    old = node[path[-1]]
    node[path[-1]] = value
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    before = everything(run)
    result = runner.invoke(app, ["train", "--resume", str(run)])
    assert result.exit_code == 4, result.stderr
    message = " ".join(result.stderr.split())
    assert "config.yaml" in message and key in message and repr(old) in message and repr(value) in message
    assert everything(run) == before  # nothing changed


def test_resume_accepts_a_config_yaml_whose_only_change_is_more_epochs(tmp_path):
    run = csv_run(tmp_path, epochs=3, stop_after=9)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["training"]["epochs"] = 4
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert api.resume(run).summary["epochs"] == 4


# ---------------------------------------------------------------- item 5: the data changed since training
def append_rows(path: Path, rows: str) -> None:
    with path.open("a") as handle:
        handle.write(rows)


CHANGES = {
    "rows appended": lambda p: append_rows(p, "".join(p.read_text().splitlines(keepends=True)[1:31])),
    "a new class": lambda p: append_rows(p, "5.0,3.0,1.5,0.2,unknown\n"),
    "one digit changed, same size": lambda p: p.write_text(p.read_text().replace("5.1,3.5,1.4", "5.1,3.5,1.5", 1)),
    "rows reordered": lambda p: p.write_text("".join([p.read_text().splitlines(keepends=True)[0]]
                                                     + p.read_text().splitlines(keepends=True)[:0:-1])),
}


@pytest.fixture(scope="module")
def trained_on_csv(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("identity")
    return csv_run(folder), folder / "iris.csv"


@pytest.mark.parametrize("change", CHANGES, ids=list(CHANGES))
@pytest.mark.parametrize("command", ["eval-val", "eval-train", "landscape"])
def test_a_changed_training_file_is_refused_naming_it(trained_on_csv, tmp_path, change, command):
    run, data = trained_on_csv
    original = data.read_bytes()
    try:
        CHANGES[change](data)
        args = (["eval", str(run), "--split", command.split("-")[1]] if command.startswith("eval")
                else ["landscape", str(run), "--points", "3", "--out", str(tmp_path / "l")])
        result = runner.invoke(app, args)
        assert result.exit_code == 3, result.output + result.stderr
        message = " ".join(result.stderr.split())
        assert str(data) in message and "changed since training" in message and "Traceback" not in message
        # --data FILE stays the way to evaluate new data
        if change != "a new class":
            assert runner.invoke(app, ["eval", str(run), "--data", str(data)]).exit_code == 0
    finally:
        data.write_bytes(original)


@pytest.mark.parametrize("change", CHANGES, ids=list(CHANGES))
def test_resume_refuses_changed_data_and_changes_nothing(tmp_path, change):
    run = csv_run(tmp_path, epochs=4, stop_after=9)
    CHANGES[change](tmp_path / "iris.csv")
    before = everything(run)
    with pytest.raises(DataError, match="changed since training") as info:
        api.resume(run)
    assert str(tmp_path / "iris.csv") in str(info.value)
    assert everything(run) == before


def test_the_checkpoint_holds_each_file_and_the_split(trained_on_csv):
    run, data = trained_on_csv
    meta = checkpoint.load(run / "checkpoints" / "best.safetensors").meta
    entry, = meta["data"]["files"]
    assert entry == {"role": "train", "path": str(data), "size": data.stat().st_size,
                     "sha256": hashlib.sha256(data.read_bytes()).hexdigest()}
    assert meta["data"]["split"]["rows"] == 150 and meta["data"]["split"]["validation_rows"] == 30


def test_eval_uses_the_stored_split_not_a_redrawn_one(trained_on_csv, monkeypatch):
    # Even if drawing the split changed (another version, another algorithm), eval uses the rows
    # the run validated on.
    from sgdcli.data import splits

    run, _ = trained_on_csv
    expected = api.evaluate(run, split="val")
    monkeypatch.setattr(splits, "validation_mask", lambda data, *a, **k: np.arange(len(data)) % 2 == 0)
    again = api.evaluate(run, split="val")
    assert again["samples"] == expected["samples"] == 30 and again["loss"] == expected["loss"]


def test_a_changed_test_file_is_refused(tmp_path):
    test_file = tmp_path / "test.csv"
    shutil.copy(REPO / "data" / "iris.csv", test_file)
    run = csv_run(tmp_path, test_file=str(test_file))
    assert api.evaluate(run, split="test")["samples"] == 150
    append_rows(test_file, "5.0,3.0,1.5,0.2,setosa\n")
    with pytest.raises(DataError, match="changed since training") as info:
        api.evaluate(run, split="test")
    assert str(test_file) in str(info.value)
    assert api.evaluate(run, split="val")["samples"] == 30  # the training file is unchanged


def test_a_checkpoint_from_before_data_was_recorded_still_evaluates(trained_on_csv, tmp_path):
    run, _ = trained_on_csv
    saved = checkpoint.load(run / "checkpoints" / "best.safetensors")
    del saved.meta["data"]
    old = tmp_path / "old.safetensors"
    checkpoint.save(old, saved)
    assert api.evaluate(old, split="val")["samples"] == 30
