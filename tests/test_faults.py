"""Injected faults against a real `sgdcli train` process: SIGKILL, Ctrl-C, SIGTERM, a full disk."""

from __future__ import annotations

import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config
from forkserver import ForkServer
from test_resume import assert_identical

from sgdcli import api
from sgdcli.config.loading import load_config
from sgdcli.runs import checkpoint
from sgdcli.runs import directory as runs


def long_config(epochs: int = 40) -> dict:
    # sgd mode: 90 small updates an epoch, a checkpoint after each: kills land in updates and in writes.
    return tiny_config(training__epochs=epochs, training__batch__mode="sgd",
                       model__layers=[{"type": "dense", "units": 16, "activation": "tanh"},
                                      {"type": "dropout", "rate": 0.1}, {"type": "dense", "units": 2}],
                       optimizer={"type": "sgd", "learning_rate": 0.02, "momentum": 0.9})


def spawn(*args: str | Path, cwd: Path, limit_bytes: int | None = None) -> subprocess.Popen:
    def limit():
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.Popen([sys.executable, "-m", "sgdcli", *map(str, args)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=limit)


def every_checkpoint_loads(run_dir: Path) -> int:
    files = sorted((run_dir / "checkpoints").glob("*.safetensors"))
    for path in files:
        checkpoint.load(path)  # raises on any damage: atomic writes leave only whole files
    return len(files)


def locked_run(runs_dir: Path, pid: int, timeout: float = 30) -> Path | None:
    """The run directory whose lock process `pid` holds, once it holds it (None if it exited first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for lock in runs_dir.glob("*/run.lock"):
            try:
                if lock.read_text().strip() == f"sgdcli process {pid}":
                    return lock.parent
            except OSError:
                pass
        time.sleep(0.002)
    return None


def test_sigkill_at_random_moments_never_loses_a_checkpoint(tmp_path):
    config_path = tmp_path / "c.yaml"
    config_path.write_text(yaml.safe_dump(long_config(epochs=300)))
    # The reference, and the resume that finishes, are `sgdcli train` processes of their own: a command loads
    # OpenBLAS with the kernels its model gets (engine/spin.py), which this test process, whose NumPy was loaded
    # before, may not run. The killed ones are forked from a server that loaded it as they would (forkserver.py).
    reference_run = spawn("train", config_path, "--runs-dir", tmp_path / "reference", cwd=tmp_path)
    assert reference_run.communicate(timeout=300) and reference_run.returncode == 0
    (reference_dir,) = (tmp_path / "reference").iterdir()
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    rng = random.Random(1234)
    run_dir, kills, attempts = None, 0, 0
    with ForkServer(config_path) as server:
        while kills < 32 and attempts < 100:
            attempts += 1
            args = ("train", "--resume", run_dir) if run_dir else ("train", config_path, "--runs-dir", runs_dir)
            pid = server.run(*args, cwd=tmp_path)
            holder = locked_run(runs_dir, pid)
            # Kill within the first tenth of a second of its work: in an update, a metrics row, or a
            # checkpoint write (about half the time of these tiny epochs goes to checkpoints).
            time.sleep(rng.uniform(0.0, 0.12))
            os.kill(pid, signal.SIGKILL)
            assert server.wait(pid) == -signal.SIGKILL, "training finished before the kill: make it longer"
            if holder is None:
                continue
            if not list((holder / "checkpoints").glob("*.safetensors")):
                # Killed between creating the directory and writing its initial checkpoint: nothing was
                # ever saved, so nothing can be lost. Start again.
                assert run_dir is None
                continue
            run_dir = holder
            assert every_checkpoint_loads(run_dir) >= 1
            runs.newest_checkpoint(run_dir)  # what --resume will pick: it must exist
            kills += 1
    assert kills >= 30, f"only {kills} kills landed in {attempts} attempts"
    finished = spawn("train", "--resume", run_dir, cwd=tmp_path)
    out, err = finished.communicate(timeout=300)
    assert finished.returncode == 0, err
    assert_identical(reference_dir, run_dir)


def wait_for_rows(run_dir_parent: Path, rows: int, timeout: float = 60) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for metrics in run_dir_parent.glob("*/metrics.csv"):
            if len(metrics.read_text().splitlines()) > rows:
                return metrics.parent
        time.sleep(0.02)
    raise AssertionError("training made no progress")


@pytest.mark.parametrize("signals,code", [([signal.SIGINT], 130), ([signal.SIGTERM], 143),
                                          ([signal.SIGINT, signal.SIGINT], 130)], ids=["ctrl-c", "sigterm", "twice"])
def test_ctrl_c_and_sigterm_save_a_checkpoint_and_exit_with_the_documented_code(tmp_path, signals, code):
    config_path = tmp_path / "c.yaml"
    config_path.write_text(yaml.safe_dump(long_config(epochs=200)))
    process = spawn("train", config_path, "--runs-dir", tmp_path / "runs", cwd=tmp_path)
    run_dir = wait_for_rows(tmp_path / "runs", 2)
    for sig in signals:
        process.send_signal(sig)
        time.sleep(0.01)
    out, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    assert "Traceback" not in err and "--resume" in err
    summary = (run_dir / "summary.json").read_text()
    assert '"status": "interrupted"' in summary
    saved = checkpoint.load(run_dir / "checkpoints" / "last.safetensors")
    assert saved.meta["updates"] >= 180  # at least the two epochs seen, plus where it stopped
    resumed = spawn("train", "--resume", run_dir, "--set", "training.epochs=4", cwd=tmp_path)
    _, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 2 and "only training.epochs may grow" in err  # 4 < 200 is shrinking


def test_disk_full_keeps_the_previous_checkpoint_byte_identical(tmp_path):
    config = tiny_config(training__epochs=6, model__layers=[{"type": "dense", "units": 64, "activation": "relu"},
                                                            {"type": "dense", "units": 2}])
    config_path = tmp_path / "c.yaml"
    config_path.write_text(yaml.safe_dump(config))
    first = api.train(load_config(config_path, ["training.epochs=2"]), runs_dir=tmp_path / "runs")
    folder = first.run_dir / "checkpoints"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    metrics_before = (first.run_dir / "metrics.csv").read_bytes()
    limit = 4096
    assert len(before["last.safetensors"]) > limit > len((first.run_dir / "config.yaml").read_bytes())
    process = spawn("train", "--resume", first.run_dir, "--set", "training.epochs=6", cwd=tmp_path,
                    limit_bytes=limit)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 6, err
    assert "Traceback" not in err and "File too large" in err and "previous file is intact" in err
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert after == before  # nothing replaced, no temporary files left behind
    metrics = (first.run_dir / "metrics.csv").read_bytes()
    assert metrics.startswith(metrics_before) and metrics.endswith(b"\n")  # whole rows only
    assert not [p for p in first.run_dir.rglob(".tmp-*")]


def test_a_failed_end_of_run_write_marks_the_run_failed_and_resume_writes_the_files(tmp_path):
    """The end-of-run files (loss.png and the recorders') come before summary.json: a run whose files could not all
    be written is `failed`, never `completed` without them, and `--resume` (nothing left to train) writes them."""
    config_path = tmp_path / "c.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config(training__epochs=3, training__track=["weight_norm"])))
    limit = 12_000  # the checkpoints (~2 kB), metrics and summary fit; loss.png (~30 kB) does not
    process = spawn("train", config_path, "--run-dir", tmp_path / "run", cwd=tmp_path, limit_bytes=limit)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 6, err
    assert "Traceback" not in err and "loss.png: cannot write: File too large" in err
    run_dir = tmp_path / "run"
    summary = runs.read_run(run_dir).summary
    assert summary["status"] == "failed" and "the run had completed" in summary["message"]
    assert f"sgdcli train --resume {run_dir}" in summary["message"] and not (run_dir / "loss.png").exists()
    trajectory = (run_dir / "trajectory.safetensors").read_bytes()  # held in memory: written first, and kept
    resumed = spawn("train", "--resume", run_dir, cwd=tmp_path)
    out, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, err
    summary = runs.read_run(run_dir).summary
    assert summary["status"] == "completed" and summary["message"] is None and summary["epochs"] == 3
    assert (run_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 4  # no epoch trained twice
    assert (run_dir / "trajectory.safetensors").read_bytes() == trajectory  # the same 4 snapshots, not 1
    again = spawn("train", "--resume", run_dir, cwd=tmp_path)
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0 and "nothing to do" in out + err
