"""Messages in people's words: a folder of runs or a data file where a run or checkpoint belongs."""

from __future__ import annotations

import gzip
import re

import numpy as np
import pytest
from conftest import REPO, tiny_config
from typer.testing import CliRunner

from sgdcli import api
from sgdcli.cli.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def runs_folder(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    for name in ("first", "second"):
        api.train(api.load_config(tiny_config(name=name, training__epochs=1)), runs_dir=runs)
    return runs


@pytest.mark.parametrize("command", [["eval"], ["predict", "--data", "x.csv"], ["export", "--format", "npz",
                                                                                   "--out", "m.npz"]])
def test_a_folder_of_runs_says_so_and_how_to_pick_one(runs_folder, command):
    result = runner.invoke(app, [command[0], str(runs_folder), *command[1:]])
    assert result.exit_code == 4 and "Traceback" not in result.stderr
    newest = max(runs_folder.iterdir(), key=lambda p: p.stat().st_mtime)
    assert "a folder of 2 runs, not a run directory" in result.stderr
    assert f"e.g. {newest} (the newest)" in result.stderr and f"sgdcli compare {runs_folder}/*" in result.stderr


def idx_labels() -> bytes:
    return b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + bytes([1, 2, 3])


FILES = {
    "wine.csv": (b"alcohol,acidity,quality\n12.8,0.3,good\n13.1,0.5,bad\n", "this is a CSV file (header: alcohol,acidity,quality)"),
    "table.txt": (b"a,b\n1,2\n", "this is a CSV file (header: a,b)"),
    "config.yaml": ((REPO / "configs" / "iris.yaml").read_bytes(), "this is a YAML file (a config? train it with sgdcli train)"),
    "notes": (b"remember to train\n", "this is a text file"),
    "n": (b"x\n", "this is a text file"),
    "report.json": (b'{"accuracy": 0.9}', "this is a JSON file"),
    "labels-idx1-ubyte.gz": (gzip.compress(idx_labels()), "this is a gzip-compressed file (IDX images or labels?)"),
    "labels-idx1-ubyte": (idx_labels(), "this is an IDX data file"),
    "model.onnx": (b"\x08\x08\x12\x06sgdcli", "this is an ONNX model"),
}


@pytest.mark.parametrize("name", list(FILES))
def test_a_data_file_is_named_for_what_it_is_not_for_its_first_bytes(tmp_path, name):
    raw, fragment = FILES[name]
    (tmp_path / name).write_bytes(raw)
    result = runner.invoke(app, ["eval", str(tmp_path / name)])
    assert result.exit_code == 4 and "Traceback" not in result.stderr
    assert fragment in result.stderr, result.stderr
    assert "not a checkpoint; expected a run directory or a .safetensors checkpoint" in result.stderr
    assert "header" not in result.stderr.replace("(header:", "") and "claiming" not in result.stderr


def test_an_npz_data_archive_is_named_too(tmp_path):
    np.savez(tmp_path / "data.npz", x=np.zeros((2, 2)))
    result = runner.invoke(app, ["eval", str(tmp_path / "data.npz")])
    assert result.exit_code == 4 and "a NumPy .npz archive: data, not a model" in result.stderr


COMMANDS = ["train", "eval", "predict", "export", "schema", "compare", "validate", "gradcheck", "landscape",
            "optimizers", "boundary", "lr-find"]


def test_help_text_is_whole_at_80_columns():
    top = runner.invoke(app, ["--help"], terminal_width=80)
    assert top.exit_code == 0 and "..." not in top.stdout.split("Commands:")[1]  # every command's one-line summary, uncut
    assert all(f"  {command} " in top.stdout for command in COMMANDS)
    for command in COMMANDS:
        result = runner.invoke(app, [command, "--help"], terminal_width=80)
        assert result.exit_code == 0 and "Usage" in result.stdout
        stray_space = re.search(r"\w \.(\s|$)", result.stdout.replace("\n", " "))  # "own data ." (eaten markup)
        assert "<bool>" not in result.stdout and not stray_space, result.stdout
    words = {c: " ".join(runner.invoke(app, [c, "--help"], terminal_width=200).stdout.split()) for c in COMMANDS}
    assert "own data (default: test when the config names test data, else val)." in words["eval"]
    assert "PNG (default: ./landscape-RUN-DIRECTION)." in words["landscape"]
