"""`sgdcli predict`: class names and probabilities (or values) for every row of a file, streamed in batches."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import yaml
from conftest import FASHION, tiny_config
from typer.testing import CliRunner

from sgdcli import api
from sgdcli.cli.app import app
from sgdcli.data import idx
from sgdcli.training import predict as predict_module

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def table(rows: int, seed: int = 0) -> str:
    """A CSV of two numeric features and a yes/no label that depends on them, plus an id column."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=rows), rng.normal(size=rows)
    lines = ["id,a,b,label"] + [f"r{i},{a[i]:.4f},{b[i]:.4f},{'yes' if a[i] + b[i] > 0 else 'no'}" for i in range(rows)]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("csvrun")
    (folder / "train.csv").write_text(table(200))
    config = tiny_config(data={"source": "csv", "path": "train.csv", "target": "label", "features": ["a", "b"]},
                         training__epochs=20)
    (folder / "c.yaml").write_text(yaml.safe_dump(config))
    return api.train(api.load_config(folder / "c.yaml"), runs_dir=folder / "runs").run_dir


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_predictions_are_class_names_and_probabilities_of_the_model(tmp_path, csv_run):
    # Columns in another order, no target column, one more column: matched by name, the rest ignored.
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 2))
    (tmp_path / "new.csv").write_text("b,note,id,a\n" + "".join(f"{r[1]},n,{i},{r[0]}\n" for i, r in enumerate(x)))
    result = run("predict", csv_run, "--data", tmp_path / "new.csv", "--keep", "id")
    assert result.exit_code == 0, result.output
    rows = read_csv(result.stdout)
    assert list(rows[0]) == ["id", "predicted_label", "p_no", "p_yes"]
    assert [r["id"] for r in rows] == [str(i) for i in range(30)]
    model = api.load_trained(csv_run)
    assert [r["predicted_label"] for r in rows] == model.predict_classes(x)
    logits = model.predict(x).astype(np.float64)
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    got = np.array([[float(r["p_no"]), float(r["p_yes"])] for r in rows])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert {"yes", "no"} == {r["predicted_label"] for r in rows}  # a real classifier, not a constant


def test_batches_give_the_same_rows_as_one_pass(tmp_path, csv_run):
    (tmp_path / "d.csv").write_text(table(103, seed=3))
    model = api.load_trained(csv_run)
    outputs = []
    for rows in (7, 100_000):
        buffer = io.StringIO()
        count = predict_module.write(predict_module.predictions(model, tmp_path / "d.csv", ["id"], rows), buffer, "csv")
        assert count == 103
        outputs.append(buffer.getvalue())
    assert outputs[0] == outputs[1]
    assert read_csv(outputs[0])[-1]["id"] == "r102"


def test_keep_the_true_label_beside_the_prediction_and_json_output(tmp_path, csv_run):
    (tmp_path / "d.csv").write_text(table(20, seed=4))
    result = run("predict", csv_run, "--data", tmp_path / "d.csv", "--keep", "label", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 20 and set(rows[0]) == {"label", "predicted_label", "p_no", "p_yes"}
    assert sum(r["label"] == r["predicted_label"] for r in rows) >= 16
    assert all(abs(r["p_no"] + r["p_yes"] - 1) < 1e-6 for r in rows)


def test_out_file_is_written_whole_and_never_replaced_silently(tmp_path, csv_run):
    (tmp_path / "d.csv").write_text(table(50))
    out = tmp_path / "pred.csv"
    assert run("predict", csv_run, "--data", tmp_path / "d.csv", "--out", out).exit_code == 0
    first = out.read_text()
    assert len(read_csv(first)) == 50
    result = run("predict", csv_run, "--data", tmp_path / "d.csv", "--out", out, "--format", "json")
    assert result.exit_code == 2 and "already exists" in result.stderr and "--force" in result.stderr
    assert out.read_text() == first
    assert run("predict", csv_run, "--data", tmp_path / "d.csv", "--out", out, "--format", "json",
               "--force").exit_code == 0
    assert len(json.loads(out.read_text())) == 50
    # A bad cell deep in the file: an error, and neither a half-written file nor a temporary one is left.
    lines = table(20_000).splitlines()
    lines[15_000] = "x,1.0,oops,yes"
    (tmp_path / "bad.csv").write_text("\n".join(lines) + "\n")
    result = run("predict", csv_run, "--data", tmp_path / "bad.csv", "--out", tmp_path / "new.csv")
    assert result.exit_code == 3 and "row 15001, column 'b': expected a number, received 'oops'" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "d.csv", "pred.csv"]


@pytest.mark.parametrize("text, message", [
    ("id,a,b\nr1,1.0,\n", "row 2, column 'b': empty cell"),
    ("id,a,b\nr1,1.0,2\nr2,nan,3\n", "row 3, column 'a': expected a finite number, received 'nan'"),
    ("id,a,b\nr1,1.0,2\nr2,x,3\n", "row 3, column 'a': expected a number, received 'x'"),
    ("id,a\nr1,1.0\n", "'b' not in the header"),
    ("id,a,b\nr1,1,2\nr2,1,2,3\n", "row 3: expected 3 cells like the header, received 4"),
    ("id,a,a,b\nr1,1,2,3\n", "header names column(s) a more than once"),
    ("", "the file is empty"),
    ("id,a,b\n", "no data rows after the header"),
])
def test_bad_input_is_a_data_error_naming_the_file_row_and_column(tmp_path, csv_run, text, message):
    (tmp_path / "in.csv").write_text(text)
    result = run("predict", csv_run, "--data", tmp_path / "in.csv")
    assert result.exit_code == 3, result.output
    assert message in result.stderr and str(tmp_path / "in.csv") in result.stderr
    assert "Traceback" not in result.output + result.stderr


def test_the_same_messages_as_eval_data(tmp_path, csv_run):
    for body in ("r1,1.0,,yes\n", "r1,1.0,2,yes\nr2,inf,3,no\n", "r1,1.0,2,yes\nr2,abc,3,no\n"):
        (tmp_path / "in.csv").write_text("id,a,b,label\n" + body)
        evaluated = run("eval", csv_run, "--data", tmp_path / "in.csv")
        predicted = run("predict", csv_run, "--data", tmp_path / "in.csv")
        assert evaluated.exit_code == predicted.exit_code == 3
        assert evaluated.stderr == predicted.stderr


def test_regression_writes_one_column_per_target(tmp_path):
    rows = ["x1,x2,y"] + [f"{i / 10},{(i % 7) / 3},{2 * i / 10 - (i % 7) / 3}" for i in range(80)]
    (tmp_path / "r.csv").write_text("\n".join(rows) + "\n")
    config = tiny_config(data={"source": "csv", "path": "r.csv", "target": "y"}, loss={"type": "mse"},
                         model__layers__1__units=1, training__epochs=3)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    run_dir = api.train(api.load_config(tmp_path / "c.yaml"), runs_dir=tmp_path / "runs").run_dir
    result = run("predict", run_dir, "--data", tmp_path / "r.csv")
    assert result.exit_code == 0, result.output
    got = read_csv(result.stdout)
    assert list(got[0]) == ["predicted_y"]
    x = np.array([[float(c) for c in line.split(",")[:2]] for line in rows[1:]])
    np.testing.assert_allclose([float(r["predicted_y"]) for r in got], api.load_trained(run_dir).predict(x)[:, 0],
                               rtol=1e-6)


def test_npz_input_needs_only_x(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    np.savez(tmp_path / "train.npz", x=x, y=(x[:, 0] > 0).astype(int))
    np.savez(tmp_path / "new.npz", x=x[:9])
    config = tiny_config(data={"source": "npz", "path": "train.npz"}, training__epochs=2)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    run_dir = api.train(api.load_config(tmp_path / "c.yaml"), runs_dir=tmp_path / "runs").run_dir
    result = run("predict", run_dir, "--data", tmp_path / "new.npz")
    assert result.exit_code == 0, result.output
    assert [r["predicted"] for r in read_csv(result.stdout)] == api.load_trained(run_dir).predict_classes(x[:9])
    np.savez(tmp_path / "narrow.npz", x=x[:, :2])
    result = run("predict", run_dir, "--data", tmp_path / "narrow.npz")
    assert result.exit_code == 3 and "expected 3 features" in result.stderr and "received 2" in result.stderr
    result = run("predict", run_dir, "--data", tmp_path / "new.npz", "--keep", "id")
    assert result.exit_code == 2 and "--keep" in result.stderr


def test_fashion_mnist_test_set_predictions_give_evals_accuracy(tmp_path, fashion_run):
    out = tmp_path / "fashion.csv"
    result = run("predict", fashion_run, "--data", FASHION, "--out", out)
    assert result.exit_code == 0, result.output
    rows = read_csv(out.read_text())
    report = api.evaluate(fashion_run, split="test")
    _, labels = idx.load_idx_pair(*idx.find_idx_files(FASHION)["test"])
    names = report["class_names"]
    assert len(rows) == report["samples"] == 10_000
    correct = sum(row["predicted"] == names[label] for row, label in zip(rows, labels))
    assert correct / len(rows) == report["accuracy"]
    assert 0.7 < report["accuracy"] < 1  # one epoch of a real model
    assert list(rows[0])[1:] == [f"p_{name}" for name in names] and names[0] == "T-shirt/top"


def test_idx_images_file_or_a_folder_without_labels(tmp_path):
    from test_idx import write
    from test_idx_source import NAMES, idx_config, make_images

    folder = tmp_path / "images"
    folder.mkdir()
    x, y = make_images(200, 0)
    write(folder / "train-images-idx3-ubyte.gz", x, gz=True)
    write(folder / "train-labels-idx1-ubyte.gz", y, gz=True)
    run_dir = api.train(api.load_config(idx_config(folder)), runs_dir=tmp_path / "runs").run_dir
    new = tmp_path / "new"
    new.mkdir()
    images, labels = make_images(40, 1)
    write(new / "t10k-images-idx3-ubyte", images)  # images only: predict needs no labels
    model = api.load_trained(run_dir)
    expected = model.predict_classes(images.reshape(40, -1))
    for data in (new, new / "t10k-images-idx3-ubyte"):
        result = run("predict", run_dir, "--data", data)
        assert result.exit_code == 0, result.output
        rows = read_csv(result.stdout)
        assert [r["predicted"] for r in rows] == expected and list(rows[0])[1:] == [f"p_{n}" for n in NAMES]
    assert sum(e == NAMES[label] for e, label in zip(expected, labels)) >= 30  # it learned the classes
    write(tmp_path / "wide-images-idx3-ubyte", np.zeros((3, 5, 5), np.uint8))
    result = run("predict", run_dir, "--data", tmp_path / "wide-images-idx3-ubyte")
    assert result.exit_code == 3 and "expected images of 16 pixels (4x4)" in result.stderr and "received 25" in result.stderr
    result = run("predict", run_dir, "--data", tmp_path / "runs")
    assert result.exit_code == 3 and "no IDX images file in the folder" in result.stderr


def test_rows_are_numbered_as_lines_of_the_file_like_eval_does(tmp_path, csv_run):
    # Blank lines are skipped but counted, as the training reader counts them.
    (tmp_path / "in.csv").write_text("id,a,b,label\nr1,1,2,yes\n\n\nr2,1,2,no\nr3,1,x,no\n")
    evaluated = run("eval", csv_run, "--data", tmp_path / "in.csv")
    predicted = run("predict", csv_run, "--data", tmp_path / "in.csv")
    assert "row 6, column 'b': expected a number, received 'x'" in predicted.stderr
    assert evaluated.stderr == predicted.stderr
