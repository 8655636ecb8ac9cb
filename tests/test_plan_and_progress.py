"""Issue 11: the memory estimate (item 7), validate's resolved defaults (13), sweeps that fail (14),
the estimated time of the whole run (15) and NumPy's warnings on divergence (11)."""

from __future__ import annotations

import io
import warnings

import pytest
import yaml
from conftest import REPO, tiny_config
from rich.console import Console
from typer.testing import CliRunner

from sgdcli import api, fileio
from sgdcli.cli import render
from sgdcli.cli.app import app
from sgdcli.config.loading import load_config
from sgdcli.errors import ConfigError
from sgdcli.training import memory, sweep

runner = CliRunner()


# ---------------------------------------------------------------- memory estimate
def test_memory_estimate_by_hand():
    # 4 features -> dense 8 -> dense 3, Adam, batch 2, float32 (4 bytes):
    # parameters (4*8 + 8) + (8*3 + 3) = 67 -> 268 bytes; gradients as many; Adam keeps m and v: 536;
    # activations: widths 4 (input), 8, 3 kept for backward plus dout/dx of the widest (2*8): 31 per
    # sample -> 2 * 31 * 4 = 248. Total 268 + 268 + 536 + 248 = 1320.
    config = load_config(tiny_config(model__layers=[{"type": "dense", "units": 8}, {"type": "dense", "units": 3}],
                                     optimizer={"type": "adam", "learning_rate": 0.01}))
    needed = memory.estimate(config.model, 4, 2, config.optimizer)
    assert (needed.parameters, needed.gradients, needed.optimizer_state, needed.activations) == (268, 268, 536, 248)
    assert needed.total == 1320
    # float64 doubles everything; plain SGD keeps no state; perturb takes no gradient
    sgd = load_config(tiny_config(optimizer={"type": "sgd", "learning_rate": 0.1}))
    assert memory.estimate(config.model, 4, 2, sgd.optimizer, "float64").total == 2 * (268 + 268 + 248)
    perturb = load_config(tiny_config(optimizer={"type": "perturb", "delta": 0.1}))
    assert memory.estimate(config.model, 4, 2, perturb.optimizer).gradients == 0
    # The per-epoch losses pass 100 samples at once with no caches: input and output of the widest
    # layer, 100 * 2 * 8 * 4 = 6400 bytes, more than the training batch's 248, so it counts instead.
    chunk = memory.estimate(config.model, 4, 2, config.optimizer, eval_rows=100)
    assert (chunk.activations, chunk.evaluation, chunk.total) == (6400, True, 268 + 268 + 536 + 6400)
    assert "activations of an evaluation pass over 100 samples" in chunk.describe()


def test_a_model_past_the_limit_is_refused_with_the_estimate(monkeypatch):
    config = load_config(tiny_config())
    needed = memory.estimate(config.model, 2, 16, config.optimizer)
    monkeypatch.setattr(memory, "memory_available", lambda: (needed.total - 1, "a test limit"))
    with pytest.raises(ConfigError) as info:
        memory.check_fits(needed, "training this model", "c.yaml")
    message = str(info.value)
    assert message.startswith("c.yaml: model.layers: training this model needs about")
    assert memory.size_text(needed.total) in message and "a test limit" in message
    monkeypatch.setattr(memory, "memory_available", lambda: (needed.total, "a test limit"))
    memory.check_fits(needed, "training this model", "c.yaml")  # exactly at the limit fits


def test_available_memory_follows_ulimit(monkeypatch):
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda which: (2**30, resource.RLIM_INFINITY)
                        if which == resource.RLIMIT_AS else (resource.RLIM_INFINITY,) * 2)
    assert fileio.memory_available() == (2**30, "the address-space limit (ulimit -v)")


def test_size_text():
    assert [memory.size_text(n) for n in (0, 1023, 1536, 3 * 2**30, int(7.3e12))] == [
        "0 bytes", "1023 bytes", "1.5 KiB", "3.0 GiB", "6.6 TiB"]


# ---------------------------------------------------------------- validate
def test_validate_prints_resolved_defaults_not_null(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(model__layers__0__activation="relu")))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert [layer["init"] for layer in resolved["model"]["layers"]] == ["he_uniform", "glorot_uniform"]
    assert "90 training / 30 validation samples" in result.stderr and "training needs about" in result.stderr


def test_validate_resolves_csv_features():
    result = runner.invoke(app, ["validate", str(REPO / "configs" / "iris.yaml")])
    assert result.exit_code == 0, result.stderr
    assert yaml.safe_load(result.stdout)["data"]["features"] == ["sepal_length", "sepal_width", "petal_length",
                                                                 "petal_width"]


# ---------------------------------------------------------------- sweeps
def test_sweep_row_counts_the_updates_of_a_member_that_diverged_mid_epoch(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(model__layers__0__activation="relu")))
    result = api.sweep(path, [], ["optimizer.learning_rate=0.1,1e30"], runs_dir=tmp_path / "runs", plot=None)
    rows = {row["optimizer.learning_rate"]: row for row in result.rows}
    diverged = rows[1e30]
    assert diverged["status"] == "diverged" and diverged["epochs"] == 0
    assert diverged["updates"] >= 1 and diverged["samples"] == 16 * diverged["updates"]  # it made them
    assert rows[0.1]["updates"] == 4 * 6


def test_sweep_exit_status_whatever_order_members_finish():
    def member(code):
        return sweep.Member("m", [], exit_code=code)

    assert sweep.exit_status([member(0), member(0)]) == 0
    assert sweep.exit_status([member(0), member(5)]) == 5
    assert sweep.exit_status([member(5), member(3), member(2)]) == 2  # a failure outranks a divergence
    assert sweep.exit_status([member(-9)]) == 137  # killed by SIGKILL, as a shell reports it


# ---------------------------------------------------------------- estimated time
def test_progress_shows_the_estimated_time_of_the_whole_run_after_the_first_epoch(monkeypatch):
    clock = iter([100.0, 110.0, 120.0])  # start, after epoch 1, after epoch 2: 10 s an epoch
    monkeypatch.setattr(render.time, "monotonic", lambda: next(clock))
    output = io.StringIO()
    reporter = render.TrainingReporter(Console(file=output, width=200))
    reporter.start({"name": "x", "train_samples": 8, "val_samples": 0, "parameters": 3, "batch_size": 4,
                    "updates_per_epoch": 2, "epochs": 2521, "position": {"epoch": 0, "batch": 0, "updates": 0}})
    row = {"train_loss": 0.5, "learning_rate": 0.1, "seconds": 1.0}
    reporter.epoch({**row, "epoch": 1})
    reporter.epoch({**row, "epoch": 2})
    lines = output.getvalue().splitlines()
    # 2521 epochs x 10 s = 25,210 s in all; 2520 x 10 s left after the first, 2519 x 10 s after the second
    assert lines[1].endswith("| run ~7h 00m, 7h 00m left"), lines
    assert lines[2].endswith("| run ~7h 00m, 6h 59m left"), lines


def test_after_a_resume_the_whole_run_counts_the_earlier_segments_too(monkeypatch):
    clock = iter([100.0, 110.0])  # resumed after epoch 15 of 30, which took 150 s; 10 s an epoch now
    monkeypatch.setattr(render.time, "monotonic", lambda: next(clock))
    output = io.StringIO()
    reporter = render.TrainingReporter(Console(file=output, width=200))
    reporter.start({"name": "x", "train_samples": 8, "val_samples": 0, "parameters": 3, "batch_size": 4,
                    "updates_per_epoch": 2, "epochs": 30, "wall_before": 150.0,
                    "position": {"epoch": 15, "batch": 0, "updates": 30}})
    reporter.epoch({"train_loss": 0.5, "learning_rate": 0.1, "seconds": 1.0, "epoch": 16})
    # 150 s before + 10 s of epoch 16 + 14 epochs x 10 s left = 300 s in all
    assert output.getvalue().splitlines()[-1].endswith("| run ~5m 00s, 2m 20s left"), output.getvalue()


def test_durations():
    assert [render._duration(s) for s in (3.2, 200, 25_320, 200_000)] == ["3s", "3m 20s", "7h 02m", "2d 07h"]


# ---------------------------------------------------------------- numpy warnings
def test_divergence_shows_only_sgdclis_message(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = runner.invoke(app, ["train", str(REPO / "configs" / "iris.yaml"), "--set",
                                     "optimizer.learning_rate=10", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 5, result.stderr
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []
    assert "training diverged" in result.stderr


def test_objective_divergence_shows_no_numpy_warning(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = runner.invoke(app, ["train", str(REPO / "configs" / "see-it" / "valley-gd.yaml"), "--set",
                                     "optimizer.learning_rate=100", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 5, result.stderr
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []


CNN = [{"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": "same", "activation": "relu"},
       {"type": "batch_norm"}, {"type": "max_pool2d"}, {"type": "flatten"}, {"type": "dense", "units": 3}]


def test_memory_estimate_counts_conv_and_batch_norm_as_the_built_model_holds_them():
    import numpy as np

    from sgdcli.training import build

    config = load_config(tiny_config(model__layers=CNN, optimizer={"type": "sgd", "learning_rate": 0.1}))
    needed = memory.estimate(config.model, (1, 8, 8), 2, config.optimizer)
    model = build.build_model(config.model, (1, 8, 8), 3, np.random.default_rng(0))
    # conv 1*3*3*4 + 4 = 40, batch norm 2*4 + running mean/var 2*4, dense 64*3 + 3 = 195: what the model holds
    assert needed.parameters == sum(array.nbytes for array in model.state_dict().values()) == (40 + 16 + 195) * 4
    assert needed.gradients == (40 + 8 + 195) * 4  # running statistics take no gradient
    # per sample: outputs 64 (input), 256 (conv), 256 (batch norm), 64, 64, 3 -> 707; dout and dx of the
    # largest, 2 * 256; the conv's im2col columns, 8*8 positions x (1*3*3 + a row of ones for the bias) -> 640.
    # Batch 2, 4 bytes each.
    assert needed.activations == 2 * (707 + 512 + 640) * 4


def test_a_cnn_too_large_for_memory_is_refused_before_any_weight_exists(tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "images.npz", x=rng.random((20, 8, 8)), y=np.arange(20) % 2)
    huge = [{"type": "conv2d", "filters": 65_536, "kernel_size": 3, "padding": "same"},
            {"type": "conv2d", "filters": 65_536, "kernel_size": 3, "padding": "same"},  # 3.9e10 weights
            {"type": "flatten"}, {"type": "dense", "units": 2}]
    config = tiny_config(data={"source": "npz", "path": "images.npz", "validation": 0}, model__layers=huge)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    for args in (["validate", "c.yaml"], ["train", "c.yaml", "--runs-dir", "runs"], ["gradcheck", "c.yaml"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output, result.stderr)
        assert "c.yaml: model.layers:" in result.stderr and "needs about" in result.stderr
        assert "parameters 144.0 GiB" in result.stderr or "parameters 288.1 GiB" in result.stderr  # 65,536 x 65,536 x 3 x 3 weights: float32, or float64 for gradcheck
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("batch,where", [(0, "at the end of epoch 3 (update 6)"), (1, "at epoch 4, batch 2 (update 7)"),
                                         (2, "at epoch 4's measurement (its 2 updates done) (update 8)")])
def test_a_resume_says_where_it_continues(batch, where):
    """A stop after an epoch's last update but before it was measured resumes at that measurement: it said
    "epoch 1, batch 3" of a 2-batch epoch."""
    output = io.StringIO()
    reporter = render.TrainingReporter(Console(file=output, width=200))
    reporter.start({"name": "x", "train_samples": 8, "val_samples": 0, "parameters": 3, "batch_size": 4,
                    "updates_per_epoch": 2, "epochs": 5, "resumed_from": "last.safetensors",
                    "position": {"epoch": 3, "batch": batch, "updates": 6 + batch}})
    assert output.getvalue().splitlines()[0] == f"resuming x {where}"
