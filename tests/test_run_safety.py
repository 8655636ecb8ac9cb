"""The run directory is never a way to damage other files, a failed start leaves no half run, and a
resume's summary tells the truth (issue 10, items 4, 6 and 9)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config
from test_resume import StopAfter, config_for, interrupt
from typer.testing import CliRunner

from sgdcli import api
from sgdcli.cli.app import app
from sgdcli.config.loading import load_config
from sgdcli.errors import RunDirError
from sgdcli.runs import checkpoint

runner = CliRunner()


# ---------------------------------------------------------------- item 4: links planted in a run
PLANTED = ["run.lock", "metrics.csv", "config.yaml", "summary.json", "checkpoints/last.safetensors",
           "checkpoints/previous.safetensors"]


# Hard links matter where a file is written in place (the lock, the appended metrics); the others
# are replaced by rename, which never writes through a link.
LINKS = [(name, "symlink") for name in PLANTED] + [("run.lock", "hardlink"), ("metrics.csv", "hardlink")]


@pytest.mark.parametrize("name,link", LINKS, ids=[f"{link}-{name}" for name, link in LINKS])
def test_resume_refuses_links_in_the_run_and_leaves_their_targets_alone(tmp_path, name, link):
    run = interrupt(config_for("minibatch"), tmp_path / "runs", 9).run_dir
    victim = tmp_path / "victim.txt"
    planted = run / name
    victim.write_bytes(planted.read_bytes() if planted.exists() and planted.stat().st_size else b"precious\n")
    planted.unlink(missing_ok=True)
    if link == "symlink":
        planted.symlink_to(victim)
    else:
        os.link(victim, planted)
    before = victim.read_bytes()
    result = runner.invoke(app, ["train", "--resume", str(run)])
    assert result.exit_code == 4, result.output + result.stderr
    message = " ".join(result.stderr.split())
    assert str(planted) in message and "link" in message
    assert victim.read_bytes() == before


def test_a_linked_checkpoints_folder_is_refused(tmp_path):
    run = interrupt(config_for("minibatch"), tmp_path / "runs", 9).run_dir
    elsewhere = tmp_path / "elsewhere"
    (run / "checkpoints").rename(elsewhere)
    (run / "checkpoints").symlink_to(elsewhere)
    before = {p.name: p.read_bytes() for p in elsewhere.iterdir()}
    with pytest.raises(RunDirError, match="symbolic link"):
        api.resume(run)
    assert {p.name: p.read_bytes() for p in elsewhere.iterdir()} == before


# ---------------------------------------------------------------- item 6: disk full at the first writes
def limited_train(config_path: Path, runs_dir: Path, limit: int) -> subprocess.CompletedProcess:
    def apply_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "sgdcli", "train", str(config_path), "--runs-dir", str(runs_dir)],
                          capture_output=True, text=True, preexec_fn=apply_limit, timeout=120)


def test_a_run_that_cannot_write_its_first_files_leaves_nothing_behind(tmp_path):
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config()))
    probe = api.train(load_config(config_path), runs_dir=tmp_path / "probe").run_dir
    config_size = (probe / "config.yaml").stat().st_size
    checkpoint_size = (probe / "checkpoints" / "initial.safetensors").stat().st_size
    # the lock's process id, config.yaml, and the initial checkpoint: each the first write to fail
    for limit in (5, config_size - 1, config_size + 10, checkpoint_size - 1):
        runs_dir = tmp_path / f"runs-{limit}"
        result = limited_train(config_path, runs_dir, limit)
        assert result.returncode == 6, (limit, result.stderr)
        message = " ".join(result.stderr.split())
        assert "Traceback" not in message and "previous file is intact" not in message, (limit, message)
        assert "could not start" in message and "was removed" in message, (limit, message)
        assert list(runs_dir.iterdir()) == [], limit


# ---------------------------------------------------------------- item 9: summaries after a resume
class SlowFirstSegment(StopAfter):
    def batch(self, done, total, loss):
        super().batch(done, total, loss)
        time.sleep(0.05)


def test_wall_seconds_add_up_over_segments_like_train_seconds(tmp_path):
    stopper = SlowFirstSegment(8)  # 8 updates of at least 0.05 s in the first segment
    run = api.train(config_for("minibatch"), runs_dir=tmp_path, reporter=stopper, should_stop=stopper).run_dir
    first = json.loads((run / "summary.json").read_text())
    # An interrupted run's wall seconds are its checkpoint's, the ones a resume adds to (not the later moment
    # of the summary: saving the checkpoint took time the resumed run would not count, and its total could
    # come out below the interrupted run's).
    assert first["wall_seconds"] == round(checkpoint.load(run / "checkpoints" / "last.safetensors").meta["wall_seconds"], 3)
    resumed = api.resume(run).summary
    assert first["wall_seconds"] >= 0.4
    assert resumed["wall_seconds"] >= resumed["train_seconds"] >= 0.4
    assert resumed["wall_seconds"] >= first["wall_seconds"]


def everything(run: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(run)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(run.rglob("*")) if p.is_file() and p.name != "run.lock"}


@pytest.mark.parametrize("stop", ["completed", "stopped early"])
def test_resuming_a_finished_run_does_nothing(tmp_path, stop):
    changes = {"training__patience": 1, "training__epochs": 60,
               "optimizer": {"type": "sgd", "learning_rate": 2.0, "momentum": 0.9}} if stop == "stopped early" else {}
    run = api.train(load_config(tiny_config(**changes)), runs_dir=tmp_path).run_dir
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_early"] == (stop == "stopped early")
    before = everything(run)
    lock_before = (run / "run.lock").read_bytes()
    result = runner.invoke(app, ["train", "--resume", str(run)])
    assert result.exit_code == 0, result.stderr
    assert "nothing to do" in result.stderr and "resuming" not in result.stderr
    assert everything(run) == before and (run / "run.lock").read_bytes() == lock_before


def test_early_stopping_is_announced_with_the_metric_its_best_epoch_and_the_patience(tmp_path, write_config):
    config = tiny_config(training__patience=2, training__epochs=60,
                         optimizer={"type": "sgd", "learning_rate": 2.0, "momentum": 0.9})
    result = runner.invoke(app, ["train", str(write_config(config)), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.stderr
    summary = json.loads((Path(result.stdout.strip()) / "summary.json").read_text())
    epoch, best = summary["epochs"], summary["best_epoch"]
    assert summary["stopped_early"] and summary["status"] == "completed" and epoch - best == 2 and epoch < 60
    expected = (f"stopped early after epoch {epoch} of 60: val_loss has not improved for 2 epochs "
                f"(training.patience: 2); the best, {summary['best']['val_loss']:.6g} at epoch {best}, "
                "is in checkpoints/best.safetensors")
    assert summary["message"] == expected
    assert " ".join(expected.split()) in " ".join(result.stderr.split())  # rich may wrap the line


@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_eval_refuses_a_device_or_pipe_posing_as_a_checkpoint(tmp_path, special):
    # /dev/zero would never end (memory grows without bound); a FIFO would block forever.
    run = api.train(config_for("full", epochs=1), runs_dir=tmp_path / "runs").run_dir
    best = run / "checkpoints" / "best.safetensors"
    best.unlink()
    if special == "fifo":
        os.mkfifo(best)
    else:
        best.symlink_to(special)
    result = runner.invoke(app, ["eval", str(run)])
    assert result.exit_code == 4 and "special file" in result.stderr, result.stderr
