"""The least_squares objective: exact gradient, batch modes as paths, the paths overlaid by compare."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from sgdcli import api
from sgdcli.analysis import gradcheck, paths
from sgdcli.cli.app import app
from sgdcli.runs import directory as runs
from sgdcli.training import build

X = np.array([1.0, 2.0, 4.0, 5.0, 7.0])
Y = np.array([2.0, 2.5, 5.5, 5.0, 8.5])


def _config(tmp_path, mode="full", steps=5, scale="none", lr=0.01, **extra):
    data = tmp_path / "line.csv"
    data.write_text("x,y\n" + "".join(f"{a},{b}\n" for a, b in zip(X, Y)))
    training = {"steps": steps, **({"batch": {"mode": mode, "size": 2}} if mode else {})}
    return api.load_config({
        "name": f"ls-{mode}", "seed": 4,
        "objective": {"type": "least_squares", "data": str(data), "x": "x", "y": "y", "scale": scale,
                      "start": [0.5, -1.0], **extra},
        "optimizer": {"type": "sgd", "learning_rate": lr}, "training": training})


def _path(run_dir):
    rows = runs.read_metrics(run_dir / runs.METRICS)
    return np.array([[r["w0"], r["w1"]] for r in rows]), rows


def test_gradient_passes_gradcheck_on_the_whole_data_and_on_a_batch(tmp_path):
    config = _config(tmp_path)
    assert all(check.passed for check in api.gradcheck(config))
    objective = build.build_objective(config.objective)
    w, index = np.array([0.3, 0.7]), np.array([4, 1])
    checks = gradcheck.check_gradients(lambda: objective.value(w, index), {"w": w},
                                       {"w": objective.gradient(w, index)}, eps=1e-6, rtol=1e-7,
                                       rng=np.random.default_rng(0))
    assert all(check.passed for check in checks)


def test_full_batch_path_equals_gradient_descent_by_hand(tmp_path):
    result = api.train(_config(tmp_path, mode="full"), runs_dir=tmp_path / "runs")
    path, rows = _path(result.run_dir)
    w, b, expected = 0.5, -1.0, []
    for _ in range(5):  # f = mean((w x + b - y)^2): df/dw = 2 mean(r x), df/db = 2 mean(r)
        r = w * X + b - Y
        w, b = w - 0.01 * 2 * np.mean(r * X), b - 0.01 * 2 * np.mean(r)
        expected.append((w, b))
    np.testing.assert_allclose(path, expected, rtol=0, atol=1e-14)
    assert [r["samples"] for r in rows] == [5, 10, 15, 20, 25]
    assert rows[-1]["train_loss"] == pytest.approx(np.mean((w * X + b - Y) ** 2), rel=1e-14)


def test_sgd_mode_takes_one_sample_per_step_in_the_seeded_order(tmp_path):
    result = api.train(_config(tmp_path, mode="sgd", steps=7), runs_dir=tmp_path / "runs")
    path, rows = _path(result.run_dir)
    rng = build.Rngs.from_seed(4).shuffle
    order = np.concatenate([rng.permutation(5), rng.permutation(5)])
    w, b = 0.5, -1.0
    for step in range(7):  # one sample i: df/dw = 2 r_i x_i, df/db = 2 r_i
        i = order[step]
        r = w * X[i] + b - Y[i]
        w, b = w - 0.01 * 2 * r * X[i], b - 0.01 * 2 * r
        assert path[step] == pytest.approx([w, b], abs=1e-14)
    assert [r["samples"] for r in rows] == list(range(1, 8))


def test_the_minimum_is_the_least_squares_fit_and_standardising_gives_the_correlation(tmp_path):
    raw = build.build_objective(_config(tmp_path).objective)
    np.testing.assert_allclose(raw.minima[0], np.polyfit(X, Y, 1), rtol=1e-12)
    standard = build.build_objective(_config(tmp_path, scale="standard").objective)
    assert standard.minima[0][0] == pytest.approx(np.corrcoef(X, Y)[0, 1], rel=1e-12)
    assert standard.minima[0][1] == pytest.approx(0.0, abs=1e-12)


def test_compare_overlays_the_batch_modes_on_one_contour(tmp_path):
    run_dirs = [api.train(_config(tmp_path, mode=m, steps=12), runs_dir=tmp_path / "runs").run_dir
                for m in ("sgd", "minibatch", "full")]
    records = [runs.read_run(d) for d in run_dirs]
    for record in records:  # the drawn path starts at the config's start and follows metrics.csv
        drawn = paths.path_of(record)
        assert drawn[0].tolist() == [0.5, -1.0] and len(drawn) == 13
    result = api.compare(run_dirs, plot=tmp_path / "cmp.png")
    assert result.paths_plot == tmp_path / "cmp-paths.png"
    assert result.paths_plot.read_bytes()[:4] == b"\x89PNG"
    other = api.train(_config(tmp_path, mode="full", scale="standard"), runs_dir=tmp_path / "other").run_dir
    assert api.compare([run_dirs[0], other], plot=tmp_path / "mixed.png").paths_plot is None  # different losses
    assert not (tmp_path / "mixed-paths.png").exists()


def test_batches_are_refused_for_a_function_without_samples(tmp_path):
    path = tmp_path / "valley.yaml"
    path.write_text(yaml.safe_dump({"name": "v", "objective": {"type": "valley", "start": [1, 1]},
                                    "optimizer": {"type": "sgd", "learning_rate": 0.1},
                                    "training": {"steps": 3, "batch": {"mode": "sgd"}}}))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "training.batch" in result.output and "least_squares" in result.output
    missing = tmp_path / "ls.yaml"
    missing.write_text(yaml.safe_dump({"name": "l", "objective": {"type": "least_squares", "data": "nope.csv",
                                                                   "x": "a", "y": "b"},
                                       "optimizer": {"type": "sgd", "learning_rate": 0.1}, "training": {"steps": 3}}))
    result = CliRunner().invoke(app, ["train", str(missing), "--runs-dir", str(tmp_path / "r")])
    assert result.exit_code == 3 and "nope.csv" in result.output
