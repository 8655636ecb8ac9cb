"""Data loading: CSV/NPZ readers, label encoding, stratified splits, scaling, built-in sets."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO, tiny_config

from sgdcli.config.loading import load_config
from sgdcli.data.csvfile import load_csv
from sgdcli.data.labels import encode_labels
from sgdcli.data.npzfile import load_npz
from sgdcli.data.scaling import Scaler
from sgdcli.data.splits import split
from sgdcli.data.synthetic import synthetic
from sgdcli.errors import DataError
from sgdcli.training import build


def write(tmp_path, text, name="d.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_csvs_load_with_their_shapes():
    iris = load_csv(REPO / "data" / "iris.csv", "species", None, classification=True)
    assert iris.x.shape == (150, 4) and iris.class_names == ("setosa", "versicolor", "virginica")
    assert np.bincount(iris.y).tolist() == [50, 50, 50]
    digits = load_csv(REPO / "data" / "digits.csv", "digit", None, classification=True)
    assert digits.x.shape == (1797, 64) and digits.class_names == tuple(str(i) for i in range(10))
    diabetes = load_csv(REPO / "data" / "diabetes.csv", "progression", None, classification=False)
    assert diabetes.x.shape == (442, 10) and diabetes.y.shape == (442, 1) and diabetes.class_names is None


@pytest.mark.parametrize("text,expected", [
    ("a,b,y\n1,2,0\n1,nan,1\n", "row 3, column 'b': expected a finite number, received 'nan'"),
    ("a,b,y\n1,2,0\n1,inf,1\n", "row 3, column 'b': expected a finite number"),
    ("a,b,y\n1,,0\n", "row 2, column 'b': empty cell"),
    ("a,b,y\n1,x2,0\n", "row 2, column 'b': expected a number, received 'x2'"),
    ("a,b,y\n1,2\n", "row 2: expected 3 cells like the header, received 2"),
    ("a,b,y\n1,2,\n", "row 2, column 'y': empty target cell"),
    ("a,b,z\n1,2,3\n", "no target column 'y'"),
    ("a,a,y\n1,2,3\n", "more than once"),
    ("", "the file is empty"),
    ("a,b,y\n", "no data rows"),
])
def test_csv_problems_name_row_and_column(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(DataError) as info:
        load_csv(path, "y", None, classification=True)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_missing_csv(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_csv(tmp_path / "nope.csv", "y", None, True)


def test_string_labels_sorted_integer_labels_encoded():
    indices, names = encode_labels(["b", "a", "c", "a"], "src")
    assert names == ("a", "b", "c") and indices.tolist() == [1, 0, 2, 0]
    indices, names = encode_labels(["3", "1", "3"], "src")  # LabelEncoder: no phantom classes 0 and 2
    assert names == ("1", "3") and indices.tolist() == [1, 0, 1]
    with pytest.raises(DataError, match="'z' was not seen in training"):
        encode_labels(["a", "z"], "src", class_names=("a", "b"))


def test_stratified_split_keeps_class_proportions_and_is_seeded():
    data = load_csv(REPO / "data" / "iris.csv", "species", None, classification=True)
    train, val = split(data, 0.2, np.random.default_rng(1), stratify=True)
    assert np.bincount(val.y).tolist() == [10, 10, 10] and np.bincount(train.y).tolist() == [40, 40, 40]
    again_train, again_val = split(data, 0.2, np.random.default_rng(1), stratify=True)
    assert np.array_equal(val.x, again_val.x)
    assert len(set(map(tuple, train.x.tolist())) & set(map(tuple, val.x.tolist()))) <= 1  # iris has 1 duplicate row


def test_scaler_fit_on_training_split_only(tmp_path):
    config = load_config(tiny_config(data={"source": "csv", "path": str(REPO / "data" / "diabetes.csv"),
                                           "target": "progression"}, loss={"type": "mse"}))
    prepared = build.prepare_data(config, build.Rngs.from_seed(0))
    assert np.allclose(prepared.x_train.mean(axis=0), 0, atol=1e-5)
    assert np.allclose(prepared.x_train.std(axis=0), 1, atol=1e-4)
    assert not np.allclose(prepared.x_val.mean(axis=0), 0, atol=1e-3)  # val is scaled with train statistics
    assert prepared.x_train.dtype == np.float32 and prepared.y_train.dtype == np.float32


def test_minmax_and_constant_features():
    x = np.array([[0.0, 5.0], [10.0, 5.0]])
    scaled = Scaler.fit(x, "minmax").transform(x, np.float64)
    assert scaled.tolist() == [[0.0, 0.0], [1.0, 0.0]]


@pytest.mark.parametrize("name", ["xor", "spirals", "moons", "circles", "sine"])
def test_synthetic_sets_are_seeded(name):
    a = synthetic(name, 50, 0.1, np.random.default_rng(3))
    b = synthetic(name, 50, 0.1, np.random.default_rng(3))
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y) and len(a) == 50
    if name == "sine":
        assert a.y.shape == (50, 1)
    else:
        assert set(a.y.tolist()) == {0, 1}


def test_npz_loads_and_refuses_object_arrays(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, x=np.arange(12.0).reshape(6, 2), y=np.array([0, 1, 0, 1, 0, 1]))
    data = load_npz(good, classification=True)
    assert data.x.shape == (6, 2) and data.class_names == ("0", "1")
    bad = tmp_path / "objects.npz"
    np.savez(bad, x=np.array([{"a": 1}] * 2, dtype=object), y=np.array([0, 1]))
    with pytest.raises(DataError, match="without pickle"):
        load_npz(bad, classification=True)
    mismatch = tmp_path / "mismatch.npz"
    np.savez(mismatch, x=np.zeros((3, 2)), y=np.zeros(2))
    with pytest.raises(DataError, match="x has 3 samples but y has 2"):
        load_npz(mismatch, classification=False)
    missing = tmp_path / "keys.npz"
    np.savez(missing, a=np.zeros(2))
    with pytest.raises(DataError, match="expected arrays named 'x' and 'y'"):
        load_npz(missing, classification=False)


def test_batch_size_larger_than_the_data_is_refused():
    from sgdcli.errors import ConfigError

    config = load_config(tiny_config(training__batch__size=1000))
    with pytest.raises(ConfigError, match="training.batch.size: expected at most the 90 training samples"):
        build.batch_size(config.training, 90)
    assert build.batch_size(load_config(tiny_config(training__batch__mode="full")).training, 90) == 90
    assert build.batch_size(load_config(tiny_config(training__batch__mode="sgd")).training, 90) == 1


def test_npz_one_hot_targets_become_class_indices(tmp_path):
    path = tmp_path / "onehot.npz"
    np.savez(path, x=np.zeros((3, 2)), y=np.eye(4)[[3, 0, 3]])
    data = load_npz(path, classification=True)
    assert data.y.tolist() == [3, 0, 3] and data.class_names == ("0", "1", "2", "3")
    soft = tmp_path / "soft.npz"
    np.savez(soft, x=np.zeros((2, 2)), y=np.array([[0.5, 0.5], [1.0, 0.0]]))
    with pytest.raises(DataError, match="one-hot rows"):
        load_npz(soft, classification=True)
