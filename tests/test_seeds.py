"""Seeds as a result: --seeds K trains K runs, compare --band draws mean and min–max, tables mean ± sd."""

from __future__ import annotations

import math

import numpy as np
from typer.testing import CliRunner

from conftest import tiny_config
from sgdcli import api
from sgdcli.analysis import bands
from sgdcli.cli.app import app
from sgdcli.runs import directory as runs


def test_band_is_mean_min_max_over_the_runs_present_at_each_x():
    a = [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}, {"epoch": 3, "loss": 0.25}]
    b = [{"epoch": 1, "loss": 3.0}, {"epoch": 2, "loss": math.nan}]  # diverged in epoch 2
    c = [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.5}]
    xs, mean, low, high, count = bands.band([a, b, c], "epoch", "loss")
    assert xs.tolist() == [1, 2, 3]
    assert mean.tolist() == [2.0, 1.0, 0.25] and low.tolist() == [1.0, 0.5, 0.25] and high.tolist() == [3.0, 1.5, 0.25]
    assert count.tolist() == [3, 2, 1]
    assert bands.mean_spread([1.0, 2.0, 3.0, None, math.inf]) == (2.0, 1.0, 3)  # sample sd (ddof = 1)


def test_compare_band_groups_runs_that_differ_only_in_seed(tmp_path):
    dirs = [api.train(api.load_config(tiny_config(seed=s, training__boundary=False)), runs_dir=tmp_path).run_dir
            for s in (0, 1, 2)]
    other = api.train(api.load_config(tiny_config(optimizer__learning_rate=0.05, training__boundary=False)),
                      runs_dir=tmp_path).run_dir
    result = api.compare([*dirs, other], plot=tmp_path / "band.png", band=True)
    assert len(result.rows) == 2 and "seed" not in result.differing
    seeds_row, single = result.rows
    assert seeds_row["run"].startswith("tiny (3 seeds: 0, 1, 2)") and seeds_row["status"] == "3 completed"
    finals = [runs.read_metrics(d / runs.METRICS)[-1]["val_loss"] for d in dirs]
    assert seeds_row["final_val_loss"] == f"{np.mean(finals):.4g} ± {np.std(finals, ddof=1):.2g}"
    assert seeds_row["optimizer.learning_rate"] == 0.1 and single["optimizer.learning_rate"] == 0.05
    single_final = runs.read_metrics(other / runs.METRICS)[-1]["val_loss"]
    assert single["final_val_loss"] == f"{single_final:.4g}"  # one run: no spread (ddof = 1 is undefined), no "± 0"
    assert bands.mean_spread([2.5, None]) == (2.5, None, 1)
    assert (tmp_path / "band.png").read_bytes()[:4] == b"\x89PNG"


def test_train_seeds_k_trains_k_seeds_and_prints_the_band(tmp_path, write_config):
    path = write_config(tiny_config(seed=5, training__epochs=2, training__boundary=False))
    result = CliRunner().invoke(app, ["train", str(path), "--seeds", "2", "--runs-dir", str(tmp_path / "runs"),
                                      "--plot", str(tmp_path / "seeds.png")])
    assert result.exit_code == 0, result.output
    made = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert [name.rsplit("-", 2)[0] for name in made] == ["tiny-seed-5", "tiny-seed-6"]
    assert "2 seeds" in result.output and "2 completed" in result.output
    assert (tmp_path / "seeds.png").is_file()
    bad = CliRunner().invoke(app, ["train", str(path), "--seeds", "0"])
    assert bad.exit_code == 2 and "--seeds" in bad.output
