"""Sweep heatmaps: the grid's cells, diverging runs, Polyak's optimum for the valley, sweep.png from a sweep."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sgdcli import api
from sgdcli.analysis import heatmap


def test_textbook_optimum_of_heavy_ball():
    # κ = 50: step 4 / (√50 + 1)² = 0.0614042..., momentum ((√50 − 1) / (√50 + 1))² = 0.565807...
    step, momentum = heatmap.optimal_heavy_ball(50.0, 1.0)
    assert step == pytest.approx(4 / (math.sqrt(50) + 1) ** 2) and step == pytest.approx(0.0614042, rel=1e-5)
    assert momentum == pytest.approx(0.565807, rel=1e-6)
    assert heatmap.optimal_heavy_ball(3.0, 3.0) == (pytest.approx(1 / 3), 0.0)  # κ = 1: Newton's step, no momentum


def test_optimum_converges_at_the_predicted_rate(tmp_path):
    """Heavy ball at the optimum contracts the error by (√κ − 1)/(√κ + 1) per step (Polyak 1964)."""
    step, momentum = heatmap.optimal_heavy_ball(50.0, 1.0)
    config = api.load_config({"name": "hb", "objective": {"type": "valley", "start": [-4.5, 1.0]},
                              "optimizer": {"type": "sgd", "learning_rate": step, "momentum": momentum},
                              "training": {"steps": 200}})
    result = api.train(config, runs_dir=tmp_path)
    rate = (math.sqrt(50) - 1) / (math.sqrt(50) + 1)
    distance = np.linalg.norm(result.summary["final_params"])
    assert distance < 200 * 5 * rate**200 and distance > 1e-3 * 5 * rate**200  # within the polynomial factor


def test_cells_land_at_row_y_column_x_and_growing_runs_are_diverging():
    cells = [
        {"a": "1", "b": "x", "status": "completed", "final_train_loss": 0.5, "first_loss": 2.0},
        {"a": "2", "b": "x", "status": "completed", "final_train_loss": 9.0, "first_loss": 2.0},  # grew
        {"a": "1", "b": "y", "status": "diverged", "final_train_loss": 3.0, "first_loss": 2.0},
    ]
    data = heatmap.grid(["a", "b"], [["1", "2"], ["x", "y"]], cells)
    assert data.metric == "final_train_loss"
    assert data.losses[0, 0] == 0.5 and np.isnan(data.losses[0, 1]) and np.isnan(data.losses[1, 0])
    assert data.statuses == [["completed", "diverging"], ["diverged", "missing"]]


def test_two_key_sweep_of_the_valley_writes_sweep_png(tmp_path, write_config):
    path = write_config({"name": "vp", "objective": {"type": "valley", "start": [-4.5, 1.0]},
                         "optimizer": {"type": "sgd", "learning_rate": 0.01}, "training": {"steps": 200}})
    result = api.sweep(path, [], ["optimizer.learning_rate=0.01,1.0", "optimizer.momentum=0,0.5"],
                       runs_dir=tmp_path / "runs", jobs=2, plot=tmp_path / "compare.png")
    assert result.sweep_plot == tmp_path / "sweep.png" and result.sweep_plot.read_bytes()[:4] == b"\x89PNG"
    statuses = {(r["optimizer.learning_rate"], r["optimizer.momentum"]): r["status"] for r in result.rows}
    assert statuses[(1.0, 0.0)] == "diverged" and statuses[(0.01, 0.5)] == "completed"
    one_key = api.sweep(path, [], ["optimizer.learning_rate=0.01,0.02"], runs_dir=tmp_path / "one",
                        plot=tmp_path / "one" / "compare.png")
    assert one_key.sweep_plot is None and not (tmp_path / "one" / "sweep.png").exists()
