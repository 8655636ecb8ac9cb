"""A corpus of hostile and broken inputs: each gives one clear message, its exit code, and writes nothing."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tiny_config
from typer.testing import CliRunner

from sgdcli import api
from sgdcli.cli.app import app
from sgdcli.config.loading import load_config
from sgdcli import fileio
from sgdcli.runs import checkpoint

runner = CliRunner()
GOOD = yaml.safe_dump(tiny_config(), sort_keys=False)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(folder.rglob("*"))}


def check(tmp_path: Path, args: list[str], code: int, *fragments: str) -> str:
    before = snapshot(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output + result.stderr
    assert isinstance(result.exception, SystemExit)  # no uncaught exception, so no traceback
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    assert snapshot(tmp_path) == before, "a file was created or changed"
    return result.stderr


# ---------------------------------------------------------------- YAML
def nested(depth: int) -> str:
    return "a: " + "[" * depth + "]" * depth + "\n"


def billion_laughs() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


YAML_CASES = {
    "python object tag": ("name: !!python/object/apply:os.system ['touch pwned']\n", "only plain data"),
    "billion laughs": (billion_laughs(), "aliases"),
    "50,000 levels of nesting": (nested(50_000), "nested more than"),
    "deep block nesting": ("".join(" " * (2 * i) + "a:\n" for i in range(400)), "indented more than"),
    "duplicate keys": ("name: a\nseed: 1\nseed: 2\n", "duplicate key 'seed' on lines 2 and 3"),
    "empty file": ("", "the file is empty"),
    "only a comment": ("# nothing\n", "the file is empty"),
    "two documents": (GOOD + "---\n" + GOOD, "several"),
    "a list at the top": ("- name\n- seed\n", "expected a mapping of config keys at the top level, received a list"),
    "a list where a mapping belongs": (GOOD.replace("optimizer:\n", "optimizer: [1, 2]\nx:\n"), "optimizer: expected a mapping"),
    "tabs": ("name: x\nmodel:\n\tlayers: []\n", "line 3: tab character"),
    "too large": ("# " + "x" * 1_100_000 + "\n", "expected at most 1000000 bytes"),
    "not YAML": ("name: [unclosed\n", "not valid YAML"),
}


@pytest.mark.parametrize("text,expected", YAML_CASES.values(), ids=YAML_CASES.keys())
def test_hostile_yaml(tmp_path, text, expected):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    check(tmp_path, ["train", str(path), "--runs-dir", str(tmp_path / "runs")], 2, str(path), expected)
    assert not (tmp_path / "pwned").exists()


def test_config_not_utf8(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes(GOOD.replace("tiny", "caf\xe9").encode("latin-1"))
    check(tmp_path, ["train", str(path)], 2, str(path), "not UTF-8")


# ---------------------------------------------------------------- config values
VALUE_CASES = {
    "zero step size": ("optimizer.learning_rate=0", "optimizer.learning_rate: expected greater than 0"),
    "negative step size": ("optimizer.learning_rate=-0.1", "optimizer.learning_rate: expected greater than 0"),
    "nan step size": ("optimizer.learning_rate=.nan", "optimizer.learning_rate: expected a finite number"),
    "infinite step size": ("optimizer.learning_rate=.inf", "optimizer.learning_rate: expected a finite number"),
    "zero epochs": ("training.epochs=0", "training.epochs: expected greater than or equal to 1"),
    "negative epochs": ("training.epochs=-3", "training.epochs"),
    "zero batch": ("training.batch.size=0", "training.batch.size: expected greater than or equal to 1"),
    "batch larger than the data": ("training.batch.size=5000", "training.batch.size: expected at most 90"),
    "momentum one": ("optimizer.momentum=1", "optimizer.momentum: expected less than 1"),
    "dropout one": ("model.layers.0.rate=1.0", "model.layers.0"),
}


@pytest.mark.parametrize("override,expected", VALUE_CASES.values(), ids=VALUE_CASES.keys())
def test_bad_values(tmp_path, override, expected):
    path = tmp_path / "config.yaml"
    path.write_text(GOOD)
    check(tmp_path, ["train", str(path), "--set", override, "--runs-dir", str(tmp_path / "runs")], 2, expected)


def test_dropout_of_one_names_the_layer(tmp_path):
    config = tiny_config()
    config["model"]["layers"].insert(1, {"type": "dropout", "rate": 1})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    check(tmp_path, ["train", str(path)], 2, str(path), "model.layers.1.rate: expected less than 1, received 1")


# ---------------------------------------------------------------- data
def csv_config(tmp_path: Path, text: str, name: str = "d.csv") -> Path:
    (tmp_path / name).write_text(text)
    config = tiny_config(data={"source": "csv", "path": name, "target": "y", "validation": 0})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


CSV_CASES = {
    "nan cell": ("a,b,y\n1,2,0\n1,nan,1\n", "row 3, column 'b': expected a finite number, received 'nan'"),
    "inf cell": ("a,b,y\n1,inf,0\n1,2,1\n", "row 2, column 'b': expected a finite number, received 'inf'"),
    "empty cell": ("a,b,y\n1,2,0\n,2,1\n", "row 3, column 'a': empty cell"),
    "ragged row": ("a,b,y\n1,2,0\n1,2,1,7\n", "row 3: expected 3 cells like the header, received 4"),
    "empty file": ("", "the file is empty"),
    "header only": ("a,b,y\n", "no data rows"),
    "missing target": ("a,b,z\n1,2,0\n", "no target column 'y'"),
    "text in a number column": ("a,b,y\n1,two,0\n", "row 2, column 'b': expected a number, received 'two'"),
}


@pytest.mark.parametrize("text,expected", CSV_CASES.values(), ids=CSV_CASES.keys())
def test_bad_csv(tmp_path, text, expected):
    config = csv_config(tmp_path, text)
    check(tmp_path, ["train", str(config), "--runs-dir", str(tmp_path / "runs")], 3, str(tmp_path / "d.csv"), expected)


def npz_config(tmp_path: Path, name: str, writer) -> Path:
    writer(tmp_path / name)
    config = tiny_config(data={"source": "npz", "path": name, "validation": 0})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


NPZ_CASES = {
    "x/y length mismatch": (lambda p: np.savez(p, x=np.zeros((5, 2)), y=np.zeros(4, int)), "x has 5 samples but y has 4"),
    "object arrays": (lambda p: np.savez(p, x=np.array([None] * 4, dtype=object), y=np.zeros(4, int)), "without pickle"),
    "complex features": (lambda p: np.savez(p, x=np.ones((4, 2), complex), y=np.zeros(4, int)),
                         "x: expected a numeric array (booleans, integers or real floats), received complex128"),
    "a .npy, not an .npz": (lambda p: np.save(open(p, "wb"), np.zeros((3, 2))), "not a readable .npz archive"),
    "wrong array names": (lambda p: np.savez(p, a=np.zeros(2)), "expected arrays named 'x' and 'y'"),
    "nan features": (lambda p: np.savez(p, x=np.array([[0.0, np.nan]] * 4), y=np.zeros(4, int)), "x[0, 1]"),
}


@pytest.mark.parametrize("writer,expected", NPZ_CASES.values(), ids=NPZ_CASES.keys())
def test_bad_npz(tmp_path, writer, expected):
    config = npz_config(tmp_path, "d.npz", writer)
    check(tmp_path, ["train", str(config), "--runs-dir", str(tmp_path / "runs")], 3, str(tmp_path / "d.npz"), expected)


def test_npz_zip_bomb(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "memory_limit", lambda: 1_000_000)  # the real cap is the machine's memory
    config = npz_config(tmp_path, "bomb.npz", lambda p: np.savez_compressed(p, x=np.zeros((100_000, 20)),
                                                                             y=np.zeros(100_000, int)))
    assert (tmp_path / "bomb.npz").stat().st_size < 100_000  # 16 MB of zeros squeezed small
    check(tmp_path, ["train", str(config)], 3, "needs 33.6 MB of memory", "allows 1.0 MB")


# ---------------------------------------------------------------- checkpoints and runs
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("trained")
    rows = ["a,b,y"] + [f"{i % 5},{i % 3},{'p' if i % 2 else 'q'}" for i in range(40)]
    (folder / "d.csv").write_text("\n".join(rows) + "\n")
    config = load_config(tiny_config(data={"source": "csv", "path": "d.csv", "target": "y"}, training__epochs=2),
                         base_dir=folder)
    return api.train(config, runs_dir=folder / "runs").run_dir


@pytest.fixture
def run_copy(tmp_path, trained_run) -> Path:
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


def damaged(path: Path, how: str) -> None:
    raw = path.read_bytes()
    if how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "flipped bit":
        path.write_bytes(raw[:-10] + bytes([raw[-10] ^ 4]) + raw[-9:])
    elif how == "huge header":
        path.write_bytes((2**62).to_bytes(8, "little") + raw[8:])
    elif how == "pickle":
        path.write_bytes(b"\x80\x04\x95\x15\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94.")
    elif how == "pytorch zip":
        path.write_bytes(b"PK\x03\x04" + gzip.compress(b"archive/data.pkl"))
    elif how == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize("how,expected", [
    ("truncated", "damaged"), ("flipped bit", "checksum mismatch"), ("huge header", "unknown bytes"),
    ("pickle", "received a pickle, which sgdcli never loads"), ("pytorch zip", "zip archive (PyTorch?)"), ("empty", "received 0 bytes"),
])
def test_bad_checkpoints(tmp_path, run_copy, how, expected):
    target = run_copy / "checkpoints" / "best.safetensors"
    damaged(target, how)
    check(tmp_path, ["eval", str(target)], 4, str(target), expected)
    check(tmp_path, ["eval", str(run_copy)], 4, str(target), expected)  # a run dir uses best first


def test_checkpoint_from_a_different_architecture(tmp_path, run_copy):
    path = run_copy / "checkpoints" / "last.safetensors"
    state = checkpoint.load(path)
    state.meta["config"]["model"]["layers"][0]["units"] = 5  # the weights are for 8 units
    checkpoint.save(path, state)
    before = snapshot(tmp_path)
    check(tmp_path, ["eval", str(path)], 4, str(path), "wrong shape 0.weight (expected (2, 5), got (2, 8))")
    assert snapshot(tmp_path) == before


def test_eval_data_that_does_not_fit_the_model(tmp_path, run_copy):
    (tmp_path / "fewer.csv").write_text("a,y\n1,p\n")
    check(tmp_path, ["eval", str(run_copy), "--data", str(tmp_path / "fewer.csv")], 3, "fewer.csv",
          "feature column(s) 'b' not in the header")
    (tmp_path / "unseen.csv").write_text("a,b,y\n1,2,p\n1,2,r\n")
    check(tmp_path, ["eval", str(run_copy), "--data", str(tmp_path / "unseen.csv")], 3, "unseen.csv",
          "row 3: class label 'r' was not seen in training (known: p, q)")


def test_not_a_run_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    check(tmp_path, ["eval", str(tmp_path / "empty")], 4, "not a run directory (no config.yaml or checkpoints/ in it)")
    check(tmp_path, ["train", "--resume", str(tmp_path / "empty")], 4, "not a run directory")
    check(tmp_path, ["eval", str(tmp_path / "missing")], 4, "no such run directory")


def test_eval_and_compare_never_write_into_the_runs_they_read(tmp_path, run_copy):
    before = snapshot(run_copy)
    assert runner.invoke(app, ["eval", str(run_copy), "--json"]).exit_code == 0
    assert runner.invoke(app, ["compare", str(run_copy), "--plot", str(tmp_path / "c.png")]).exit_code == 0
    assert snapshot(run_copy) == before
