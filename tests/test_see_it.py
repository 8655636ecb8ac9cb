"""Issue 6: gradcheck, the perturb optimizer, objective demos, sweeps and the optimizer reference."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, tiny_config
from test_idx import FASHION
from typer.testing import CliRunner

from sgdcli import api
from sgdcli.analysis import reference
from sgdcli.cli.app import app
from sgdcli.config import schema as cfg
from sgdcli.engine import blas, layers, workers
from sgdcli.runs import checkpoint

runner = CliRunner()
SEE_IT = REPO / "configs" / "see-it"


def run_demo(tmp_path: Path, name: str, *extra: str):
    result = runner.invoke(app, ["train", str(SEE_IT / f"{name}.yaml"), "--runs-dir", str(tmp_path), *extra])
    run_dir = next(tmp_path.glob(f"{name}-*"))
    return result, run_dir, json.loads((run_dir / "summary.json").read_text())


# ---------------------------------------------------------------- gradcheck
GRADCHECK_CONFIGS = [p for p in sorted((REPO / "configs").rglob("*.yaml"))
                     if "fashion" not in p.name and "mnist" not in p.name and p.parent.name != "fashion-batch-modes"]


@pytest.mark.parametrize("path", GRADCHECK_CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_gradcheck_passes_on_every_shipped_config(path):
    result = runner.invoke(app, ["gradcheck", str(path)])
    assert result.exit_code == 0, result.output
    assert "passed" in result.stdout


@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST not installed")
def test_gradcheck_passes_on_the_fashion_config():
    checks = api.gradcheck(api.load_config(REPO / "configs" / "fashion-mlp.yaml"), samples=4, max_entries=50)
    assert all(check.passed for check in checks)
    assert any("random direction" in check.name for check in checks)  # the big tensors were sampled


def test_gradcheck_catches_a_deliberately_broken_layer(monkeypatch):
    correct = layers.Dense.backward

    def off_by_a_tenth_of_a_percent(self, dout, cache, *, need_dx=True):
        dx, grads = correct(self, dout, cache, need_dx=need_dx)
        return dx, {**grads, "weight": grads["weight"] * 1.001}

    monkeypatch.setattr(layers.Dense, "backward", off_by_a_tenth_of_a_percent)
    result = runner.invoke(app, ["gradcheck", str(REPO / "configs" / "iris.yaml")])
    assert result.exit_code == 1
    assert "FAIL" in result.stdout and "0.weight" in result.stderr


# ---------------------------------------------------------------- perturb
def test_perturb_trains_xor_and_counts_its_forward_passes(tmp_path):
    config = api.load_config(REPO / "configs" / "perturb-xor.yaml")
    result = api.train(config, runs_dir=tmp_path)
    rows = list(csv.DictReader((result.run_dir / "metrics.csv").open()))
    parameters = 2 * 8 + 8 + 8 * 2 + 2
    assert int(rows[-1]["forward_passes"]) == int(rows[-1]["updates"]) * (1 + 2 * parameters)
    assert float(rows[-1]["train_loss_full"]) < 0.6 * float(rows[0]["train_loss_full"])
    assert float(rows[-1]["val_accuracy"]) >= 0.85
    gradient = api.train(api.load_config(REPO / "configs" / "xor-gradient.yaml"), runs_dir=tmp_path)
    grad_rows = list(csv.DictReader((gradient.run_dir / "metrics.csv").open()))
    assert int(grad_rows[-1]["forward_passes"]) == int(grad_rows[-1]["updates"])  # one per gradient step
    result = runner.invoke(app, ["compare", str(result.run_dir), str(gradient.run_dir), "--x", "forward_passes",
                                 "--plot", str(tmp_path / "c.png"), "--format", "json"])
    assert result.exit_code == 0 and "optimizer.type" in json.loads(result.stdout)["differing"]


def test_perturb_tries_both_directions_and_keeps_only_improvements():
    from sgdcli.engine.search import CoordinateSearch

    # f(w) = (w0 - 1)^2 + (w1 + 1)^2 from (0, 0), delta 0.5: w0 moves up, w1 moves down;
    # a third coefficient already at its best stays.
    w = np.array([0.0, 0.0, 2.0])
    before, passes = CoordinateSearch().step({"w": w}, lambda: (w[0] - 1) ** 2 + (w[1] + 1) ** 2 + (w[2] - 2) ** 2,
                                             0.5)
    assert before == 2.0 and passes == 1 + 2 * 3
    assert w.tolist() == [0.5, -0.5, 2.0]


def test_perturb_moves_a_parameter_that_is_not_c_contiguous():
    from sgdcli.engine.search import CoordinateSearch

    # A Fortran-order (2, 2) weight: each coordinate must move in the array itself (a flat copy would not),
    # in C order as for any other array. f = sum((w - target)^2), delta 0.5, from 0.
    target = np.array([[1.0, 0.0], [-1.0, 0.4]])
    for w in (np.zeros((2, 2), order="F"), np.zeros((2, 2))):
        CoordinateSearch().step({"w": w}, lambda w=w: float(((w - target) ** 2).sum()), 0.5)
        assert w.tolist() == [[0.5, 0.0], [-0.5, 0.5]]


# ---------------------------------------------------------------- step size and momentum, reproducibly
def test_small_step_stops_in_the_local_minimum(tmp_path):
    result, _, summary = run_demo(tmp_path, "step-too-small")
    assert result.exit_code == 0
    assert summary["final_params"][0] == pytest.approx(1.3473, abs=1e-3)  # local, not global (-1.4734)


def test_momentum_carries_past_the_local_minimum_to_the_global_one(tmp_path):
    result, _, summary = run_demo(tmp_path, "momentum-escapes")
    assert result.exit_code == 0
    assert summary["final_params"][0] == pytest.approx(-1.4734, abs=1e-2)


def test_too_large_a_step_diverges(tmp_path):
    result, run_dir, summary = run_demo(tmp_path, "step-too-large")
    assert result.exit_code == 5 and summary["status"] == "diverged"
    path = [float(row["w0"]) for row in csv.DictReader((run_dir / "metrics.csv").open())]
    assert max(abs(w) for w in path) > 100  # it jumped further and further
    assert (run_dir / "path.png").read_bytes()[:4] == b"\x89PNG"


def across_valley(run_dir: Path) -> float:
    """The largest |y| (across the valley) after the first 10 steps: the zig-zag."""
    return max(abs(float(row["w1"])) for row in list(csv.DictReader((run_dir / "metrics.csv").open()))[10:])


def test_nesterov_damps_the_zigzag_that_classic_momentum_shows(tmp_path):
    _, classic, _ = run_demo(tmp_path, "valley-momentum")
    _, nesterov, summary = run_demo(tmp_path, "valley-nesterov")
    assert across_valley(nesterov) < 0.1 * across_valley(classic)
    assert summary["final_loss"] < 1e-6


def test_plain_gd_crawls_along_the_valley_while_adaptive_methods_arrive(tmp_path):
    _, _, plain = run_demo(tmp_path, "valley-gd")
    assert plain["final_params"][0] < -0.5  # still far along the flat direction after 100 steps
    for name in ("valley-adagrad", "valley-rmsprop", "valley-adam"):
        _, _, summary = run_demo(tmp_path, name)
        assert summary["final_loss"] < 0.02 < plain["final_loss"], name


def test_rosenbrock_demos_reach_the_minimum(tmp_path):
    for name in ("rosenbrock-momentum", "rosenbrock-adam"):
        _, _, summary = run_demo(tmp_path, name)
        assert np.allclose(summary["final_params"], [1.0, 1.0], atol=0.02), name


def test_objective_runs_explain_what_they_hold(tmp_path):
    _, run_dir, _ = run_demo(tmp_path, "valley-adam")
    assert not (run_dir / "checkpoints").exists()
    for args in (["eval", str(run_dir)], ["landscape", str(run_dir)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 4 and "an objective run has no model to load" in result.stderr
    result = runner.invoke(app, ["train", "--resume", str(run_dir)])
    assert result.exit_code == 4 and "train it again" in result.stderr


def test_objective_config_errors_name_the_path():
    with pytest.raises(Exception) as info:
        api.load_config({"name": "x", "objective": {"type": "valley", "start": [1.0]},
                         "optimizer": {"type": "sgd", "learning_rate": 0.1}, "training": {"steps": 3}})
    assert "objective.start" in str(info.value)


# ---------------------------------------------------------------- sweeps
def test_sweep_trains_every_combination_from_identical_initial_weights(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(training__epochs=2)))
    result = runner.invoke(app, ["train", str(path), "--runs-dir", str(tmp_path / "runs"), "--jobs", "2",
                                 "--sweep", "training.batch.mode=sgd,minibatch,full",
                                 "--sweep", "optimizer.momentum=0.5,1.5", "--plot", str(tmp_path / "c.png")])
    assert result.exit_code == 2, result.output  # the members refused for momentum 1.5 (a config error)
    runs = sorted((tmp_path / "runs").iterdir())
    assert [r.name.rsplit("-", 2)[0] for r in runs] == sorted(
        f"tiny-mode-{m}-momentum-0.5" for m in ("sgd", "minibatch", "full"))
    initial = [checkpoint.load(r / "checkpoints" / "initial.safetensors").params["0.weight"] for r in runs]
    assert all(np.array_equal(initial[0], w) for w in initial[1:])
    assert result.stdout.count("failed") == 3  # momentum 1.5 is refused for each mode, not fatal
    assert "optimizer.momentum: expected less than 1" in result.stderr
    assert "training.batch.mode" in result.stdout and (tmp_path / "c.png").is_file()
    # two members at a time share the cores between their BLAS pools (recorded, for a resume)
    share = workers.threads_each(2) or workers.user_threads()
    assert {checkpoint.load(r / "checkpoints" / "last.safetensors").meta["blas_threads"] for r in runs} == \
        {min(share, blas.thread_count() or share)}


def test_a_sweep_of_one_member_trains_it_on_every_core(tmp_path):
    """--jobs 2 with a single member: it trains alone, on the BLAS pool a plain train has."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(training__epochs=1)))
    result = runner.invoke(app, ["train", str(path), "--runs-dir", str(tmp_path / "runs"), "--jobs", "2",
                                 "--sweep", "optimizer.learning_rate=0.1", "--plot", str(tmp_path / "c.png")])
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs").iterdir()
    assert checkpoint.load(run / "checkpoints" / "last.safetensors").meta["blas_threads"] == blas.thread_count()


def test_sweep_usage_errors():
    result = runner.invoke(app, ["train", str(REPO / "configs" / "iris.yaml"), "--sweep", "optimizer.momentum"])
    assert result.exit_code == 2 and "--sweep expects KEY=V1,V2" in result.stderr


# ---------------------------------------------------------------- optimizers reference
def test_optimizers_lists_every_optimizer_with_rule_defaults_and_effective_step():
    result = runner.invoke(app, ["optimizers"])
    assert result.exit_code == 0
    types = {member.model_fields["type"].annotation.__args__[0]
             for member in cfg.OptimizerConfig.__args__[0].__args__}
    assert {entry.type for entry in reference.optimizers()} == types
    for name in types:
        assert name in result.stdout
    for fragment in ("w += m * v - lr * g", "sqrt(s) + epsilon", "alpha", "1 / (1 - m)", "beta1^t", "rho=0.9"):
        assert fragment in result.stdout, fragment
