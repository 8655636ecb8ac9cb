"""`sgdcli compare` readable at 80-120 columns: runs labelled by what differs, nothing truncated."""

from __future__ import annotations

import io

import pytest
from conftest import REPO, tiny_config
from rich.console import Console

from sgdcli import api, plots
from sgdcli.analysis.run_labels import run_labels, short_keys
from sgdcli.cli import render
from sgdcli.training import sweep as sweep_module


@pytest.fixture(scope="module")
def batch_mode_sweep(tmp_path_factory):
    """The README's sweep: digits-mlp.yaml --sweep training.batch.mode=sgd,minibatch,full (one epoch)."""
    runs = tmp_path_factory.mktemp("sweep")
    parsed = sweep_module.parse(["training.batch.mode=sgd,minibatch,full"])
    dirs = []
    for member in sweep_module.members("digits-mlp", parsed):
        config = api.load_config(REPO / "configs" / "digits-mlp.yaml", [*member.overrides, "training.epochs=1"])
        dirs.append(api.train(config, runs_dir=runs, name=member.name).run_dir)
    return dirs


def rendered(comparison, width: int, monkeypatch) -> str:
    console = Console(width=width, file=io.StringIO(), color_system=None, highlight=False)
    monkeypatch.setattr(render, "out", console)
    render.comparison(comparison.rows, comparison.differing, "table", None)
    return console.file.getvalue()


@pytest.mark.parametrize("width", [80, 100, 120])
def test_the_readme_sweep_renders_with_distinct_untruncated_labels(tmp_path, batch_mode_sweep, monkeypatch, width):
    comparison = api.compare(batch_mode_sweep, plot=None)
    text = rendered(comparison, width, monkeypatch)
    assert "…" not in text and "..." not in text
    assert max(len(line) for line in text.splitlines()) <= width
    for mode in ("sgd", "minibatch", "full"):
        label = f"mode={mode}"
        assert sum(label in line.split() or f"{label}" in line for line in text.splitlines()) >= 1, text
    for run_dir in batch_mode_sweep:  # the full run names are there too, each on one line
        assert f": {run_dir.name}" in text
    for value in ("1438", "45", "1"):  # updates per mode (1,438 samples; batch 32 -> 45; full -> 1), uncut
        assert value in text.split()
    assert "loss" in text and "accuracy" in text


def test_the_plot_legend_labels_runs_the_same_way(tmp_path, batch_mode_sweep, monkeypatch):
    drawn = []
    monkeypatch.setattr(plots, "loss_curves", lambda curves, x, path: drawn.extend(curves) or path)
    api.compare(batch_mode_sweep, plot=tmp_path / "c.png")
    assert [c.label for c in drawn] == ["mode=sgd", "mode=minibatch", "mode=full"]


def test_a_diverged_run_does_not_squash_the_others(tmp_path, monkeypatch):
    limits = {}

    def capture(draw, size=(8, 5)):
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        figure, axes = plt.subplots()
        draw(axes)
        limits["y"] = axes.get_ylim()
        limits["labels"] = [line.get_label() for line in axes.get_lines()]
        plt.close(figure)
        return b""

    monkeypatch.setattr(plots, "png", capture)
    steady = plots.Curve("lr=0.01", [1, 2, 3], [0.9, 0.6, 0.5], [1.0, 0.7, 0.6])
    blown = plots.Curve("lr=5", [1, 2, 3], [0.8, 4e12, float("inf")], [0.9, 1e15, None], diverged=True)
    plots.loss_curves([steady, blown], "epoch", tmp_path / "c.png")
    low, high = limits["y"]
    assert 0.3 < low < 0.5 and 1.0 < high < 1.5  # the steady run's range, not 1e15
    assert "lr=5 (train, diverged)" in limits["labels"]


def test_labels_name_what_differs_and_fall_back_to_the_distinct_part_of_names():
    values = [{"optimizer.learning_rate": 0.05, "optimizer.momentum": 0.9},
              {"optimizer.learning_rate": 0.1, "optimizer.momentum": 0.0}]
    keys = ["optimizer.learning_rate", "optimizer.momentum"]
    assert run_labels(["a", "b"], values, keys) == ["lr=0.05 m=0.9", "lr=0.1 m=0.0"]
    names = ["wine-20261127-101500", "wine-20261127-101501"]
    assert run_labels(names, [{}, {}], []) == ["101500", "101501"]
    assert run_labels(["wine-a-2026", "wine-b-2026"], [{"k": 1}, {"k": 1}], ["k"]) == ["a", "b"]
    assert run_labels(["same", "same"], [{}, {}], []) == ["same", "same"]


def test_short_keys_are_the_last_segment_when_unique():
    keys = ["optimizer.learning_rate", "optimizer.momentum", "training.batch.size", "model.size"]
    assert short_keys(keys) == {"optimizer.learning_rate": "learning_rate", "optimizer.momentum": "momentum",
                                "training.batch.size": "batch.size", "model.size": "model.size"}


def test_many_differing_keys_switch_to_runs_as_columns(tmp_path, write_config, monkeypatch):
    runs = tmp_path / "runs"
    dirs = [api.train(api.load_config(tiny_config(seed=seed, training__epochs=epochs,
                                                  optimizer={"type": "sgd", "learning_rate": lr, "momentum": m})),
                      runs_dir=runs).run_dir
            for seed, epochs, lr, m in ((0, 2, 0.1, 0.9), (1, 3, 0.05, 0.5))]
    comparison = api.compare(dirs, plot=None)
    assert len(comparison.differing) == 4
    text = rendered(comparison, 80, monkeypatch)
    header = next(line for line in text.splitlines() if "lr=0.1" in line)
    assert "lr=0.05" in header  # both runs are columns of one header line
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    assert any(line.split("│")[1].strip() == "learning_rate" for line in text.splitlines() if line.count("│") > 2)
