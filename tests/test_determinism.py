"""Same config + same seed = the same metrics.csv bytes (but wall-clock seconds) and the same weights."""

from __future__ import annotations

import csv

import numpy as np
from conftest import tiny_config

from sgdcli import api
from sgdcli.config.loading import load_config
from sgdcli.runs import checkpoint


def metrics_without_wall_clock(run_dir) -> list[list[str]]:
    rows = list(csv.reader((run_dir / "metrics.csv").open()))
    seconds = rows[0].index("seconds")
    return [row[:seconds] + row[seconds + 1:] for row in rows]


def test_two_runs_with_one_seed_are_identical(tmp_path):
    config = load_config(tiny_config(model__layers=[
        {"type": "dense", "units": 8, "activation": "relu"}, {"type": "dropout", "rate": 0.2},
        {"type": "dense", "units": 2}]))
    first = api.train(config, runs_dir=tmp_path)
    second = api.train(config, runs_dir=tmp_path)
    assert first.run_dir != second.run_dir
    assert metrics_without_wall_clock(first.run_dir) == metrics_without_wall_clock(second.run_dir)
    a = checkpoint.load(first.run_dir / "checkpoints" / "last.safetensors")
    b = checkpoint.load(second.run_dir / "checkpoints" / "last.safetensors")
    assert a.params.keys() == b.params.keys()
    for key in a.params:
        assert a.params[key].tobytes() == b.params[key].tobytes()
    different = api.train(load_config(tiny_config(seed=1)), runs_dir=tmp_path)
    assert metrics_without_wall_clock(different.run_dir) != metrics_without_wall_clock(first.run_dir)


def test_initial_weights_do_not_depend_on_batch_mode_or_step_size():
    from sgdcli.training import build

    weights = []
    for changes in ({}, {"training__batch__mode": "full"}, {"optimizer__learning_rate": 0.5}):
        config = load_config(tiny_config(**changes))
        model = build.build_model(config.model, 2, 2, build.Rngs.from_seed(config.seed).init)
        weights.append(model.parameters()["0.weight"].copy())
    assert all(np.array_equal(weights[0], w) for w in weights[1:])
