"""Issue 11 outcomes that are values rather than CLI rows: label encoding and mapping back, macro
averages, constant columns, checked scalers, memory bounds of reads, the CSV progress line."""

from __future__ import annotations

import gzip
import json
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tiny_config
from typer.testing import CliRunner

from sgdcli import api, fileio
from sgdcli.cli.app import app
from sgdcli.config.loading import load_config
from sgdcli.config.yamlio import read_yaml
from sgdcli.data import csvfile, idx
from sgdcli.data.labels import encode_labels
from sgdcli.data.npzfile import load_npz
from sgdcli.data.scaling import Scaler
from sgdcli.engine.metrics import NO_CLASS, classification_report, predict_labels
from sgdcli.errors import ConfigError, DataError
from sgdcli.runs import checkpoint

runner = CliRunner()


def csv_rows(labels, extra=None) -> str:
    """Rows whose class is a clean function of the features (`a` large for the second class)."""
    names = sorted(set(labels), key=str)
    header = "a,b" + (",c" if extra is not None else "") + ",y\n"
    out = []
    for i, label in enumerate(labels):
        a = 2.0 * names.index(label) - 1.0 + 0.1 * ((i * 7) % 5 - 2)
        cells = [f"{a:.2f}", f"{(i * 3) % 4 - 1.5:.1f}"] + ([extra] if extra is not None else []) + [str(label)]
        out.append(",".join(cells))
    return header + "\n".join(out) + "\n"


def train_csv(folder: Path, text: str, units: int = 2, loss: str = "cross_entropy", epochs: int = 30) -> Path:
    (folder / "d.csv").write_text(text)
    config = tiny_config(data={"source": "csv", "path": "d.csv", "target": "y", "validation": 0},
                         model__layers__1__units=units, loss={"type": loss}, training__epochs=epochs,
                         training__batch__size=8)
    (folder / "c.yaml").write_text(yaml.safe_dump(config))
    result = api.train(load_config(folder / "c.yaml"), runs_dir=folder / "runs")
    assert result.status == "completed"
    return result.run_dir


# ---------------------------------------------------------------- 1. label encoding
def test_labels_are_encoded_like_label_encoder():
    indices, names = encode_labels(np.array([7, 5, 7, 5]), "src")
    assert names == ("5", "7") and indices.tolist() == [1, 0, 1, 0]
    indices, names = encode_labels(np.array(["10", "2", "2.0", "02", "10"]), "src")  # numbers sort by value
    assert names == ("2", "10") and indices.tolist() == [1, 0, 0, 0, 1]
    indices, names = encode_labels(np.array([1.0, 2.5, 1.0]), "src")
    assert names == ("1", "2.5") and indices.tolist() == [0, 1, 0]
    indices, names = encode_labels(np.array([-1, 1, -1]), "src")
    assert names == ("-1", "1") and indices.tolist() == [0, 1, 0]
    # integers beyond float precision stay distinct and in order; 1e1 is the number 10
    indices, names = encode_labels(np.array(["9007199254740993", "9007199254740992", "1e1", "10"]), "src")
    assert names == ("10", "9007199254740992", "9007199254740993") and indices.tolist() == [2, 1, 0, 0]
    with pytest.raises(DataError, match="sample 1: expected a class label"):
        encode_labels(np.array(["a", "NA", "b"]), "src")
    with pytest.raises(DataError, match="single class, 'x'"):
        encode_labels(np.array(["x", " x"]), "src")
    # a trained model's classes: labels are matched by value, whatever their spelling
    indices, _ = encode_labels(np.array(["7.0", "5"]), "src", class_names=("5", "7"))
    assert indices.tolist() == [1, 0]


def test_eval_and_predict_map_back_to_the_labels(tmp_path):
    run_dir = train_csv(tmp_path, csv_rows([5, 7] * 20))
    result = runner.invoke(app, ["eval", str(run_dir), "--split", "train", "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["class_names"] == ["5", "7"] and len(report["confusion_matrix"]) == 2
    assert report["accuracy"] == 1.0 and report["macro_f1"] == 1.0
    # another file spelling the labels as floats is matched to the same classes
    (tmp_path / "other.csv").write_text(csv_rows(["5.0", "7.0"] * 5))
    other = api.evaluate(run_dir, data=tmp_path / "other.csv")
    assert other["accuracy"] == 1.0 and [row["support"] for row in other["per_class"]] == [5, 5]
    model = api.load_trained(run_dir)
    assert model.predict_classes([[-1.0, 0.0], [1.0, 0.0]]) == ["5", "7"]


def test_binary_labels_one_and_two(tmp_path):
    run_dir = train_csv(tmp_path, csv_rows([1, 2] * 20), units=1, loss="binary_cross_entropy")
    report = api.evaluate(run_dir, split="train")
    assert report["class_names"] == ["1", "2"] and report["accuracy"] == 1.0


# ---------------------------------------------------------------- 2. macro averages
def test_macro_averages_cover_classes_present_in_true_or_predicted():
    names = ("a", "b", "c", "d", "e")
    report = classification_report(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]), names)
    assert report["macro_f1"] == 1.0 and report["macro_precision"] == 1.0 and report["macro_recall"] == 1.0
    assert [row["class"] for row in report["per_class"]] == list(names)  # the table still lists every class
    # class c is only predicted: it counts (precision 0), as in sklearn.metrics.f1_score(average="macro")
    report = classification_report(np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1]), names)
    # a: p 1, r 0.5, f1 2/3; b: p 1, r 1, f1 1; c: p 0, r 0, f1 0 -> macro f1 (2/3 + 1 + 0) / 3
    assert report["macro_f1"] == pytest.approx((2 / 3 + 1) / 3)
    assert report["macro_precision"] == pytest.approx(2 / 3) and report["macro_recall"] == pytest.approx(0.5)


def test_a_row_whose_outputs_name_no_class_is_never_class_0_and_counts_as_wrong():
    """A tester's report: eval of far-out inputs (NaN logits) gave accuracy 1.0, argmax calling them class 0."""
    nan, inf = np.nan, np.inf
    logits = np.array([[nan, 1.0, 0.0], [inf, inf, 0.0], [inf, 1.0, 0.0], [0.0, 2.0, -inf], [1.0, 0.0, 0.0]])
    assert predict_labels(logits).tolist() == [NO_CLASS, NO_CLASS, 0, 1, 0]
    assert predict_labels(np.array([[nan], [inf], [-inf], [0.5]])).tolist() == [NO_CLASS, 1, 0, 1]  # one logit
    report = classification_report(np.array([0, 0, 1, 1]), np.array([NO_CLASS, 0, 1, NO_CLASS]), ("a", "b", "c"))
    assert report["no_class"] == 2 and report["accuracy"] == 0.5
    assert report["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert [row["recall"] for row in report["per_class"][:2]] == [0.5, 0.5]  # the support keeps the rows
    assert [row["support"] for row in report["per_class"][:2]] == [2, 2]
    assert "no_class" not in classification_report(np.array([0, 1]), np.array([0, 1]), ("a", "b"))


def test_predict_and_eval_of_far_out_inputs(tmp_path):
    run_dir = train_csv(tmp_path, csv_rows([5, 7] * 20), units=2)
    (tmp_path / "far.csv").write_text("a,b,y\n1e308,-1e308,5\n1e308,1e308,7\n-1,0,5\n")
    model = api.load_trained(run_dir)
    classes = model.predict_classes([[1e308, -1e308], [-1.0, 0.0]])
    assert classes[1] == "5" and (classes[0] is None or classes[0] in ("5", "7"))
    result = runner.invoke(app, ["eval", str(run_dir), "--data", str(tmp_path / "far.csv"), "--json"])
    assert result.exit_code == 0 and "Warning" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    assert report["accuracy"] <= (3 - report.get("no_class", 0)) / 3 and report["samples"] == 3
    result = runner.invoke(app, ["predict", str(run_dir), "--data", str(tmp_path / "far.csv")])
    assert result.exit_code == 0, result.stderr
    rows = result.stdout.strip().splitlines()
    assert len(rows) == 4 and rows[3].startswith("5,")
    nan_rows = [row for row in rows[1:] if "nan" in row]
    assert all(row.startswith(",") for row in nan_rows)  # no class named where the outputs are NaN


# ---------------------------------------------------------------- 4. constant columns
def test_near_constant_column_gets_scale_one():
    x = np.column_stack([np.full(200, 0.1), np.linspace(0, 1, 200)])
    standard = Scaler.fit(x, "standard")
    assert standard.scale[0] == 1.0 and standard.scale[1] == pytest.approx(x[:, 1].std())
    minmax = Scaler.fit(np.column_stack([np.full(10, 1e9), np.arange(10.0)]), "minmax")
    assert minmax.scale.tolist() == [1.0, 9.0]
    # a genuinely small spread is kept, however small the values
    tiny = Scaler.fit(np.array([[1e-12], [3e-12]]), "standard")
    assert tiny.scale[0] == pytest.approx(1e-12)


def test_eval_on_a_value_just_off_a_constant_column(tmp_path):
    # 100 rows of 0.1: the mean and variance leave a rounding residue (std 1.9e-16), not 0
    run_dir = train_csv(tmp_path, csv_rows(["p", "q"] * 50, extra="0.1"))
    (tmp_path / "off.csv").write_text(csv_rows(["p", "q"] * 50, extra="0.1001"))
    report = api.evaluate(run_dir, data=tmp_path / "off.csv")
    assert report["accuracy"] == 1.0 and report["loss"] < 1.0


@pytest.mark.parametrize("bad", [0.0, np.nan, np.inf, -1.0])
def test_checkpoint_with_a_bad_scale_is_refused(tmp_path, bad):
    run_dir = train_csv(tmp_path, csv_rows(["p", "q"] * 10), epochs=1)
    path = run_dir / "checkpoints" / "best.safetensors"
    saved = checkpoint.load(path)
    saved.scale = saved.scale.copy()
    saved.scale[1] = bad
    checkpoint.save(path, saved)  # a valid checksum over the bad values
    result = runner.invoke(app, ["eval", str(run_dir)])
    assert result.exit_code == 4, result.stderr
    assert "data/scale[1]" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------- 7. bounded reads
def peak_bytes(action) -> int:
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_idx_gzip_is_inflated_only_as_far_as_its_header_declares(tmp_path):
    header = bytes([0, 0, 0x08, 1]) + (60).to_bytes(4, "big")
    path = tmp_path / "bomb.idx.gz"
    path.write_bytes(gzip.compress(header + bytes(60) + bytes(100_000_000), compresslevel=9))
    assert path.stat().st_size < 200_000

    def read():
        with pytest.raises(DataError, match="trailing bytes"):
            idx.read_idx(path)

    assert peak_bytes(read) < 5_000_000  # not the 100 MB the file inflates to


def test_config_is_read_through_a_size_cap(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * 50_000_000)

    def read():
        with pytest.raises(ConfigError, match="at most 1000000 bytes"):
            read_yaml(path)

    assert peak_bytes(read) < 5_000_000


def test_npz_entry_longer_than_its_header_declares_is_refused(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((4, 2)), y=np.array([0, 1, 0, 1]))
    with zipfile.ZipFile(path) as archive:
        raw = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:  # x.npy: 50 MB of zeros after its data
        archive.writestr("x.npy", raw["x.npy"] + bytes(50_000_000))
        archive.writestr("y.npy", raw["y.npy"])

    def read():
        with pytest.raises(DataError, match="declares shape"):
            load_npz(path, classification=True)

    assert peak_bytes(read) < 5_000_000


def test_csv_larger_than_memory_allows_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "d.csv"
    path.write_text(csv_rows(["p", "q"] * 200))
    monkeypatch.setattr(fileio, "memory_limit", lambda: 4 * path.stat().st_size - 1)
    with pytest.raises(DataError, match="about 4 times its size.*this machine allows"):
        csvfile.load_csv(path, "y", None, classification=True)
    monkeypatch.setattr(fileio, "memory_limit", lambda: 4 * path.stat().st_size)
    assert len(csvfile.load_csv(path, "y", None, classification=True)) == 400


def test_numeric_csv_labels_make_no_per_row_python_objects(tmp_path):
    rows = 100_000
    labels = np.arange(rows) % 3
    text = "a,y\n" + "".join(f"{i % 10},{label}\n" for i, label in enumerate(labels))
    path = tmp_path / "d.csv"
    path.write_text(text)
    data = {}
    peak = peak_bytes(lambda: data.update(d=csvfile.load_csv(path, "y", None, classification=True)))
    assert data["d"].class_names == ("0", "1", "2") and data["d"].y.tolist()[:4] == [0, 1, 2, 0]
    # x (0.8 MB) and y (0.8 MB) and a few block-sized copies; one Python str per row would be > 5 MB
    assert peak < 5_000_000


# ---------------------------------------------------------------- 8. CSV reader
def test_csv_progress_line_for_slow_loads(tmp_path, monkeypatch, capsys):
    path = tmp_path / "d.csv"
    path.write_text(csv_rows(["p", "q"] * 10))
    monkeypatch.setattr(csvfile, "PROGRESS_AFTER", 0.0)  # every load is "slow"
    csvfile.load_csv(path, "y", None, classification=True)
    err = capsys.readouterr().err
    assert f"reading {path}: 100% of" in err and f"read {path}: 20 rows in" in err


def test_csv_row_numbers_count_lines_past_blank_lines_and_quoted_newlines(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('a,b,y\n1,2,"p\nq"\n\n3,4,q\n5,x,p\n')
    with pytest.raises(DataError, match="row 6, column 'b': expected a number, received 'x'"):
        csvfile.load_csv(path, "y", None, classification=True)


def test_wide_csv_loads_every_column_in_order(tmp_path):
    # 100,000 columns: benchmarks/csv_load.py measures the time; here the result of a narrower case
    width = 20_000
    path = tmp_path / "wide.csv"
    path.write_text(",".join(f"f{i}" for i in range(width)) + ",y\n"
                    + "".join(",".join(str((i + j) % 7) for j in range(width)) + f",{i % 2}\n" for i in range(4)))
    data = csvfile.load_csv(path, "y", None, classification=True)
    assert data.x.shape == (4, width) and data.x[3, 5] == 1.0 and data.feature_names[-1] == f"f{width - 1}"
