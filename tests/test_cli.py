"""End to end through the command line: train -> eval -> compare, exit codes, no tracebacks."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_config
from typer.testing import CliRunner

from sgdcli.cli import ranks
from sgdcli.cli.app import app
from sgdcli.training.parallel import NOT_TRAINING

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def train(config_path: Path, runs: Path, *extra: str) -> Path:
    result = run("train", config_path, "--runs-dir", runs, *extra)
    assert result.exit_code == 0, result.output + result.stderr
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    assert run_dir.is_dir() and run_dir.parent == runs
    return run_dir


@pytest.mark.parametrize("mode", ["sgd", "minibatch", "full"])
def test_train_eval_compare_in_each_batch_mode(tmp_path, write_config, mode):
    config = write_config(tiny_config(training__batch__mode=mode, training__epochs=3))
    runs = tmp_path / "runs"
    run_dir = train(config, runs)
    for name in ("config.yaml", "metrics.csv", "summary.json", "loss.png", "checkpoints/last.safetensors",
                 "checkpoints/best.safetensors"):
        assert (run_dir / name).is_file(), name
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    n_train = 90  # 120 moons samples, 25% held out for validation
    per_epoch = {"sgd": 90, "minibatch": 6, "full": 1}[mode]
    assert [int(r["updates"]) for r in rows] == [per_epoch, 2 * per_epoch, 3 * per_epoch]
    assert [int(r["samples"]) for r in rows] == [n_train, 2 * n_train, 3 * n_train]
    assert all(r["val_loss"] and r["val_accuracy"] and r["train_loss_full"] for r in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 3

    result = run("eval", run_dir, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["split"] == "val" and report["samples"] == 30
    assert report["loss"] == pytest.approx(min(float(r["val_loss"]) for r in rows), rel=1e-5)
    assert len(report["confusion_matrix"]) == 2 and sum(map(sum, report["confusion_matrix"])) == 30

    plot = tmp_path / "cmp.png"
    result = run("compare", run_dir, "--plot", plot, "--format", "json")
    assert result.exit_code == 0, result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_reduces_the_loss_and_reaches_good_accuracy(tmp_path, write_config):
    config = write_config(tiny_config(training__epochs=30))
    run_dir = train(config, tmp_path / "runs")
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert float(rows[-1]["train_loss_full"]) < 0.5 * float(rows[0]["train_loss_full"])
    assert float(rows[-1]["val_accuracy"]) >= 0.85


def test_compare_names_the_differing_key_and_handles_unequal_lengths(tmp_path, write_config):
    runs = tmp_path / "runs"
    a = train(write_config(tiny_config(), "a.yaml"), runs)
    b = train(write_config(tiny_config(training__batch__mode="full", training__epochs=6), "b.yaml"), runs)
    result = run("compare", a, b, "--format", "json", "--x", "samples", "--plot", tmp_path / "c.png")
    assert result.exit_code == 0, result.output
    table = json.loads(result.stdout)
    assert table["differing"] == ["training.batch.mode", "training.epochs"]
    assert [r["training.batch.mode"] for r in table["runs"]] == ["minibatch", "full"]
    assert [r["epochs"] for r in table["runs"]] == [4, 6]
    for fmt in ("table", "markdown", "csv"):
        result = run("compare", a, b, "--format", fmt, "--plot", tmp_path / "c.png", "--force")
        assert result.exit_code == 0 and "training.batch.mode" in result.stdout


def test_compare_reports_a_damaged_run_and_still_compares_the_others(tmp_path, write_config):
    runs = tmp_path / "runs"
    good = train(write_config(tiny_config()), runs)
    broken = runs / "broken"
    broken.mkdir()
    (broken / "metrics.csv").write_text("epoch,updates\n1,notanumber\n2,3\n")
    stray = runs / "notes.txt"
    stray.write_text("not a run")
    result = run("compare", good, broken, stray, "--format", "json", "--plot", tmp_path / "c.png")
    assert result.exit_code == 0, result.output  # damaged runs are rows of the comparison
    rows = json.loads(result.stdout)["runs"]
    assert rows[0]["status"] == "completed" and rows[0]["problems"] == ""
    assert "config.yaml" in rows[1]["problems"] and "metrics.csv" in rows[1]["problems"]
    assert rows[2]["problems"] == "not a run directory"
    # A path that does not exist at all (a typo) is a row too, but the command then exits 4, as eval does.
    result = run("compare", good, tmp_path / "missing", "--format", "json", "--plot", tmp_path / "c.png", "--force")
    assert result.exit_code == 4 and "missing: no such run directory" in result.stderr
    assert json.loads(result.stdout)["runs"][1]["problems"] == "no such run directory"


def test_eval_on_another_file_and_on_a_checkpoint_file(tmp_path):
    rows = ["a,b,label"] + [f"{i % 7},{(i * 3) % 5},{'yes' if i % 7 > 3 else 'no'}" for i in range(60)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "other.csv").write_text("b,label,a\n1,no,2\n4,yes,6\n")  # columns by name, any order
    config = tiny_config(data={"source": "csv", "path": "d.csv", "target": "label"}, training__epochs=20)
    config_path = tmp_path / "c.yaml"
    import yaml

    config_path.write_text(yaml.safe_dump(config))
    run_dir = train(config_path, tmp_path / "runs")
    result = run("eval", run_dir / "checkpoints" / "last.safetensors", "--data", tmp_path / "other.csv", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["samples"] == 2 and report["class_names"] == ["no", "yes"]
    (tmp_path / "unseen.csv").write_text("a,b,label\n1,1,maybe\n")
    result = run("eval", run_dir, "--data", tmp_path / "unseen.csv")
    assert result.exit_code == 3
    assert "row 2" in result.stderr and "'maybe' was not seen in training" in result.stderr


def test_set_and_name_options(tmp_path, write_config):
    run_dir = train(write_config(tiny_config()), tmp_path / "runs", "--set", "optimizer.momentum=0.5",
                    "--name", "renamed")
    assert run_dir.name.startswith("renamed-")
    saved = (run_dir / "config.yaml").read_text()
    assert "momentum: 0.5" in saved and "name: renamed" in saved


def test_two_runs_in_the_same_second_get_distinct_directories(tmp_path, write_config):
    config = write_config(tiny_config(training__epochs=1))
    first, second = train(config, tmp_path / "runs"), train(config, tmp_path / "runs")
    assert first != second and first.is_dir() and second.is_dir()


def test_validate_prints_the_resolved_config(write_config):
    result = run("validate", write_config(tiny_config()), "--set", "optimizer.learning_rate=1e-3")
    assert result.exit_code == 0
    assert "learning_rate: 0.001" in result.stdout and "nesterov: false" in result.stdout


def test_help_for_every_command():
    for command in ([], ["train"], ["eval"], ["compare"], ["validate"]):
        result = run(*command, "--help")
        assert result.exit_code == 0 and "Usage" in result.output


# ---------------------------------------------------------------- errors: exit codes, no traceback, nothing written
def sgdcli(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sgdcli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_bad_config_exit_2_no_traceback_no_run_dir(tmp_path, write_config):
    path = write_config(tiny_config(optimizer={"type": "sgd", "learning_rate": 0.1, "momentun": 0.9}))
    result = sgdcli("train", path, "--runs-dir", tmp_path / "runs", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(path) in result.stderr and "optimizer.momentun" in result.stderr and "did you mean" in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_bad_data_exit_3_names_row_and_column(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,label\n1,2,x\n3,,y\n")
    import yaml

    config = tiny_config(data={"source": "csv", "path": "d.csv", "target": "label", "validation": 0})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    result = runner.invoke(app, ["train", str(tmp_path / "c.yaml"), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 3
    assert "d.csv" in result.stderr and "row 3, column 'b': empty cell" in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_output_layer_size_must_match_the_classes(tmp_path, write_config):
    result = run("train", write_config(tiny_config(model__layers__1__units=3)), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2
    assert "model.layers.1.units: expected 2" in result.stderr


def test_bad_checkpoint_exit_4(tmp_path):
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(b"\x80\x04\x95" + b"\x00" * 40)  # a pickle stream
    result = sgdcli("eval", fake, cwd=tmp_path)
    assert result.returncode == 4 and "Traceback" not in result.stderr
    assert "pickle" in result.stderr and str(fake) in result.stderr
    result = sgdcli("eval", tmp_path / "missing-run", cwd=tmp_path)
    assert result.returncode == 4


def test_divergence_exit_5_keeps_last_good_checkpoint(tmp_path, write_config):
    # Step size 1e6 on mse regression blows up within a few updates of the second epoch or sooner.
    config = tiny_config(data={"source": "synthetic", "dataset": "sine", "samples": 64},
                         loss={"type": "mse"}, model__layers__1__units=1,
                         optimizer={"type": "sgd", "learning_rate": 5.0}, training__epochs=50)
    result = sgdcli("train", write_config(config), "--runs-dir", tmp_path / "runs", cwd=tmp_path)
    assert result.returncode == 5, result.stderr
    assert "Traceback" not in result.stderr and "smaller optimizer.learning_rate" in result.stderr
    run_dir = next((tmp_path / "runs").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged"
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    if rows:  # any epoch that completed left a loadable checkpoint with finite weights
        assert sgdcli("eval", run_dir, "--json", cwd=tmp_path).returncode == 0


def test_usage_error_exit_2(tmp_path):
    result = run("compare")
    assert result.exit_code == 2
    result = run("eval", tmp_path, "--split", "nope")
    assert result.exit_code == 2


def test_python_api_predicts_from_raw_features(tmp_path):
    from conftest import REPO

    from sgdcli import api

    result = api.train(api.load_config(REPO / "configs" / "iris.yaml", ["training.epochs=60"]), runs_dir=tmp_path)
    model = api.load_trained(result.run_dir)
    # Unscaled measurements of a typical flower of each species; the model scales them itself.
    assert model.predict_classes([[5.0, 3.4, 1.5, 0.2], [5.9, 2.8, 4.3, 1.3], [6.8, 3.0, 5.7, 2.2]]) == [
        "setosa", "versicolor", "virginica"]
    assert model.predict([[5.0, 3.4, 1.5, 0.2]]).shape == (1, 3)
    with pytest.raises(Exception, match=r"expected features of shape \(N, 4\)"):
        model.predict([[1.0, 2.0]])


def test_option_values_are_named_as_options_and_a_file_in_the_runs_path_as_a_file(tmp_path, write_config):
    config = write_config(tiny_config())
    result = run("train", config, "--name", "x/../y", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and result.stderr.startswith("error: --name: name: expected a string matching")
    (tmp_path / "afile").write_text("")
    for option, value in (("--runs-dir", tmp_path / "afile"), ("--run-dir", tmp_path / "afile" / "x"),
                          ("--runs-dir", tmp_path / "afile" / "deeper")):
        result = run("train", config, option, value)
        assert result.exit_code == 4, result.output
        assert f"{tmp_path / 'afile'}: is a file, not a folder: no run directory can be made in it" in result.stderr
    assert not (tmp_path / "runs").exists()
    import os

    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for target, kind in (("fifo", "a FIFO"), ("dangling", "a symbolic link to nothing")):
        result = run("train", config, "--runs-dir", tmp_path / target / "x")
        assert result.exit_code == 4, result.output
        assert f"{tmp_path / target}: is {kind}, not a folder: no run directory can be made in it" in result.stderr
        result = run("lr-find", config, "--out", tmp_path / target, "--updates", "3")
        assert result.exit_code == 4 and f"is {kind}, not a folder" in result.stderr, result.output


# Each command but train, with arguments it parses: under mpiexec it is refused before it reads them.
ONE_PROCESS = {"eval": ["r"], "predict": ["r", "--data", "d.csv"], "export": ["r", "--format", "npz", "--out", "m.npz"],
               "schema": [], "compare": ["r"], "validate": ["c.yaml"], "gradcheck": ["c.yaml"], "landscape": ["r"],
               "boundary": ["r"], "lr-find": ["c.yaml"], "optimizers": []}


def test_every_command_but_train_is_refused_under_mpiexec_once_with_nothing_written(tmp_path, monkeypatch):
    """P copies of eval, lr-find or export would each do the work and write it (lr-find: P directories;
    predict --out: P writers of one file): rank 0 says once that the command runs on one process (exit 2), the
    other ranks end quietly with the same status. From the launcher's environment alone (training/launch.py)."""
    names = {command.name or command.callback.__name__ for command in app.registered_commands} - {"train"}
    assert names == ONE_PROCESS.keys()  # a new command must say how it runs under mpiexec
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PMI_SIZE", "2")
    sent = []
    # The statuses every process sends before leaving (cli/ranks.py; MPI itself in tests/test_mpi.py): all
    # failed alike (rank 0 says it), or rank 0 went on to train (this one, rank 1, says it, naming itself).
    for rank, others, said in (("0", 2, "error: sgdcli"), ("1", 2, None), ("1", 0, "error: MPI process 1: sgdcli")):
        monkeypatch.setenv("PMI_RANK", rank)
        monkeypatch.setattr(ranks, "exchange", lambda code, others=others: sent.append(code) or [others, code])
        for name, args in ONE_PROCESS.items():
            result = runner.invoke(app, [name, *args])
            assert result.exit_code == 2 and sent.pop() == 2, (name, result.output)
            message = f"{said} {name} runs on one process; run it without mpiexec"
            assert result.stderr.count(message) == (said is not None) and "Traceback" not in result.output, (name, result.output)
            assert said is not None or result.stderr == ""
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("PMI_SIZE", "1")  # a launcher's single process: the command runs
    assert runner.invoke(app, ["optimizers"]).exit_code == 0


@pytest.mark.parametrize("ending,sent", [(SystemExit(2), 2), (SystemExit(None), NOT_TRAINING),
                                         (RuntimeError("a bug"), 1), (SystemExit("text"), 1)])
def test_a_process_ending_before_mpi_starts_sends_its_status_whatever_ends_it(monkeypatch, ending, sent):
    """Under a launcher, a process that ends before training (a usage error, --help, a bug's traceback) sends
    its status, so no other process waits for it (cli/ranks.py; the collective itself in tests/test_mpi.py)."""
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setenv("PMI_RANK", "0")
    exchanged = []
    monkeypatch.setattr(ranks, "exchange", lambda code: exchanged.append(code) or [code, 0])

    def app():
        raise ending

    with pytest.raises(type(ending)):
        ranks.run(app)
    assert exchanged == [sent]
