"""The learning-rate range test: its ramp, its stopping rule, and suggestions below a known divergence point."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from sgdcli import api
from sgdcli.analysis import lr_find
from sgdcli.cli.app import app
from sgdcli.training import build


def _linear_config(tmp_path, optimizer=None, mode="full"):
    """Least squares on two features: gradient descent diverges exactly above lr = 2 / λmax(H)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 2)) * [1.0, 3.0]
    y = 3 * x[:, 0] - 2 * x[:, 1] + 1 + 0.1 * rng.normal(size=200)
    path = tmp_path / "line.csv"
    path.write_text("a,b,y\n" + "".join(f"{p},{q},{t}\n" for (p, q), t in zip(x, y)))
    return api.load_config({
        "name": "line", "seed": 0,
        "data": {"source": "csv", "path": str(path), "target": "y", "scale": "none", "validation": 0},
        "model": {"layers": [{"type": "dense", "units": 1}], "dtype": "float64"},
        "loss": {"type": "mse"},
        "optimizer": optimizer or {"type": "sgd", "learning_rate": 0.1},
        "training": {"epochs": 1, "batch": {"mode": mode}},
    })


def _critical_step(config) -> float:
    """MSE = (1/N)|Aθ - y|², A = [X, 1]: Hessian (2/N) AᵀA; plain GD diverges for lr > 2 / λmax."""
    x = build.prepare_data(config, build.Rngs.from_seed(config.seed)).x_train.astype(np.float64)
    a = np.hstack([x, np.ones((len(x), 1))])
    return 2 / np.linalg.eigvalsh(2 / len(a) * a.T @ a).max()


def test_ramp_is_exponential_from_start_to_end():
    ramp = lr_find.schedule(1e-4, 1.0, 5)
    np.testing.assert_allclose(ramp, [1e-4, 1e-3, 1e-2, 1e-1, 1.0])


def test_suggestions_lie_between_start_and_end_and_below_the_divergence_point(tmp_path):
    config = _linear_config(tmp_path)
    critical = _critical_step(config)  # about 0.11 for this data
    result = lr_find.range_test(config, start=1e-5, end=10.0, updates=100)
    assert result.stopped in ("exploded", "diverged")
    assert result.learning_rates[-1] > critical  # the test ran past the divergence point ...
    assert result.learning_rates[-1] < 10.0  # ... and stopped there, before the end of the ramp
    for suggestion in (result.steepest, result.minimum_tenth):
        assert suggestion is not None and 1e-5 <= suggestion < critical
    assert result.key == "optimizer.learning_rate"
    # the smoothed loss is the debiased exponential average of the raw losses (β = 0.98)
    weights = 0.98 ** np.arange(len(result.losses))[::-1] * 0.02
    expected = (weights * result.losses).sum() / (1 - 0.98 ** len(result.losses))
    assert result.smoothed[-1] == pytest.approx(expected, rel=1e-9)


def test_a_step_size_that_trains_is_suggested_and_it_does_train(tmp_path):
    config = _linear_config(tmp_path)
    result = lr_find.range_test(config, start=1e-5, end=10.0, updates=100)
    tuned = api.load_config(config.to_dict() | {"optimizer": {"type": "sgd", "learning_rate": result.steepest},
                                                 "training": {"epochs": 200, "batch": {"mode": "full"}}})
    trained = api.train(tuned, runs_dir=tmp_path / "runs")
    assert trained.status == "completed"
    assert trained.summary["final"]["train_loss_full"] < 0.05  # noise variance 0.01: the fit is found


def test_every_optimizer_works_and_perturb_suggests_its_delta(tmp_path):
    config = _linear_config(tmp_path, {"type": "perturb", "delta": 0.1}, mode="minibatch")
    result = lr_find.range_test(config, start=1e-3, end=100.0, updates=40)
    assert result.key == "optimizer.delta"
    assert 1e-3 <= result.minimum_tenth <= 100.0
    adam = lr_find.range_test(_linear_config(tmp_path, {"type": "adam", "learning_rate": 0.1}), 1e-4, 10.0, 30)
    assert len(adam.learning_rates) >= 2


def test_cli_writes_csv_png_and_prints_the_key(tmp_path):
    config = _linear_config(tmp_path)
    path = tmp_path / "line.yaml"
    import yaml
    path.write_text(yaml.safe_dump(config.to_dict()))
    result = CliRunner().invoke(app, ["lr-find", str(path), "--start", "1e-5", "--out", str(tmp_path / "lr")])
    assert result.exit_code == 0, result.output
    assert "--set optimizer.learning_rate=" in result.output
    (folder,) = (tmp_path / "lr").iterdir()
    rows = (folder / "lr_find.csv").read_text().splitlines()
    assert rows[0] == "update,learning_rate,loss,smoothed_loss" and float(rows[1].split(",")[1]) == 1e-5
    assert (folder / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    bad = CliRunner().invoke(app, ["lr-find", str(path), "--start", "1", "--end", "0.1"])
    assert bad.exit_code == 2 and "expected 0 < start < end" in bad.output
