"""Every JSON document sgdcli writes or prints is strict JSON (RFC 8259): a diverged run's NaN or inf is
null, never bare NaN or Infinity; and what sgdcli wrote before (NaN in summary.json or a checkpoint's
meta) still loads. Evaluating a diverged model spills no NumPy warnings."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, tiny_config
from typer.testing import CliRunner

from sgdcli import api, strict_json
from sgdcli.cli.app import app
from sgdcli.errors import DataError
from sgdcli.runs import checkpoint
from sgdcli.runs import directory as runs


def strict_loads(text: str):
    """json.loads as a strict parser (JavaScript's JSON.parse) reads: NaN, Infinity and -Infinity refused."""
    def refuse(constant: str):
        raise ValueError(f"not JSON (RFC 8259): {constant}")

    return json.loads(text, parse_constant=refuse)


def test_strict_loads_refuses_what_python_writes_by_default():
    # The oracle can fail: Python's own json.dumps writes bare NaN, which it must refuse.
    with pytest.raises(ValueError, match="NaN"):
        strict_loads(json.dumps({"loss": float("nan")}))


# ---------------------------------------------------------------- the helper
def test_non_finite_values_at_any_depth_become_null():
    value = {"nan": float("nan"), "inf": float("inf"), "-inf": -math.inf, "f32": np.float32("nan"),
             "f64": np.float64("-inf"), "nested": [1.5, (float("inf"), {"deep": [np.float32("inf")]})],
             "kept": [0, -2.25, "NaN", None, True, np.float32(0.5), np.int64(7)]}
    assert strict_json.nulled(value) == {
        "nan": None, "inf": None, "-inf": None, "f32": None, "f64": None, "nested": [1.5, [None, {"deep": [None]}]],
        "kept": [0, -2.25, "NaN", None, True, 0.5, 7]}
    text = strict_json.dumps(value, indent=2)
    assert "NaN," not in text and "Infinity" not in text
    parsed = strict_loads(text)
    assert parsed["nested"] == [1.5, [None, {"deep": [None]}]] and parsed["kept"][5:] == [0.5, 7]
    assert type(strict_json.nulled(np.float32(0.5))) is float and type(strict_json.nulled(np.int64(7))) is int


def test_finite_values_are_written_exactly_as_json_writes_them():
    value = {"a": [0.1, 1e-300, 1.7976931348623157e308, -0.0], "b": {"c": "d", "e": [1, 2]}, "f": None}
    assert strict_json.dumps(value, indent=2, sort_keys=True) == json.dumps(value, indent=2, sort_keys=True)


# ---------------------------------------------------------------- a diverged run, through every JSON output
# One full-batch update with step size 1e30 makes a ReLU network's outputs overflow: epoch 1 ends with a
# NaN validation and whole-training-set loss (its batch loss, before the update, was finite), and
# epoch 2 diverges.
DIVERGING = {"model__layers__0__activation": "relu", "optimizer": {"type": "sgd", "learning_rate": 1e30},
             "training__batch": {"mode": "full"}, "training__epochs": 3, "training__eval_train": True}
IRIS = {"source": "csv", "path": str(REPO / "data" / "iris.csv"), "target": "species", "scale": "standard",
        "validation": 0.2}


def train_diverged(runs_dir: Path, **changes) -> Path:
    result = api.train(api.load_config(tiny_config(**DIVERGING, **changes)), runs_dir=runs_dir)
    assert result.status == "diverged" and math.isnan(result.summary["final"]["val_loss"])
    return result.run_dir


@pytest.fixture(scope="module")
def diverged_run(tmp_path_factory) -> Path:
    """The tiny config (synthetic moons, 2-8-2), diverged. Synthetic data on purpose for the commands run
    as processes: pyarrow's CSV reader threads can abort a process at exit (apache/arrow#34314)."""
    return train_diverged(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def diverged_csv_run(tmp_path_factory) -> Path:
    """Iris (a CSV: what predict and eval --data read) on a 4-8-3 network, diverged."""
    return train_diverged(tmp_path_factory.mktemp("runs"), data=IRIS, model__layers__1__units=3)


def test_summary_json_is_strict_with_null_where_the_loss_was_nan(diverged_run):
    summary = strict_loads((diverged_run / runs.SUMMARY).read_text(encoding="utf-8"))
    assert summary["status"] == "diverged" and summary["epochs"] == 1
    assert summary["final"]["val_loss"] is None and summary["final"]["train_loss_full"] is None
    assert math.isfinite(summary["final"]["train_loss"])  # the epoch's batch loss was finite: kept


def test_eval_json_is_strict_and_no_numpy_warning_reaches_stderr(diverged_run, tmp_path):
    result = subprocess.run([sys.executable, "-m", "sgdcli", "eval", str(diverged_run), "--json"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr  # e.g. "RuntimeWarning: overflow encountered in matmul"
    report = strict_loads(result.stdout)
    assert report["loss"] is None and report["samples"] == 30 and 0 <= report["accuracy"] <= 1


def test_predict_json_is_strict_and_raises_no_numpy_warning(diverged_csv_run):
    text = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # what would reach stderr
        assert api.predict(diverged_csv_run, IRIS["path"], fmt="json", stream=text) == 150
    rows = strict_loads(text.getvalue())
    assert len(rows) == 150 and all(row["p_setosa"] is None and row["p_virginica"] is None for row in rows)
    assert {row["predicted_species"] for row in rows} <= {"setosa", "versicolor", "virginica"}


def test_evaluation_silences_warnings_only_inside_and_still_raises_errors(diverged_csv_run, tmp_path):
    before = np.geterr()
    assert math.isnan(api.evaluate(diverged_csv_run)["loss"])
    assert np.geterr() == before  # the caller's floating-point settings are back
    other = tmp_path / "other.csv"
    other.write_text("a,b,species\n1,2,setosa\n")
    with pytest.raises(DataError):  # a real problem is still an error
        api.evaluate(diverged_csv_run, data=other)


def test_boundary_of_a_diverged_classifier_raises_no_numpy_warning(diverged_run, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        files, maps = api.boundary(diverged_run, units=True, out=tmp_path / "b")
    assert [f.name for f in files] == ["b.png", "b-units.png"] and maps.shape[0] == 8


def test_compare_json_is_strict_with_null_where_the_loss_was_nan(diverged_run, tmp_path):
    result = CliRunner().invoke(app, ["compare", str(diverged_run), "--format", "json", "--plot",
                                      str(tmp_path / "cmp.png")])
    assert result.exit_code == 0, result.output
    (row,) = strict_loads(result.stdout)["runs"]
    assert row["status"] == "diverged" and row["final_val_loss"] is None and row["final_train_loss"] is None


# ---------------------------------------------------------------- what earlier versions wrote still reads
def test_a_summary_with_bare_nan_from_an_earlier_version_still_compares(diverged_run, tmp_path):
    old = tmp_path / diverged_run.name
    old.mkdir()
    for name in (runs.CONFIG, runs.METRICS):
        (old / name).write_bytes((diverged_run / name).read_bytes())
    summary = strict_loads((diverged_run / runs.SUMMARY).read_text(encoding="utf-8"))
    summary["final"]["val_loss"], summary["wall_seconds"] = float("nan"), float("inf")
    (old / runs.SUMMARY).write_text(json.dumps(summary, indent=2))  # as sgdcli wrote it before: bare NaN
    assert "NaN" in (old / runs.SUMMARY).read_text()

    record = runs.read_run(old)
    assert record.problems == [] and math.isnan(record.summary["final"]["val_loss"])
    result = CliRunner().invoke(app, ["compare", str(old), "--format", "json", "--plot", str(tmp_path / "c.png")])
    assert result.exit_code == 0, result.output
    (row,) = strict_loads(result.stdout)["runs"]
    assert row["status"] == "diverged" and row["final_val_loss"] is None and row["wall_seconds"] is None


def test_a_checkpoint_whose_meta_holds_nan_loads_and_evaluates(diverged_run):
    # A checkpoint's meta keeps NaN exactly (resume state; sgdcli/runs/checkpoint.py): such a file, as
    # every version has written after a divergence, must load, and what eval prints of it is strict.
    path = diverged_run / runs.CHECKPOINTS / runs.LAST
    state = checkpoint.load(path)
    assert math.isnan(state.meta["metrics"]["val_loss"])
    assert math.isnan(checkpoint.decode(checkpoint.encode(state), str(path)).meta["metrics"]["val_loss"])
    report = api.evaluate(path)
    assert math.isnan(report["loss"])
    assert strict_loads(strict_json.dumps(report))["loss"] is None


def test_the_shipped_schema_is_strict_json():
    strict_loads(api.config_schema())
    assert strict_loads((REPO / "sgdcli-config.schema.json").read_text(encoding="utf-8"))["$schema"]
