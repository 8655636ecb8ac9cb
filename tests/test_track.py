"""Layer statistics (training.track): hand-checked against plain gradient descent, sampling, errors."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from sgdcli import api
from sgdcli.cli.app import app
from sgdcli.runs import checkpoint
from sgdcli.runs import directory as runs
from sgdcli.training import build, track


def _config(**training):
    return api.load_config({
        "name": "tracked", "seed": 1,
        "data": {"source": "synthetic", "dataset": "moons", "samples": 60, "validation": 0},
        "model": {"layers": [{"type": "dense", "units": 5, "activation": "tanh"}, {"type": "dense", "units": 2}],
                  "dtype": "float64"},
        "loss": {"type": "cross_entropy"},
        "optimizer": {"type": "sgd", "learning_rate": 0.3},
        "training": {"epochs": 4, "batch": {"mode": "full"},
                     "track": ["grad_norm", "weight_norm", "update_ratio"], **training},
    })


def test_full_batch_gradient_descent_statistics_equal_the_hand_computed_ones(tmp_path):
    """Plain GD, one update an epoch: Δw = −lr·g, so ‖Δw‖/‖w_before‖ = lr·‖g‖/‖w_before‖ exactly."""
    config = _config()
    result = api.train(config, runs_dir=tmp_path)
    rows = runs.read_metrics(result.run_dir / runs.METRICS)
    initial = checkpoint.load(result.run_dir / "checkpoints" / "initial.safetensors").params
    # an independent gradient at the initial weights, on the whole training set
    rngs = build.Rngs.from_seed(config.seed)
    prepared = build.prepare_data(config, rngs)
    model = build.build_model(config.model, 2, 2, rngs.init)
    model.load_parameters(initial)
    outputs, caches = model.forward(prepared.x_train, training=True)
    _, dout = build.build_loss(config.loss).value_and_grad(outputs, prepared.y_train)
    grads = model.backward(dout, caches)
    for name in ("0.weight", "0.bias", "1.weight", "1.bias"):
        assert rows[0][f"grad_norm/{name}"] == pytest.approx(np.linalg.norm(grads[name]), rel=1e-9)
        before = [np.linalg.norm(initial[name])] + [r[f"weight_norm/{name}"] for r in rows[:-1]]
        for row, norm in zip(rows, before):
            if norm == 0:  # a bias starting at 0 has no ratio in its first epoch
                assert row[f"update_ratio/{name}"] is None
            else:
                assert row[f"update_ratio/{name}"] == pytest.approx(0.3 * row[f"grad_norm/{name}"] / norm, rel=1e-9)
    final = checkpoint.load(result.run_dir / "checkpoints" / "last.safetensors").params
    assert rows[-1]["weight_norm/1.weight"] == pytest.approx(np.linalg.norm(final["1.weight"]), rel=1e-12)
    assert (result.run_dir / "layers.png").read_bytes()[:4] == b"\x89PNG"


def test_tracking_changes_nothing_it_watches(tmp_path):
    tracked = api.train(_config(batch={"mode": "minibatch", "size": 8}), runs_dir=tmp_path / "a")
    plain = api.train(_config(batch={"mode": "minibatch", "size": 8}, track=[]), runs_dir=tmp_path / "b")
    a = checkpoint.load(tracked.run_dir / "checkpoints" / "last.safetensors").params
    b = checkpoint.load(plain.run_dir / "checkpoints" / "last.safetensors").params
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not (plain.run_dir / "layers.png").exists()
    assert "grad_norm/0.weight" not in (plain.run_dir / runs.METRICS).read_text()


def test_a_bounded_number_of_updates_is_measured_evenly_including_the_last():
    params = {"0.weight": np.ones((2, 2))}
    tracker = track.LayerTracker(["grad_norm"], params, updates_per_epoch=20)  # stride ceil(20 / 4) = 5
    measured = [b for b in range(20) if tracker.before_step(b, params, {"0.weight": np.full((2, 2), b + 0.0)})]
    assert measured == [4, 9, 14, 19]
    # mean of ‖g‖ = 2·b over the measured batches
    assert tracker.epoch_row(params)["grad_norm/0.weight"] == pytest.approx(2 * np.mean(measured))
    few = track.LayerTracker(["grad_norm"], params, updates_per_epoch=3)
    assert [b for b in range(3) if few.before_step(b, params, params)] == [0, 1, 2]


def test_statistics_needing_gradients_are_refused_for_perturb(tmp_path):
    config = _config().to_dict()
    config["optimizer"] = {"type": "perturb", "delta": 0.1}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["train", str(path), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2
    assert "training.track: grad_norm, update_ratio need a gradient optimizer" in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    bad = CliRunner().invoke(app, ["validate", str(path), "--set", "training.track=[grad_nrom]"])
    assert bad.exit_code == 2 and "training.track" in bad.output
